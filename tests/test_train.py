"""The reference recipe's details, determinism, resume, and one short real-data run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from digitrec.nets.augment import affine_matrices, elastic_displacement, random_affine, sample_affine_params
from digitrec.core.config import make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.core.metrics import summarize
from digitrec.nets.augment import TTA_VIEWS
from digitrec.nets.predict import predict, predict_probs, tta_probs
from digitrec.nets.weights import load_run_model
from digitrec.core.files import InputError
from digitrec.nets.model import ByteMaskDropout, Deskew, ReferenceNet as SeedNet, TTA, build_model, count_parameters
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve
from digitrec.core.splits import split_validation
from digitrec.training.optim import Schedule, build_optimizer, build_scheduler, steps_per_epoch
from digitrec.training.train import fit, train_one_epoch
from tests.conftest import synthetic_digits


def test_seed_net_has_887530_parameters_and_keras_shapes():
    model = build_model(make_config())
    assert isinstance(model, SeedNet) and count_parameters(model) == 887_530
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (32, (5, 5), (2, 2)), (32, (5, 5), (2, 2)), (64, (3, 3), (1, 1)), (64, (3, 3), (1, 1))]
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.25, 0.25, 0.5]
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_seed_net_matches_the_keras_layer_order():
    """Pooling before the second ReLU of each stage changes neither outputs nor gradients."""
    torch.manual_seed(0)
    model = build_model(make_config()).eval()
    f, c = model.features, model.classifier
    relu, pool = torch.relu, torch.nn.functional.max_pool2d

    def keras_order(x):
        x = pool(relu(f[2](relu(f[0](x)))), 2)
        x = pool(relu(f[8](relu(f[6](x)))), 2)
        return c[4](relu(c[1](x.flatten(1))))

    def logits_and_grads(forward):
        model.zero_grad()
        logits = forward(x)
        logits.square().sum().backward()
        return logits, [p.grad.clone() for p in model.parameters()]

    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(logits_and_grads(model), logits_and_grads(keras_order))


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_byte_mask_dropout_keeps_1_minus_p_scaled_and_masks_the_gradient(p):
    torch.manual_seed(0)
    dropout = ByteMaskDropout(p)
    x = torch.rand(64, 32, 14, 14).add_(0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(1)
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.005)  # 400k draws: std 0.0008
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # each byte of a 32-bit draw is used: the kept fraction holds on every 4th value too
    for offset in range(4):
        assert kept.permute(0, 2, 3, 1).flatten()[offset::4].float().mean().item() == pytest.approx(1 - p, abs=0.01)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), y)  # torch's default generator: manual_seed repeats the mask
    assert torch.equal(dropout.eval()(x), x)


def test_byte_mask_dropout_falls_back_for_rates_bytes_cannot_express():
    torch.manual_seed(0)
    x = torch.ones(10_000)
    y = ByteMaskDropout(0.3)(x)
    torch.manual_seed(0)
    assert torch.equal(y, torch.nn.functional.dropout(x, 0.3))
    assert torch.equal(ByteMaskDropout(1.0)(x), torch.zeros_like(x))


def slanted_bar(slant: float, dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """(1, 1, 28, 28): a 2-pixel-wide bar through (13.5 + dx, 13.5 + dy), leaning `slant` pixels
    right per pixel up, 16 pixels tall."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centre_x = 13.5 + dx - slant * (ys - 13.5 - dy)
    bar = ((xs - centre_x).abs() <= 1.0) & ((ys - 13.5 - dy).abs() <= 8)
    return bar.float()[None, None]


def ink_moments(x: torch.Tensor) -> tuple[float, float, float]:
    """Centre of mass (x, y) in pixels and slant cov(x, y) / var(y) of one image (1, 1, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = x[0, 0] / x.sum()
    mx, my = (w * xs).sum(), (w * ys).sum()
    return mx.item(), my.item(), ((w * (xs - mx) * (ys - my)).sum() / (w * (ys - my) ** 2).sum()).item()


@pytest.mark.parametrize("slant, dx, dy", [(0.4, 0, 0), (-0.3, 3, -2), (0.0, -4, 3)])
def test_deskew_straightens_and_centres_the_ink(slant, dx, dy):
    x = slanted_bar(slant, dx, dy)
    assert ink_moments(x)[2] == pytest.approx(-slant, abs=0.05)  # rows grow downwards
    y = Deskew()(x)
    mx, my, y_slant = ink_moments(y)
    assert (mx, my) == (pytest.approx(13.5, abs=0.15), pytest.approx(13.5, abs=0.15))
    assert abs(y_slant) < 0.03
    assert y.sum().item() == pytest.approx(x.sum().item(), rel=0.02)  # ink is moved, not lost
    upright = Deskew()(slanted_bar(0.0))
    assert (y - upright).abs().mean() < 0.015  # the same bar, up to resampling
    assert (x - upright).abs().mean() > 0.05  # which the slanted or shifted input was not


def test_deskew_keeps_blank_images_blank_and_works_per_image():
    x = torch.cat([torch.zeros(1, 1, 28, 28), slanted_bar(0.4), slanted_bar(-0.2, 2, 1)])
    y = Deskew()(x)
    assert torch.isfinite(y).all() and torch.equal(y[0], torch.zeros(1, 28, 28))
    torch.testing.assert_close(y[1:2], Deskew()(x[1:2]))  # no image's moments leak into another's
    torch.testing.assert_close(y[2:3], Deskew()(x[2:3]))


def test_deskew_is_part_of_the_model_but_not_of_its_weights():
    plain, straight = build_model(make_config("best")), build_model(make_config("best", deskew=True))
    assert plain.state_dict().keys() == straight.state_dict().keys()  # runs from before load as they were
    straight.load_state_dict(plain.state_dict())
    x = slanted_bar(0.5)
    torch.testing.assert_close(straight.eval()(x), plain.eval()(Deskew()(x)))
    message = r"deskew and alternate_deskew need model 'fast' or 'best' \(seed is the reference\)$"
    with pytest.raises(ValueError, match=message):
        make_config("seed", deskew=True)


def test_tta_model_predicts_by_its_views_and_trains_on_single_images():
    model = build_model(make_config("fast", tta=True))
    assert isinstance(model, TTA) and "grids" not in model.state_dict()  # views are no weights
    assert model.state_dict().keys() == {"temperature"} | {f"net.{k}" for k in model.net.state_dict()}
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    images = synthetic_digits(40, seed=3, labels=False).images
    # eval: the probabilities evaluate.tta_probs averages over TTA_VIEWS, in one batched pass
    np.testing.assert_allclose(predict_probs(model, images), tta_probs(model.net, images), atol=1e-6)
    assert len(TTA_VIEWS) == len(model.grids) > 1
    np.testing.assert_array_equal(tta_probs(model, images), predict_probs(model, images))  # no views of views
    assert not np.allclose(predict_probs(model, images), predict_probs(model.net, images), atol=1e-3)
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(model.train()(x), model.net.train()(x))  # training: the net, one view
    with torch.no_grad():
        model.temperature.fill_(2.0)
    logits = model.eval()(x)
    with torch.no_grad():
        model.temperature.fill_(1.0)
    torch.testing.assert_close(logits * 2, model(x))  # the temperature divides the averaged logits


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


def test_glorot_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    model = build_model(make_config())
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            receptive = m.weight[0, 0].numel() if m.weight.dim() == 4 else 1
            fan_in, fan_out = m.weight.shape[1] * receptive, m.weight.shape[0] * receptive
            limit = math.sqrt(6 / (fan_in + fan_out))
            w = m.weight.detach()
            assert w.abs().max() <= limit
            assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)  # uniform(-a, a) std
            assert torch.count_nonzero(m.bias) == 0


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


def test_augmentation_samples_the_spec_ranges():
    params = sample_affine_params(20_000, make_config(), torch.Generator().manual_seed(0))
    for key, (low, high) in {"angle_deg": (-10, 10), "zoom_x": (0.9, 1.1), "zoom_y": (0.9, 1.1),
                             "shift_x": (-0.1, 0.1), "shift_y": (-0.1, 0.1)}.items():
        values = params[key]
        assert low <= values.min() and values.max() <= high, key
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low), key
        assert abs(values.mean().item() - (low + high) / 2) < 0.02 * (high - low), key
    # a fresh, independent draw per image
    assert abs(np.corrcoef(params["zoom_x"], params["zoom_y"])[0, 1]) < 0.05


def test_affine_geometry_shift_fill_and_no_flip():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:18, 4:8] = 1.0  # a bar on the left
    identity = {"angle_deg": torch.zeros(1), "zoom_x": torch.ones(1), "zoom_y": torch.ones(1),
                "shift_x": torch.zeros(1), "shift_y": torch.zeros(1)}
    grid = torch.nn.functional.affine_grid(affine_matrices(identity), [1, 1, 28, 28], align_corners=False)
    assert torch.allclose(torch.nn.functional.grid_sample(x, grid, align_corners=False), x, atol=1e-6)

    # a shift of 0.1 of the width moves content by 2.8 px (sign: output samples from x + shift)
    shifted = dict(identity, shift_x=torch.tensor([-0.1]))
    grid = torch.nn.functional.affine_grid(affine_matrices(shifted), [1, 1, 28, 28], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    cols = torch.arange(28.0)
    centre = lambda img: (img[0, 0].sum(0) * cols).sum() / img.sum()  # noqa: E731
    assert centre(out) - centre(x) == pytest.approx(2.8, abs=0.05)

    # edge pixels repeat ("nearest" fill): a constant image stays constant under any transform
    flat = torch.full((64, 1, 28, 28), 0.7)
    assert torch.allclose(random_affine(flat, make_config(), torch.Generator().manual_seed(1)), flat, atol=1e-5)

    # no flips: every augmented copy stays closer to the original than to its mirror image
    xs = x.repeat(200, 1, 1, 1)
    aug = random_affine(xs, make_config(), torch.Generator().manual_seed(2))
    to_orig = ((aug - x) ** 2).flatten(1).sum(1)
    to_mirror = ((aug - x.flip(-1)) ** 2).flatten(1).sum(1)
    assert bool((to_orig < to_mirror).all())


def test_elastic_distortion_is_smooth_sized_by_alpha_and_off_by_default():
    disp = elastic_displacement(500, 28, 28, alpha=34.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    assert disp.shape == (500, 28, 28, 2)
    pixels = disp * 14  # [-1, 1] units -> pixels
    assert 0.8 < pixels.std().item() < 1.8  # uniform(-1, 1) * 34 smoothed by sigma 4: ~1.3 px (Simard's setting)
    neighbours = torch.corrcoef(torch.stack([pixels[:, :, :-1].flatten(), pixels[:, :, 1:].flatten()]))[0, 1]
    assert neighbours > 0.9  # a smooth field, not per-pixel noise
    doubled = elastic_displacement(500, 28, 28, alpha=68.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(doubled, 2 * disp)

    x = torch.rand(16, 1, 28, 28)
    plain = random_affine(x, make_config(), torch.Generator().manual_seed(3))
    elastic = random_affine(x, make_config(elastic_alpha=34.0), torch.Generator().manual_seed(3))
    assert not torch.allclose(plain, elastic)
    torch.testing.assert_close(random_affine(x, make_config(elastic_alpha=34.0), torch.Generator().manual_seed(3)),
                               elastic)
    flat = torch.full((8, 1, 28, 28), 0.7)  # edge pixels still repeat
    torch.testing.assert_close(random_affine(flat, make_config(elastic_alpha=34.0), torch.Generator()), flat)
    with pytest.raises(ValueError, match="elastic_alpha must be >= 0 and elastic_sigma > 0"):
        make_config(elastic_sigma=0.0)


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


def test_short_real_run_clears_75_percent(tiny_run, mnist_test):
    """Seed recipe, one epoch on 2,700 MNIST images (300 held out): at least 75% on the 10,000 test."""
    model, cfg, meta = load_run_model(tiny_run)
    summary = summarize(predict(model, mnist_test, "test"))
    assert summary["accuracy"] >= 0.75
    assert meta["config"] == cfg.to_dict()
    assert {"val_accuracy", "train_seconds", "environment", "label_counts"} <= set(
        __import__("json").loads((tiny_run / "metrics.json").read_text()))


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
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(optimizer, cfg, steps_per_epoch(len(x), cfg))
    generator = torch.Generator().manual_seed(0)
    rt = resolve(RuntimeConfig(device="cpu"))
    for _ in range(cfg.epochs):
        stats = train_one_epoch(model, x, y, optimizer, schedule, cfg, generator, rt)
    assert stats["images"] == steps_per_epoch(len(x), cfg) * cfg.batch_size
    assert optimizer.param_groups[0]["lr"] < 0.01  # one-cycle ended near zero
    accuracy = summarize(predict(model, mnist_test.subset(np.arange(2000)), "test"))["accuracy"]
    print(f"{preset}, 3 epochs on 3,000 images: {accuracy:.4f}")
    assert accuracy >= 0.90


def test_unknown_preset_and_field_are_errors():
    with pytest.raises(ValueError, match="unknown preset 'fastest'"):
        make_config("fastest")
    with pytest.raises(ValueError, match="unknown config field"):
        make_config("seed", learning_rate=0.1)
    with pytest.raises(ValueError, match="schedule 'plateau' watches validation accuracy"):
        make_config("seed", val_fraction=0.0)
