"""The run folder: the one module that knows a run's files.

A run lives in one folder, `runs/<name>/`. This module alone names its files, writes them
(atomically), reads them, decides whether a folder holds a run and which accuracy it shows, and
keeps `manifest.json`: the SHA-256 digest of every file it writes. Every read checks the file
against its digest, so a weights file whose bytes changed after digitrec wrote it (bit rot, a bad
copy, a hand edit) is refused with one `error:` line instead of scoring another model. Files of
runs written before the manifest existed still load; that is said once per folder.

While a file is being replaced, the manifest lists its old and its new digest, so a process killed
at any point leaves every file matching one of the digests listed for it.

    run = Run("runs/fast")
    run.metrics()["val_accuracy"], run.headline()
    run.verify()          # [] when every file matches its digest
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Iterator

from .files import InputError, RunLock, atomic_write
from .metrics import Predictions

try:
    import fcntl
except ImportError:  # not a POSIX system: manifest updates are not serialised there
    fcntl = None

CONFIG = "config.json"  # the recipe (TrainConfig), written first: a folder with it holds a run
METRICS = "metrics.json"  # what the finished run measured: written last
HISTORY = "history.csv"  # one row per finished epoch
WEIGHTS = "model.safetensors"  # the model, rebuildable from this file alone (nets/weights.py)
CHECKPOINT = "checkpoint.safetensors"  # everything to resume exactly (training/checkpoint.py)
SUBMISSION = "submission.csv"
REPORT = "report.html"
MANIFEST = "manifest.json"
FIGURES = "figures"  # the report's figures as PNGs
MEMBER_PREFIX = "member-"  # an ensemble's members: member-0/, member-1/, ... each a run folder
HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
# What digitrec writes in a run folder: the only files `remove_own_files` deletes.
OWN_FILES = (CONFIG, METRICS, HISTORY, WEIGHTS, CHECKPOINT, SUBMISSION, REPORT, MANIFEST)
OWN_PATTERNS = ("predictions_*.npz", "evaluation_*.json", f"{FIGURES}/*.png")
MANIFEST_FORMAT = "digitrec-manifest/1"

_unchecked_said: set[Path] = set()  # folders whose pre-manifest files were announced once


def predictions_file(name: str) -> str:
    """The predictions record of data set `name` ("val", "test", "calibration", ...)."""
    return f"predictions_{name}.npz"


def evaluation_file(name: str) -> str:
    """The scores of `predictions_<name>.npz` (metrics.summarize)."""
    return f"evaluation_{name}.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_run(prefix: str, root: str | os.PathLike = "runs") -> "Run":
    """A fresh, empty folder `root/<prefix>-<date>-<time>-<6 hex digits>`, created now, so
    re-running a notebook cell never collides with the previous run."""
    while True:
        path = Path(root) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            path.mkdir(parents=True)
            return Run(path)
        except FileExistsError:
            continue


class Run:
    """One run folder. Paths are relative to it; nothing is read until asked.

    >>> run = Run("runs/fast")  # doctest: +SKIP
    >>> run.headline(), run.verify()  # doctest: +SKIP
    ({'accuracy': 0.9952, 'on': 'test', 'n': 10000}, [])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # -- what the folder holds

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def holds_run(self) -> bool:
        """A run was started here (its config, weights or checkpoint exists)."""
        return any((self.path / name).exists() for name in (CONFIG, WEIGHTS, CHECKPOINT))

    def is_finished(self) -> bool:
        """Training ended: the weights and metrics.json exist (the weights are written just before)."""
        return self.has(WEIGHTS) and self.has(METRICS)

    def require(self, name: str = WEIGHTS) -> None:
        """InputError unless the folder exists and holds `name` (the weights: a finished run)."""
        if not self.path.is_dir():
            raise InputError(f"{self.path}: no such run directory")
        if not self.has(name):
            hint = " (is the run finished?)" if name in (WEIGHTS, METRICS) else ""
            raise InputError(f"{self.path}: no {name}{hint}" if name != CONFIG
                             else f"{self.path}: not a digitrec run (no {CONFIG})")

    def members(self) -> list["Run"]:
        """An ensemble's member folders, in order."""
        return [Run(p) for p in sorted(self.path.glob(f"{MEMBER_PREFIX}*")) if p.is_dir()]

    def lock(self) -> RunLock:
        """The folder's one-writer lock (files.RunLock), not yet taken."""
        return RunLock(self.path)

    # -- the manifest

    def _manifest(self) -> dict[str, str | list[str]]:
        path = self.path / MANIFEST
        if not path.is_file():
            return {}
        try:
            manifest = json.loads(path.read_bytes())
            files = manifest["files"]
            if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError("unknown format")
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a digitrec manifest ({e}); the folder's files cannot be checked") from None
        return files

    def _write_manifest(self, files: dict) -> None:
        with atomic_write(self.path / MANIFEST) as f:
            json.dump({"format": MANIFEST_FORMAT, "algorithm": "sha256", "files": dict(sorted(files.items()))},
                      f, indent=2)
            f.write("\n")

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Manifest updates one at a time (an evaluation and a report may write at once): an flock on
        the folder itself, so no extra file is left in it."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def digests(self) -> dict[str, list[str]]:
        """name -> the digests its file may have (two while it is being replaced)."""
        return {name: [value] if isinstance(value, str) else list(value) for name, value in self._manifest().items()}

    # -- writes

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write `name` atomically and record its digest. Returns its path."""
        digest = sha256(data)
        with self._manifest_lock():
            files = self._manifest()
            old = files.get(name)
            files[name] = sorted({digest, *([old] if isinstance(old, str) else old or [])})
            self._write_manifest(files)  # both digests while the file changes
            with atomic_write(self.path / name, "wb") as f:
                f.write(data)
            files[name] = digest
            self._write_manifest(files)
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        return self.write_bytes(name, (json.dumps(obj, indent=2) + "\n").encode())

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_history(self, history: list[dict]) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        return self.write_text(HISTORY, buffer.getvalue())

    def write_predictions(self, preds: Predictions) -> Path:
        """A metrics.Predictions record as predictions_<its name>.npz."""
        return self.write_bytes(predictions_file(preds.name), preds.to_bytes())

    # -- reads, each checked against the manifest

    def read_bytes(self, name: str) -> bytes:
        """The bytes of `name`, checked against its digest. InputError if missing or changed."""
        path = self.path / name
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        data = path.read_bytes()
        allowed = self.digests().get(name)
        if allowed is None:
            self._say_unchecked(name)
        elif sha256(data) not in allowed:
            raise InputError(f"{path}: does not match its SHA-256 digest in {MANIFEST} (changed after digitrec "
                             "wrote it: a damaged copy, bit rot or an edit); refusing to use it")
        return data

    def _say_unchecked(self, name: str) -> None:
        folder = self.path.resolve()
        if folder not in _unchecked_said:
            _unchecked_said.add(folder)
            print(f"note: {self.path}: {name} and other files have no digest in {MANIFEST} "
                  "(written before digitrec kept one); they are read unchecked", file=sys.stderr)

    def read_json(self, name: str):
        path = self.path / name
        try:
            return json.loads(self.read_bytes(name))
        except ValueError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None

    def config(self) -> dict:
        """config.json's fields (InputError if the folder holds no run)."""
        self.require(CONFIG)
        return self.read_json(CONFIG)

    def metrics(self) -> dict:
        """metrics.json's content, {} while the run is not finished."""
        return self.read_json(METRICS) if self.has(METRICS) else {}

    def history(self) -> list[dict]:
        """history.csv as per-epoch dicts of floats (NaN where a cell is empty); [] if missing."""
        if not self.has(HISTORY):
            return []
        rows = list(csv.DictReader(io.StringIO(self.read_bytes(HISTORY).decode(errors="replace"))))
        try:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in rows]
        except ValueError as e:
            raise InputError(f"{self.path / HISTORY}: not a history file ({e})") from None

    def predictions(self, name: str) -> Predictions | None:
        """The predictions record `name`, or None if the run has none."""
        file = predictions_file(name)
        return Predictions.from_bytes(self.read_bytes(file), self.path / file) if self.has(file) else None

    def scored_set(self) -> str | None:
        """Which record the run's scored sections describe: "test" once it was evaluated on the test
        set, else "val" (the validation hold-out), else None."""
        return next((name for name in ("test", "val") if self.has(predictions_file(name))), None)

    def headline(self) -> dict:
        """The accuracy the run shows (report, web page, ONNX metadata): on the test set once it was
        evaluated there (evaluation_test.json), else on the validation hold-out, else none."""
        if self.has(evaluation_file("test")):
            evaluation = self.read_json(evaluation_file("test"))
            return {"accuracy": evaluation["accuracy"], "on": "test", "n": evaluation.get("n")}
        metrics = self.metrics()
        if metrics.get("val_accuracy") is not None:
            return {"accuracy": metrics["val_accuracy"], "on": "validation", "n": metrics.get("n_val")}
        return {"accuracy": None, "on": None, "n": None}

    # -- checks and clean-up

    def verify(self) -> list[str]:
        """Every file the manifest lists, checked: one line per problem ([] when all match), for
        `digitrec verify`. Members of an ensemble are checked too."""
        problems = []
        if not self.path.is_dir():
            return [f"{self.path}: no such run directory"]
        if not self.has(MANIFEST):
            problems.append(f"{self.path}: no {MANIFEST} (written before digitrec kept digests): nothing to check")
        else:
            try:
                digests = self.digests()
            except InputError as e:
                return [str(e)]
            for name, allowed in digests.items():
                path = self.path / name
                if not path.is_file():
                    problems.append(f"{path}: listed in {MANIFEST} but missing")
                elif sha256(path.read_bytes()) not in allowed:
                    problems.append(f"{path}: does not match its SHA-256 digest in {MANIFEST}")
        for member in self.members():
            problems += member.verify()
        return problems

    def remove_own_files(self) -> None:
        """Delete digitrec's own files from the folder (and its members'); keep everything else."""
        for member in self.members():
            member.remove_own_files()
            if not any(member.path.iterdir()):
                member.path.rmdir()
        paths = [self.path / name for name in OWN_FILES] + [p for pattern in OWN_PATTERNS for p in self.path.glob(pattern)]
        for path in paths:
            if path.is_file():
                path.unlink()
        figures = self.path / FIGURES
        if figures.is_dir() and not any(figures.iterdir()):
            figures.rmdir()
