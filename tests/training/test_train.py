"""The reference recipe's details, determinism, resume, and one short real-data run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from digitrec.core.config import make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.core.metrics import summarize
from digitrec.nets.predict import predict, predict_probs
from digitrec.nets.weights import load_run_model
from digitrec.core.files import InputError
from digitrec.nets.model import build_model, count_parameters
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve
from digitrec.core.splits import split_validation
from digitrec.training.optim import build_optimizer, build_scheduler, steps_per_epoch
from digitrec.training.checkpoint import TrainState
from digitrec.training.train import fit, train_one_epoch
from tests.conftest import synthetic_digits


def test_on_epoch_sees_every_epoch_and_changes_nothing(tmp_path):
    digits, seen = synthetic_digits(320, seed=5), []

    def score(epoch, model):  # as benchmarks/speedrun.py draws its curve: predicting in between epochs
        seen.append((epoch, predict_probs(model, digits.images[:50]).shape))

    fit(_tiny_cfg(), digits, tmp_path / "scored", quiet=True, on_epoch=score)
    fit(_tiny_cfg(), digits, tmp_path / "plain", quiet=True)
    assert seen == [(1, (50, 10)), (2, (50, 10))]
    scored, plain = _weights(tmp_path / "scored"), _weights(tmp_path / "plain")
    assert all(torch.equal(scored[k], plain[k]) for k in plain)


MALLOC_PROBE = """
import ctypes, sys, torch
from digitrec.training.runtime import RuntimeConfig, setup_process

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "prepared":
    setup_process(RuntimeConfig())
before = libc.mallinfo2()
block = torch.ones(4 << 20)  # 16 MB, like a large activation
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(during.hblks - before.hblks, after.arena - before.arena)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_setup_process_keeps_freed_memory_mapped_for_the_next_step():
    """glibc's own counters: a large block is mapped apart and unmapped on free, unless prepared."""
    def probe(mode):  # (blocks mapped apart for the tensor, heap bytes still mapped after its free)
        done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True, text=True, check=True)
        return tuple(int(v) for v in done.stdout.split())

    mapped_apart, kept = probe("default")
    assert mapped_apart == 1 and kept < 1 << 20
    mapped_apart, kept = probe("prepared")
    assert mapped_apart == 0 and kept >= 8 << 20  # most of the 16 MB; the heap had some room already


def test_rmsprop_as_keras():
    optimizer = build_optimizer(build_model(make_config()), make_config())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert (group["lr"], group["alpha"], group["eps"], group["momentum"], group["weight_decay"]) == \
        (1e-3, 0.9, 1e-8, 0, 0)


def keras_plateau_lrs(val_accs, lr=1e-3, patience=3, factor=0.5, min_lr=1e-5, min_delta=1e-4):
    """Keras ReduceLROnPlateau(monitor='val_acc', mode='max') as written in keras/callbacks.py."""
    best, wait, lrs = -np.inf, 0, []
    for acc in val_accs:
        if acc - min_delta > best:
            best, wait = acc, 0
        else:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr, wait = max(lr * factor, min_lr), 0
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("steps", [4, 10, 1, 2])
def test_a_one_cycle_of_a_few_steps_trains(steps, tmp_path):
    # one epoch of `fast` on a 600-row CSV is 4 steps: at 0.25 its warm-up ended on its first step and
    # OneCycleLR divided by zero (a traceback); 10 steps at 0.1 the same
    cfg = make_config("fast", epochs=1, onecycle_warmup=0.1 if steps == 10 else 0.25)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    rates = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(np.isfinite(rates)) and rates[-1] < cfg.lr
    if steps == 4:
        digits = synthetic_digits(128 * 4 + 40, seed=3)  # 4 batches of 128 after the calibration hold-out
        fit(make_config("fast", epochs=1, calibration_fraction=0.0), digits, tmp_path / "run", quiet=True)
        assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("trial", range(20))
def test_plateau_schedule_counts_like_keras(trial):
    rng = np.random.default_rng(trial)
    # accuracies that often stall (repeats and gains below min_delta), as in a real run
    accs = np.round(np.cumsum(rng.choice([0, 0, 0.00005, 0.0002, -0.001, 0.003], size=40)) + 0.98, 6)
    cfg = make_config()
    optimizer = build_optimizer(build_model(cfg), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=1)
    ours = []
    for acc in accs:
        scheduler.step(float(acc))
        ours.append(optimizer.param_groups[0]["lr"])
    assert ours == pytest.approx(keras_plateau_lrs(accs))


def test_plateau_halves_after_three_stalled_epochs_exactly():
    assert keras_plateau_lrs([0.9, 0.9, 0.9, 0.9]) == [1e-3, 1e-3, 1e-3, 5e-4]
    cfg = make_config()
    optimizer = build_optimizer(build_model(cfg), cfg)
    scheduler = build_scheduler(optimizer, cfg, 1)
    lrs = []
    for acc in [0.9, 0.9, 0.90005, 0.9]:  # +5e-5 is below min_delta: still a stalled epoch
        scheduler.step(acc)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [1e-3, 1e-3, 1e-3, 5e-4]


def test_validation_split_and_steps_per_epoch():
    labels = np.random.default_rng(0).integers(0, 10, 42_000)
    cfg = make_config()
    train, val = split_validation(labels, cfg)
    assert (len(train), len(val)) == (37_800, 4_200)
    assert len(np.intersect1d(train, val)) == 0 and len(np.union1d(train, val)) == 42_000
    assert steps_per_epoch(len(train), cfg) == 439  # floor(37,800 / 86)
    np.testing.assert_array_equal(val, split_validation(labels, cfg)[1])  # seed 2: same split every time
    assert not np.array_equal(val, split_validation(labels, make_config(val_seed=3))[1])
    _, strat_val = split_validation(labels, make_config(stratify=True))
    expected = np.bincount(labels, minlength=10) * 0.1
    assert np.abs(np.bincount(labels[strat_val], minlength=10) - expected).max() <= 1


def _tiny_cfg(**kw):
    return make_config(**{"epochs": 2, "batch_size": 32, **kw})


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_same_seed_same_weights(tmp_path):
    digits = synthetic_digits(320, seed=5)
    fit(_tiny_cfg(seed=7), digits, tmp_path / "a", quiet=True)
    fit(_tiny_cfg(seed=7), digits, tmp_path / "b", quiet=True)
    fit(_tiny_cfg(seed=8), digits, tmp_path / "c", quiet=True)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    history = (tmp_path / "a" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds" and len(history) == 3


def test_existing_run_is_not_overwritten(tmp_path):
    digits = synthetic_digits(100)
    fit(_tiny_cfg(epochs=1), digits, tmp_path / "run", quiet=True)
    with pytest.raises(InputError, match="already holds a run; use --resume or another --out"):
        fit(_tiny_cfg(epochs=1), digits, tmp_path / "run", quiet=True)
    with pytest.raises(InputError, match=r"config differs from the run being resumed \(lr\)"):
        fit(_tiny_cfg(epochs=1, lr=0.01), digits, tmp_path / "run", resume=True, quiet=True)


@pytest.mark.slow  # a training process killed mid-run and resumed
def test_killed_run_resumes_to_identical_weights(tmp_path):
    """Kill a real training process mid-run (SIGKILL), resume it, compare with an uninterrupted run."""
    write_kaggle_csv(tmp_path / "train.csv", synthetic_digits(1200, seed=3), with_labels=True)
    flags = ["--train", str(tmp_path / "train.csv"), "--epochs", "4", "--batch-size", "32",
             "--threads", "1", "--seed", "11", "--quiet"]
    cli = [sys.executable, "-m", "digitrec.cli", "train"]

    subprocess.run(cli + flags + ["--out", str(tmp_path / "full")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + flags + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        history = killed / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) >= 2:  # one epoch done
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"

    done = subprocess.run(cli + flags + ["--out", str(killed), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = _weights(tmp_path / "full"), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "history.csv").read_text().count("\n") == 5
    assert not list(killed.glob(".*.tmp"))  # no temp file left behind


def test_resume_refuses_other_data_and_leaves_the_run_as_it_was(tmp_path):
    digits = synthetic_digits(320, seed=5)
    fit(_tiny_cfg(), digits, tmp_path / "run", quiet=True)
    for name in ("model.safetensors", "metrics.json"):  # as if killed after its last checkpoint
        (tmp_path / "run" / name).unlink()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    other = synthetic_digits(320, seed=6)
    with pytest.raises(InputError, match=r"run: the checkpoint was trained on other data than synthetic"):
        fit(_tiny_cfg(), other, tmp_path / "run", resume=True, quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    metrics = fit(_tiny_cfg(), digits, tmp_path / "run", resume=True, quiet=True)
    assert metrics["data_sha256"] == digits.sha256 != other.sha256


@pytest.mark.slow
def test_short_real_run_clears_75_percent(tiny_run, mnist_test):
    """Seed recipe, one epoch on 2,700 MNIST images (300 held out): at least 75% on the 10,000 test."""
    model, cfg, meta = load_run_model(tiny_run)
    summary = summarize(predict(model, mnist_test, "test"))
    assert summary["accuracy"] >= 0.75
    assert meta["config"] == cfg.to_dict()
    assert {"val_accuracy", "train_seconds", "environment", "label_counts"} <= set(
        __import__("json").loads((tiny_run / "metrics.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("preset, parameters, convs", [("fast", 29_434, 3), ("best", 165_394, 5)])
def test_compact_presets_learn_quickly(small_train, mnist_test, preset, parameters, convs):
    """The preset's recipe, 3 epochs on 3,000 images (3-10 s): at least 90% on 2,000 test images."""
    cfg = make_config(preset, epochs=3)
    assert cfg.model == preset and cfg.schedule == "onecycle" and cfg.label_smoothing == 0.1
    assert cfg.val_fraction == 0  # the design is done: the preset trains on every image but its calibration hold-out
    model = build_model(cfg)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert count_parameters(model) == parameters < count_parameters(build_model(make_config())) / 5
    x, y = torch.from_numpy(small_train.images), torch.from_numpy(small_train.labels)
    rt = resolve(RuntimeConfig(device="cpu"))
    state = TrainState.start(cfg, rt, steps_per_epoch(len(x), cfg))
    for _ in range(cfg.epochs):
        stats = train_one_epoch(state.model, state, x, y, cfg, rt)
    assert stats["images"] == steps_per_epoch(len(x), cfg) * cfg.batch_size
    assert state.optimizer.param_groups[0]["lr"] < 0.01  # one-cycle ended near zero
    accuracy = summarize(predict(state.model, mnist_test.subset(np.arange(2000)), "test"))["accuracy"]
    print(f"{preset}, 3 epochs on 3,000 images: {accuracy:.4f}")
    assert accuracy >= 0.90


def test_unknown_preset_and_field_are_errors():
    with pytest.raises(ValueError, match="unknown preset 'fastest'"):
        make_config("fastest")
    with pytest.raises(ValueError, match="unknown config field"):
        make_config("seed", learning_rate=0.1)
    with pytest.raises(ValueError, match="schedule 'plateau' watches validation accuracy"):
        make_config("seed", val_fraction=0.0)
