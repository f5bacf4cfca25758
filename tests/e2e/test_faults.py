"""A user's harsh real life, injected: signals, SIGKILL at random moments, damaged checkpoints, two
processes on one run folder, a full disk or a read-only folder at every kind of write, a loss that
turns NaN. Each must end in one clear message and an intact run folder, and a resume that ends with
the weights an uninterrupted run has.
"""

from __future__ import annotations

import errno
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from digitrec.training.checkpoint import TrainState
from digitrec.core.rundir import Run
from digitrec.cli import main
from digitrec.core.config import config_from_dict, make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.core.files import InputError, Interrupted, RunLock, WriteError, atomic_write, read_json
from digitrec.training.optim import steps_per_epoch
from digitrec.training.runtime import resolve
from digitrec.core.config import RuntimeConfig
from digitrec.training.train import StopRequest, fit
from tests.conftest import synthetic_digits

pytestmark = pytest.mark.slow  # processes killed and restarted, full disks, locks: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
DIGITREC = [sys.executable, "-m", "digitrec"]
LIMIT_S = 120


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def _load_checkpoint_state(run_dir: Path) -> dict:
    """Restore the run's checkpoint into a fresh model, as --resume does; returns its state."""
    cfg = config_from_dict(read_json(run_dir / "config.json"))
    with torch.random.fork_rng(devices=[]):  # TrainState.start seeds torch's generator
        state = TrainState.start(cfg, resolve(RuntimeConfig(device="cpu")), steps_per_epoch(1000, cfg))
    return state.load(Run(run_dir))


def _history_without_seconds(run_dir: Path) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in (run_dir / "history.csv").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# real training processes, killed and interrupted (the seed net: each checkpoint is 7 MB to write)

# 400 synthetic images, 360 for training: 11 steps of 32 per epoch, 6 epochs; each checkpoint is 7 MB
SEED_FLAGS = ["--epochs", "6", "--batch-size", "32", "--threads", "1", "--seed", "11", "--quiet"]
STEPS = 11


def _train_csv(tmp_path_factory, n: int, seed: int) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    write_kaggle_csv(path, synthetic_digits(n, seed=seed), with_labels=True)
    return path


@pytest.fixture(scope="module")
def seed_csv(tmp_path_factory) -> Path:
    return _train_csv(tmp_path_factory, 400, seed=3)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, seed_csv) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    start = time.time()
    done = subprocess.run(DIGITREC + ["train", "--train", str(seed_csv), *SEED_FLAGS, "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"uninterrupted run: {time.time() - start:.1f} s")
    return out


def _start(seed_csv: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(DIGITREC + ["train", "--train", str(seed_csv), *SEED_FLAGS, "--out", str(out), *extra],
                            env=_env(), stdout=subprocess.DEVNULL, **kwargs)


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + LIMIT_S
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} within {LIMIT_S} s"
        time.sleep(0.0005)


def _kill_when(condition, proc: subprocess.Popen) -> bool:
    """SIGKILL `proc` the moment `condition()` holds; False if the run ended first."""
    deadline = time.time() + LIMIT_S
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, f"no kill point within {LIMIT_S} s"
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    return True


def _epochs_done(out: Path) -> int:
    try:
        return max(len((out / "history.csv").read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def _holds_lock(out: Path, pid: int) -> bool:
    try:
        return (out / ".lock").read_text().split()[:1] == [str(pid)]
    except (FileNotFoundError, IndexError):
        return False


def _after_lock(out: Path, pid: int, delay: float):
    """A condition: `delay` seconds after process `pid` took the run's lock (past its start-up)."""
    locked_at = []

    def condition() -> bool:
        if not locked_at and _holds_lock(out, pid):
            locked_at.append(time.time())
        return bool(locked_at) and time.time() - locked_at[0] >= delay

    return condition


def _writing(out: Path, prefix: str, nth: int):
    """A condition: the `nth` temp file of `prefix` seen in `out` (a write under way)."""
    seen: set = set()

    def condition() -> bool:
        seen.update(p.name for p in out.glob(f"{prefix}*.tmp"))
        return len(seen) >= nth

    return condition


def _check_finished_like(out: Path, uninterrupted: Path) -> None:
    assert _same_weights(out, uninterrupted)
    assert _history_without_seconds(out) == _history_without_seconds(uninterrupted)
    assert _temps(out) == [] and not (out / ".lock").exists()  # the dead runs' temp files are cleared


def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path, seed_csv, uninterrupted):
    """One run SIGKILLed 12 times and resumed after each: at seeded random moments after the process
    took the lock (loading, any step, validation, any write), and the moment the 1st or 2nd checkpoint
    temp file, or the weights' temp file, of a process appears (in the middle of writing it).
    After every kill the folder holds a loadable checkpoint (once one was written); every resume
    that reaches the end has the uninterrupted run's weights and history (should the run end before
    all kills are spent, the next kills start it again)."""
    rng = random.Random(18)
    points = [("moment", rng.uniform(0.0, 3.0)) for _ in range(8)]
    points += [("write", (".checkpoint.safetensors.", 1)), ("write", (".checkpoint.safetensors.", 2)),
               ("write", (".checkpoint.safetensors.", 2)), ("write", (".model.safetensors.", 1))]
    rng.shuffle(points)
    out = tmp_path / "killed"
    log, finished = [], 0
    for kind, where in points:
        while True:
            proc = _start(seed_csv, out, *(["--resume"] if (out / "config.json").exists() else []),
                          stderr=subprocess.DEVNULL)
            condition = _after_lock(out, proc.pid, where) if kind == "moment" else _writing(out, *where)
            if _kill_when(condition, proc):
                break
            assert proc.returncode == 0  # the run ended before this kill: check it, start another
            _check_finished_like(out, uninterrupted)
            finished += 1
            shutil.rmtree(out)
        log.append((kind, where, _epochs_done(out), _temps(out)))
        if (out / "checkpoint.safetensors").exists():
            _load_checkpoint_state(out)  # loadable: the last complete checkpoint
    print(f"kills (kind, where, epochs done, temp files left), {finished} runs ended between them:", *log, sep="\n")
    assert sum(bool(temps) for *_, temps in log) >= 3  # killed in the middle of writes, not only between
    done = subprocess.run(DIGITREC + ["train", "--train", str(seed_csv), *SEED_FLAGS, "--out", str(out), "--resume"],
                          env=_env(), capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_like(out, uninterrupted)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_mid_epoch_prints_the_resume_command_and_resume_is_bit_identical(
        tmp_path, seed_csv, uninterrupted, capsys, signum, status):
    out = tmp_path / "run"
    proc = _start(seed_csv, out, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epochs_done(out) >= 1, proc, "epoch 1")
    # a second process on the same folder refuses at once, naming the holder
    assert main(["train", "--train", str(seed_csv), *SEED_FLAGS, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"error: {re.escape(str(out))}: in use by another digitrec process \(pid {proc.pid} on "
                        r"\S+\); wait for it to end, or use another --out", err), err
    time.sleep(0.3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == status, stderr
    lines = stderr.strip().splitlines()
    # a signal during an epoch's last step stops after its validation instead (1 in 11)
    assert re.fullmatch(rf"interrupted: stopped (at epoch \d, step \d+ of {STEPS}|after epoch \d); checkpoint written "
                        r"to .*", lines[-2]), lines
    command = lines[-1].removeprefix("interrupted: resume with: ")
    assert command == shlex.join(["digitrec", "train", "--out", str(out), "--resume", "--train", str(seed_csv)])
    state = _load_checkpoint_state(out)
    if "step" in lines[-2]:
        assert 0 < state["epoch_step"] < STEPS  # a mid-epoch checkpoint
    else:
        assert "epoch_step" not in state
    done = subprocess.run(DIGITREC + shlex.split(command)[1:] + SEED_FLAGS, env=_env(), capture_output=True,
                          text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _same_weights(out, uninterrupted)
    assert _history_without_seconds(out) == _history_without_seconds(uninterrupted)


def test_a_second_ctrl_c_quits_at_once_and_leaves_the_last_checkpoint(tmp_path, seed_csv):
    """Steps of 180 images (about half a second each): the second SIGINT comes long before the step ends."""
    out = tmp_path / "run"
    flags = ["--train", str(seed_csv), "--epochs", "3", "--batch-size", "180", "--threads", "1", "--quiet"]
    proc = subprocess.Popen(DIGITREC + ["train", *flags, "--out", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epochs_done(out) >= 1, proc, "epoch 1")
    proc.send_signal(signal.SIGINT)
    for line in proc.stderr:
        if line == "SIGINT: stopping after this step to write a checkpoint; again to quit at once\n":
            break
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGINT  # killed by the signal, no checkpoint waited for
    state = _load_checkpoint_state(out)
    assert len(state["history"]) >= 1 and "epoch_step" not in state  # the last complete one, intact
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# in-process runs of a narrow fast net: 320 synthetic images, 10 steps of 32 per epoch

# every image trains (no calibration hold-out), so the steps per epoch below are the file's rows / 32
TINY = dict(preset="fast", width=8, epochs=2, batch_size=32, calibration_fraction=0.0)
TINY_FLAGS = ["--preset", "fast", "--width", "8", "--epochs", "2", "--batch-size", "32", "--calibration-fraction", "0",
              "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory) -> Path:
    return _train_csv(tmp_path_factory, 320, seed=4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_csv) -> Path:
    out = tmp_path_factory.mktemp("tiny_runs") / "whole"
    assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(out)]) == 0
    return out


def _tiny_copy(tiny_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


@pytest.fixture(scope="module", autouse=True)
def _threads_kept():
    """main() sets up the process as an entry point does (torch's threads): put them back after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class _StopAfterReads(StopRequest):
    """A stop request that arrives after the loop has looked `reads` times (once a step, but the
    epoch's last, and once after each epoch): a signal at an exact step boundary."""

    def __init__(self, reads: int):
        self.reads = reads

    @property
    def signum(self) -> int:
        self.reads -= 1
        return signal.SIGTERM if self.reads < 0 else 0


@pytest.mark.parametrize("reads, where, step", [(13, "at epoch 2, step 4 of 10", 4), (9, "after epoch 1", None)])
def test_a_stop_checkpoints_that_step_and_resume_ends_bit_identical(tmp_path, reads, where, step):
    digits, cfg = synthetic_digits(320, seed=4), make_config(**TINY)
    fit(cfg, digits, tmp_path / "whole", quiet=True)
    run = tmp_path / "stopped"
    with pytest.raises(Interrupted, match=rf"^stopped {where}; checkpoint written to {re.escape(str(run))}/checkpoint"
                                          r"\.safetensors$") as stopped:
        fit(cfg, digits, run, quiet=True, stop=_StopAfterReads(reads))
    assert stopped.value.signum == signal.SIGTERM
    assert _load_checkpoint_state(run).get("epoch_step") == step
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()
    fit(cfg, digits, run, resume=True, quiet=True)
    assert _same_weights(run, tmp_path / "whole")
    assert _history_without_seconds(run) == _history_without_seconds(tmp_path / "whole")


# -- damaged checkpoints ---------------------------------------------------------------------

def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _garbled(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[8:200] = bytes(random.Random(0).randrange(256) for _ in range(192))
    path.write_bytes(bytes(blob))


def _foreign(path: Path) -> None:  # another project's safetensors file
    save_file({"embeddings.weight": torch.zeros(4, 3)}, str(path), metadata={"format": "pt"})


def _weights_file(path: Path) -> None:  # a digitrec file of another format: weights, no training state
    shutil.copy(path.parent / "model.bak", path)


def _other_models_checkpoint(path: Path) -> None:
    digits = synthetic_digits(320, seed=4)
    other = path.parent.parent / "other"
    fit(make_config(**(TINY | {"width": 16, "epochs": 1})), digits, other, quiet=True)
    shutil.copy(other / "checkpoint.safetensors", path)


@pytest.mark.parametrize("damage, reason", [
    (_truncated, r"not a readable safetensors file \(.*\)"),
    (_garbled, r"not a readable safetensors file \(.*\)"),
    (_foreign, r"not a digitrec checkpoint \(no 'state' in it\)"),
    (_weights_file, r"not a digitrec checkpoint \(no 'state' in it\)"),
    (_other_models_checkpoint, r"its weights do not fit this run's model \(\d+ tensors missing, unexpected or of "
                               r"another shape, first: '.*'\)"),
])
@pytest.mark.parametrize("digests", [False, True], ids=["no manifest", "manifest"])
def test_a_bad_checkpoint_is_one_error_line_and_nothing_is_written(tmp_path, tiny_run, tiny_csv, capsys, damage,
                                                                   reason, digests):
    """In a folder written before the manifest, the reader's own checks name the damage (after one note
    that the files are unchecked); with the manifest, the digest refuses the file first."""
    run = _tiny_copy(tiny_run, tmp_path)
    (run / "model.safetensors").rename(run / "model.bak")  # a run killed after its last checkpoint
    if not digests:
        (run / "manifest.json").unlink()
    else:
        reason = r"does not match its SHA-256 digest in manifest\.json \(.*\); refusing to use it"
    damage(run / "checkpoint.safetensors")
    before = _files(run)
    assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    note = "" if digests else r"note: .* they are read unchecked\n"
    assert re.fullmatch(rf"{note}error: {re.escape(str(run / 'checkpoint.safetensors'))}: {reason}\n", err), err
    assert _files(run) == before


# -- two processes on one folder -------------------------------------------------------------

HOLDER = """
import sys, time
from digitrec.core.files import RunLock

RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_the_lock_refuses_a_second_process_and_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(InputError, match=rf"run: in use by another digitrec process \(pid {holder.pid} on "):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()  # left by the killed holder, but no longer locked
    (run / ".checkpoint.safetensors.abc.tmp").write_bytes(b"half")  # and its half-written file
    with RunLock(run):
        assert (run / ".lock").read_text().split()[0] == str(os.getpid())
        assert _temps(run) == []
    assert not (run / ".lock").exists()


def test_train_and_ensemble_refuse_a_folder_in_use(tmp_path, tiny_csv, capsys):
    for extra in ([], ["--ensemble", "2"]):
        run = tmp_path / f"run{len(extra)}"
        with RunLock(run):
            assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {run}: in use by another digitrec process (pid {os.getpid()} on "), err
        assert [p.name for p in run.iterdir()] == []


# -- a full disk or a read-only folder at every kind of write --------------------------------

def _fail_write(monkeypatch, name: str, nth: int = 1, code: int = errno.ENOSPC) -> None:
    """The `nth` write of a file called `name` fails as on a full disk (at its fsync: the data were
    written to the temp file, which must go)."""
    real_fsync, seen = os.fsync, [0]

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            seen[0] += 1
            if seen[0] == nth:
                raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _one_error_line(err: str, path: Path, reason: str = r"No space left on device \[ENOSPC\]") -> None:
    assert re.fullmatch(rf"error: {re.escape(str(path))}: could not be written \({reason}\); any earlier "
                        r"version of it is unchanged\n", err), err


@pytest.mark.parametrize("name, nth", [("history.csv", 3), ("checkpoint.safetensors", 2), ("model.safetensors", 1),
                                       ("config.json", 1), ("metrics.json", 1)])
def test_a_full_disk_while_training_stops_cleanly_and_the_run_resumes(tmp_path, tiny_csv, tiny_run, capsys,
                                                                       monkeypatch, name, nth):
    run = tmp_path / "run"
    _fail_write(monkeypatch, name, nth)
    assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run)]) == 2
    _one_error_line(capsys.readouterr().err, run / name)
    assert _temps(run) == [] and not (run / ".lock").exists()
    assert not (run / "model.safetensors").exists() or name == "metrics.json"
    if name == "checkpoint.safetensors":  # the previous one, intact: epoch 1's
        assert len(_load_checkpoint_state(run)["history"]) == 1
    monkeypatch.undo()
    resume = ["--resume"] if name != "config.json" else []  # nothing was written: start again
    assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run), *resume]) == 0
    assert (run / "history.csv").read_text().count("\n") == 3
    assert _same_weights(run, tiny_run)


@pytest.mark.parametrize("name, args", [
    ("predictions_test.npz", lambda run, csv, out: ["evaluate", str(run), "--test", str(csv), "--answers",
                                                    str(csv.parent / "answers.csv")]),
    ("submission.csv", lambda run, csv, out: ["submit", str(run), str(csv), "-o", str(out / "submission.csv")]),
    ("report.html", lambda run, csv, out: ["report", str(run)]),
    ("model.onnx", lambda run, csv, out: ["export", str(run), "-o", str(out / "model.onnx"), "--check-images", "10"]),
])
def test_a_full_disk_after_training_is_one_error_line_and_keeps_the_earlier_file(tmp_path, tiny_run, capsys,
                                                                                 monkeypatch, name, args):
    run = _tiny_copy(tiny_run, tmp_path)
    test = synthetic_digits(50, seed=9, labels=False)
    csv = tmp_path / "test.csv"
    write_kaggle_csv(csv, test, with_labels=False)
    (tmp_path / "answers.csv").write_text("ImageId,Label\n" + "".join(f"{i + 1},{i % 10}\n" for i in range(50)))
    out = tmp_path / "out"
    out.mkdir()
    target = (run if name in ("predictions_test.npz", "report.html") else out) / name
    target.write_bytes(b"the earlier version")
    _fail_write(monkeypatch, name)
    assert main(args(run, csv, out)) == 2
    _one_error_line(capsys.readouterr().err, target)
    assert target.read_bytes() == b"the earlier version"
    assert _temps(target.parent) == []


def test_a_read_only_folder_is_one_error_line(tmp_path, tiny_csv, capsys, monkeypatch):
    """Tests run as root, where chmod stops no write: the refusal is injected where the OS gives it,
    at the temp file's creation, as EROFS."""
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix") == ".checkpoint.safetensors.":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    run = tmp_path / "run"
    assert main(["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run)]) == 2
    _one_error_line(capsys.readouterr().err, run / "checkpoint.safetensors", r"Read-only file system \[EROFS\]")
    assert _temps(run) == []


def test_a_file_size_limit_from_the_os_is_one_error_line(tmp_path, tiny_csv):
    """A real refusal by the kernel, no injection: RLIMIT_FSIZE at 16 KiB, below a checkpoint's size."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    run = tmp_path / "run"
    done = subprocess.run(DIGITREC + ["train", "--train", str(tiny_csv), *TINY_FLAGS, "--out", str(run)],
                          env=_env(), capture_output=True, text=True, timeout=LIMIT_S, preexec_fn=limit)
    assert done.returncode == 2
    _one_error_line(done.stderr, run / "checkpoint.safetensors", r"File too large \[EFBIG\]")
    assert _temps(run) == [] and sorted(p.name for p in run.iterdir()) == ["config.json", "history.csv",
                                                                           "manifest.json"]
    assert Run(run).verify() == []  # the checkpoint that was never written is not listed


def test_atomic_write_keeps_the_old_file_on_any_os_error(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")
    _fail_write(monkeypatch, "a.txt")
    with pytest.raises(WriteError, match=r"a.txt: could not be written \(No space left on device \[ENOSPC\]\)"):
        with atomic_write(path) as f:
            f.write("new" * 1000)
    assert path.read_text() == "old" and _temps(tmp_path) == []
    with pytest.raises(ZeroDivisionError):  # other errors pass through unchanged, the temp file removed
        with atomic_write(path) as f:
            f.write("new")
            1 / 0
    assert path.read_text() == "old" and _temps(tmp_path) == []


# -- a loss that is not finite ---------------------------------------------------------------

class _NanLossAt:
    """torch.nn.functional, but the `n`th training loss (mean reduction) is NaN."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, logits, y, **kwargs):
        loss = torch.nn.functional.cross_entropy(logits, y, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":
            self.calls += 1
            if self.calls == self.n:
                loss = loss * float("nan")
        return loss


def test_a_nan_loss_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import digitrec.training.distill

    # the training loss is distill.distillation_loss's (plain cross-entropy when nothing is distilled)
    monkeypatch.setattr(digitrec.training.distill, "F", _NanLossAt(15))  # epoch 2, step 5 of 10
    run = tmp_path / "run"
    message = (rf"^{re.escape(str(run))}: the training loss became nan at epoch 2, step 5 of 10; stopped, the "
               r"checkpoint of epoch 1 is kept \(a lower --lr often helps\)$")
    with pytest.raises(InputError, match=message):
        fit(make_config(**TINY), synthetic_digits(320, seed=4), run, quiet=True)
    state = _load_checkpoint_state(run)
    assert len(state["history"]) == 1 and np.isfinite(state["history"][0]["train_loss"])
    assert len((run / "history.csv").read_text().splitlines()) == 2
    assert not (run / "model.safetensors").exists() and not (run / ".lock").exists()


# -- under torchrun: every rank stops at the same step ---------------------------------------

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "digitrec"]
# a narrow fast net on 3,008 images, 3 epochs of 94 steps of 32 (split 16 + 16 between the ranks)
DDP_FLAGS = ["--preset", "fast", "--width", "8", "--epochs", "3", "--batch-size", "32", "--calibration-fraction", "0",
             "--quiet"]


def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_resume_is_bit_identical(tmp_path):
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, synthetic_digits(3008, seed=5), with_labels=True)
    flags = ["train", "--train", str(csv), *DDP_FLAGS]
    whole = subprocess.run(TORCHRUN + flags + ["--out", str(tmp_path / "whole")], env=_env(), capture_output=True,
                           text=True, timeout=LIMIT_S)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "stopped"
    proc = subprocess.Popen(TORCHRUN + flags + ["--out", str(out)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epochs_done(out) >= 1, proc, "epoch 1")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # to the launcher only: it forwards the signal to its workers
    _, stderr = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode != 0
    assert re.search(r"^interrupted: stopped (at epoch \d, step \d+ of 94|after epoch \d); checkpoint written", stderr,
                     re.MULTILINE), stderr[-3000:]
    assert f"interrupted: resume with: torchrun --nproc-per-node=2 ... -m digitrec train --out {out} --resume" in stderr
    assert stderr.count("interrupted: stopped") == 1  # rank 0 speaks for the group
    state = _load_checkpoint_state(out)
    print(f"stopped at epoch {len(state['history']) + 1}, step {state.get('epoch_step')}")
    if "epoch_step" in state:  # both ranks' dropout streams were saved to continue them
        assert {"rng.rank0.cpu", "rng.rank1.cpu"} <= set(state)
    resumed = subprocess.run(TORCHRUN + flags + ["--out", str(out), "--resume"], env=_env(), capture_output=True,
                             text=True, timeout=LIMIT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _same_weights(out, tmp_path / "whole")


def test_a_read_only_run_folder_is_refused_at_the_lock(tmp_path, monkeypatch):
    """The first write of a run is its lock file: a read-only folder is refused there, naming it."""
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if Path(path).name == ".lock":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    (tmp_path / "run").mkdir()
    with pytest.raises(WriteError, match=rf"^{re.escape(str(tmp_path / 'run'))}: cannot be written \(Read-only file "
                                         r"system \[EROFS\]\); its files are unchanged$"):
        fit(make_config(**TINY), synthetic_digits(320, seed=4), tmp_path / "run", quiet=True)
    assert list((tmp_path / "run").iterdir()) == []


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                kids.append(int(stat.parent.name))
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
    return kids


def test_sigterm_to_one_worker_of_nproc_stops_the_group_and_its_resume_command_works(tmp_path):
    """`--nproc 2`: a signal to one worker reaches the other through the per-step all-reduce; the
    launcher exits 143 too, and the printed command (with --nproc 2) finishes the run."""
    csv = tmp_path / "train.csv"
    write_kaggle_csv(csv, synthetic_digits(3008, seed=5), with_labels=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(DIGITREC + ["train", "--train", str(csv), *DDP_FLAGS, "--out", str(out), "--nproc", "2"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _epochs_done(out) >= 1, proc, "epoch 1")
    os.kill(max(_children(proc.pid)), signal.SIGTERM)
    _, stderr = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 143, stderr[-3000:]
    command = next(line for line in stderr.splitlines() if line.startswith("interrupted: resume with: "))
    assert command.endswith(f"--out {out} --resume --train {csv} --nproc 2")
    done = subprocess.run(DIGITREC + shlex.split(command.removeprefix("interrupted: resume with: "))[1:] + DDP_FLAGS,
                          env=_env(), capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _epochs_done(out) == 3 and (out / "model.safetensors").exists()
