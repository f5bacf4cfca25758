"""Small file helpers every layer shares: the user-facing error types, atomic writes, JSON, the run lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked there
    fcntl = None


class InputError(Exception):
    """A problem with what the user gave us. The CLI prints it as one `error:` line, exit 2."""


class WriteError(InputError):
    """A file could not be written (a full disk, a read-only folder): one `error:` line naming it, exit 2."""


class Interrupted(Exception):
    """A run stopped on a signal (SIGINT, SIGTERM) at a step boundary, its checkpoint written.
    The CLI prints how to resume and exits 128 + the signal's number (130, 143)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


TEMP_SUFFIX = ".tmp"  # atomic_write's temp files: .<name>.<random>.tmp beside the file
LOCK_FILE = ".lock"


def first_line(e: BaseException) -> str:
    """An exception's message, first line only (its type's name when the message is empty), for an
    `error:` line that stays one line."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def _reason(e: OSError) -> str:
    code = f" [{errno.errorcode[e.errno]}]" if e.errno in errno.errorcode else ""
    return f"{e.strerror or e}{code}"


def _cannot_write(path: Path, e: OSError) -> str:
    return f"{path}: could not be written ({_reason(e)}); any earlier version of it is unchanged"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A reader never sees a half-written file and a crash leaves the old file (or none) in place.
    Any OSError on the way (a full disk, a read-only folder, a file size limit) becomes a WriteError
    naming `path`, the temp file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise WriteError(_cannot_write(path, e)) from e
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(e, OSError):
            raise WriteError(_cannot_write(path, e)) from e
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files atomic_write left in `folder` when its process was killed mid-write.
    Only for the holder of the folder's RunLock: nobody else writes there."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


class RunLock:
    """One writer per run folder: an exclusive `fcntl.flock` on FOLDER/.lock, which holds the holder's
    pid and host. The OS releases the lock when its process ends, however it ends, so a killed run
    leaves no lock behind: the next process takes it (and clears the dead one's temp files).
    A second process gets InputError naming the folder and the holder, at once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None or self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                    os.close(fd)
                    who = f" (pid {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
                    raise InputError(f"{self.folder}: in use by another digitrec process{who}; "
                                     "wait for it to end, or use another --out") from None
                try:  # the last holder removes the file as it leaves: lock the file that is there now
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as e:  # a read-only folder, most often
            raise WriteError(f"{self.folder}: cannot be written ({_reason(e)}); its files are unchanged") from e
        self._fd = fd
        remove_stale_temps(self.folder)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before unlocking, so a process that opened it sees it gone and retries
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
