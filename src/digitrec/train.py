"""The training loop: data held as one uint8 tensor, batches sliced and augmented on the fly.

`fit` writes a run directory as it goes (config.json, history.csv, checkpoint.safetensors each
epoch; model.safetensors, predictions_val.npz and metrics.json at the end) and can resume a
killed run from its last checkpoint with identical results on CPU.
`train_ensemble` trains several members and `combine_runs` makes them one ensemble run.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import random_affine
from .checkpoint import (CHECKPOINT_FILE, WEIGHTS_FILE, environment, load_checkpoint, load_run_model, save_checkpoint,
                         save_weights)
from .config import TrainConfig, config_from_dict
from .data import Digits
from .evaluate import predict, predict_logits, summarize, to_float
from .files import InputError, atomic_write, read_json, write_json
from .model import Ensemble, build_model, count_parameters

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def physical_cores() -> int:
    """Physical cores (hyper-threads share the FPU, so more threads than this only adds contention)."""
    try:
        with open("/proc/cpuinfo") as f:
            cores = set()
            physical = core = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((physical, core))
        if cores:
            return min(len(cores), len(os.sched_getaffinity(0)))
    except OSError:
        pass
    return os.cpu_count() or 1


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def prepare_cpu(cfg: TrainConfig) -> int:
    """Set torch's threads to `cfg.threads` (0: the physical cores) and keep freed memory for reuse.

    glibc's malloc hands large freed blocks back to the OS, so every training step maps its
    activations and gradients afresh: `digitrec train --preset fast` took 3.0-3.5 million page
    faults per epoch and ran at ~3,000 images/s; with the mmap and trim thresholds raised, 98
    thousand and ~4,100 images/s (seed: +2.5%). The peak resident memory stays what a step needs.
    The setting is process-wide and stays. Returns the thread count.
    """
    threads = cfg.threads or physical_cores()
    torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return threads
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest; bigger blocks are still mapped apart
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return threads


def split_validation(labels: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): a random `val_fraction` held out with `val_seed`, optionally stratified."""
    n = len(labels)
    rng = np.random.default_rng(cfg.val_seed)
    if cfg.val_fraction == 0:
        return np.arange(n), np.arange(0)
    if not cfg.stratify:
        order = rng.permutation(n)
        n_val = int(math.ceil(n * cfg.val_fraction))  # sklearn's train_test_split rounds the test part up
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    val = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[:int(round(len(members) * cfg.val_fraction))])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n), val), val


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "plateau":
        # Keras reduces once `wait >= patience` (3 bad epochs); PyTorch once `num_bad_epochs >
        # patience`. So Keras patience 3 is PyTorch patience 2 (tests/test_train.py checks it).
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience - 1,
            threshold=cfg.plateau_min_delta, threshold_mode="abs", min_lr=cfg.min_lr)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25,
            cycle_momentum=cfg.optimizer == "sgd")
    return None


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    return n_train // cfg.batch_size if cfg.drop_last else math.ceil(n_train / cfg.batch_size)


def train_one_epoch(model, x: torch.Tensor, y: torch.Tensor, optimizer, scheduler, cfg: TrainConfig,
                    generator: torch.Generator, progress: tqdm | None = None) -> dict:
    """One pass over a fresh shuffle of (x uint8 (N, 28, 28), y int64 (N,)). Returns loss and accuracy."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total_loss = total_correct = seen = 0
    start = time.perf_counter()
    for step in range(steps_per_epoch(len(x), cfg)):
        index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        xb = to_float(x[index])  # (B, 1, 28, 28)
        yb = y[index]
        if cfg.augment:
            xb = random_affine(xb, cfg, generator)
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        loss.backward()
        optimizer.step()
        if cfg.schedule == "onecycle":
            scheduler.step()

        total_loss += loss.item() * len(yb)
        total_correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{total_correct / seen:.4f}",
                                 img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
    return {"loss": total_loss / max(seen, 1), "acc": total_correct / max(seen, 1),
            "seconds": time.perf_counter() - start, "images": seen}


def evaluate(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> dict:
    """Loss and accuracy on held-out images, no augmentation, no gradients."""
    if len(x) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    logits = predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last)
    return {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).float().mean().item()}


def _write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(path) as f:
        f.write(buffer.getvalue())


def _check_same_config(out_dir: Path, cfg: TrainConfig) -> None:
    """A run is resumed only with the config it was started with."""
    saved = config_from_dict(read_json(out_dir / "config.json"))
    if saved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        raise InputError(f"{out_dir}: config differs from the run being resumed ({', '.join(diff)})")


def fit(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, resume: bool = False,
        quiet: bool = False) -> dict:
    """Train `cfg` on labelled `data`, writing the run into `out_dir`. Returns metrics.json's content.

    With `resume`, continue from `out_dir/checkpoint.safetensors` (the config must match).
    """
    out_dir = Path(out_dir)
    if data.labels is None:
        raise InputError(f"{data.source}: training needs labels")
    if resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise InputError(f"{out_dir}: nothing to resume (no {CHECKPOINT_FILE})")
        _check_same_config(out_dir, cfg)
    elif (out_dir / CHECKPOINT_FILE).exists() or (out_dir / WEIGHTS_FILE).exists():
        raise InputError(f"{out_dir}: already holds a run; use --resume or another --out")

    threads = prepare_cpu(cfg)
    torch.manual_seed(cfg.seed)  # weights and dropout
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # shuffling and augmentation
    train_idx, val_idx = split_validation(data.labels, cfg)
    x_train, y_train = torch.from_numpy(data.images[train_idx]), torch.from_numpy(data.labels[train_idx])
    x_val, y_val = torch.from_numpy(data.images[val_idx]), torch.from_numpy(data.labels[val_idx])

    model = build_model(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    n_steps = steps_per_epoch(len(x_train), cfg)
    if n_steps == 0:
        raise InputError(f"{data.source}: {len(x_train)} training images is less than one batch of {cfg.batch_size}")
    scheduler = build_scheduler(optimizer, cfg, n_steps)
    forward = torch.compile(model) if cfg.compile else model  # shares model's parameters

    history: list[dict] = []
    train_seconds = 0.0
    data_sha256 = data.sha256
    if resume:
        state = load_checkpoint(out_dir / CHECKPOINT_FILE, model, optimizer, scheduler, generator)
        if state.get("data_sha256", data_sha256) != data_sha256:  # checkpoints from before the field pass
            raise InputError(f"{out_dir}: the checkpoint was trained on other data than {data.source}")
        history, train_seconds = state["history"], state["train_seconds"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg.to_dict())
    _write_history(out_dir / "history.csv", history)

    if not quiet:
        print(f"training {cfg.model} ({count_parameters(model):,} parameters) on {len(x_train):,} images, "
              f"validating on {len(x_val):,}; {n_steps} steps/epoch, {threads} threads -> {out_dir}")
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        with tqdm(total=n_steps, desc=f"epoch {epoch}/{cfg.epochs}", disable=quiet, leave=True,
                  dynamic_ncols=True, mininterval=1.0) as progress:
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(forward, x_train, y_train, optimizer, scheduler, cfg, generator, progress)
            val = evaluate(model, x_val, y_val, cfg)
            shown = {"loss": train["loss"], "acc": train["acc"]}
            if len(x_val):
                shown |= {"val_loss": val["loss"], "val_acc": val["acc"]}
            progress.set_postfix({k: f"{v:.4f}" for k, v in shown.items()} | {"lr": f"{lr:.2e}"})
        if cfg.schedule == "plateau":
            scheduler.step(val["acc"])
        seconds = time.perf_counter() - epoch_start  # training and validation
        train_seconds += seconds
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr, "seconds": round(seconds, 3)})
        save_checkpoint(out_dir / CHECKPOINT_FILE, model, optimizer, scheduler, generator,
                        {"history": history, "train_seconds": train_seconds, "data_sha256": data_sha256})
        _write_history(out_dir / "history.csv", history)

    metrics = {
        "preset": cfg.preset, "model": cfg.model, "parameters": count_parameters(model),
        "data": data.source, "data_sha256": data_sha256, "n_train": len(x_train), "n_val": len(x_val),
        "epochs": cfg.epochs,
        "label_counts": np.bincount(data.labels, minlength=10).tolist(),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(len(history) * n_steps * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "environment": environment(),
    }
    if len(val_idx):
        val_preds = predict(model, data.subset(val_idx), "val", cfg.eval_batch_size, cfg.channels_last)
        val_preds.save(out_dir / "predictions_val.npz")
        summary = summarize(val_preds)
        write_json(out_dir / "evaluation_val.json", summary)
        metrics["val_accuracy"] = summary["accuracy"]
    save_weights(out_dir / WEIGHTS_FILE, model, cfg, {"metrics": {k: metrics.get(k) for k in ("val_accuracy", "data")}})
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------------------------------------
# ensembles: several finished runs voting by averaged probabilities (model.Ensemble)

# Members of `digitrec train --ensemble` given no number. Measured with preset `best` on the official
# test set (benchmarks/accuracy.py, one run each): first 2 members 99.73%, 3 99.74%, 4 99.75%,
# 5 99.76%, single models 99.70% ± 0.04. Each member adds ~9 minutes on 2 cores.
DEFAULT_ENSEMBLE_SIZE = 5


def member_config(cfg: TrainConfig, index: int) -> TrainConfig:
    """Member `index` of an ensemble of `cfg`: its own seed and its own validation split; with
    `alternate_deskew`, odd members deskew their inputs."""
    deskew = cfg.deskew or (cfg.alternate_deskew and index % 2 == 1)
    return dataclasses.replace(cfg, seed=cfg.seed + index, val_seed=cfg.val_seed + index, deskew=deskew)


def _data_name(metrics: dict) -> str:
    sha = metrics.get("data_sha256")
    return f"{metrics.get('data')} (sha256 {sha[:12]})" if sha else str(metrics.get("data"))


def combine_runs(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> dict:
    """Write an ensemble of finished runs into `out_dir`; returns its metrics.json content.

    `model.safetensors` holds every member's weights (keys `members.<i>.`) and the member configs;
    `config.json` is the first member's, so the recipe's fields read as for any run. There is no
    ensemble validation accuracy: each member held out its own images, which the others saw.
    """
    run_dirs, out_dir = [Path(r) for r in run_dirs], Path(out_dir)
    if len(run_dirs) < 2:
        raise InputError(f"an ensemble needs at least 2 runs, got {len(run_dirs)}")
    if (out_dir / WEIGHTS_FILE).exists() or (out_dir / CHECKPOINT_FILE).exists():
        raise InputError(f"{out_dir}: already holds a run; choose another output directory")
    members, configs, member_metrics, seen = [], [], [], set()
    for run_dir in run_dirs:
        if run_dir.resolve() in seen:
            raise InputError(f"{run_dir}: given twice")
        seen.add(run_dir.resolve())
        model, cfg, meta = load_run_model(run_dir)
        if "members" in meta:
            raise InputError(f"{run_dir}: is an ensemble already; combine its members instead")
        if not (run_dir / "metrics.json").is_file():
            raise InputError(f"{run_dir}: no metrics.json (is the run finished?)")
        members.append(model)
        configs.append(cfg)
        member_metrics.append(read_json(run_dir / "metrics.json"))
    first = member_metrics[0]
    for run_dir, metrics in zip(run_dirs, member_metrics):
        if "data_sha256" in metrics and "data_sha256" in first:
            same = metrics["data_sha256"] == first["data_sha256"]  # the same images, under any file name
        else:  # a run from before the hash was recorded
            same = metrics.get("data") == first.get("data")
        if not same:
            raise InputError(f"the runs were trained on different data: {run_dirs[0]} on {_data_name(first)}, "
                             f"{run_dir} on {_data_name(metrics)}")

    ensemble = Ensemble(members)
    seconds = sum(m["train_seconds"] for m in member_metrics)
    images = sum(m["train_seconds"] * m["images_per_second"] for m in member_metrics)
    models = sorted({cfg.model for cfg in configs})
    metrics = {
        "preset": configs[0].preset, "model": f"ensemble of {len(members)} ({', '.join(models)})",
        "parameters": count_parameters(ensemble), "data": first["data"], "data_sha256": first.get("data_sha256"),
        "label_counts": first.get("label_counts"),
        "train_seconds": round(seconds, 2),  # all members, one after another
        "images_per_second": round(images / max(seconds, 1e-9), 1),
        "environment": environment(),
        "members": [{"run": os.path.relpath(run_dir.resolve(), out_dir.resolve()), "preset": cfg.preset,
                     "model": cfg.model, "deskew": cfg.deskew, "seed": cfg.seed, "val_seed": cfg.val_seed,
                     "epochs": cfg.epochs,
                     "n_train": m.get("n_train"), "n_val": m.get("n_val"), "val_accuracy": m.get("val_accuracy"),
                     "train_seconds": m["train_seconds"]}
                    for run_dir, cfg, m in zip(run_dirs, configs, member_metrics)],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", configs[0].to_dict())
    write_json(out_dir / "metrics.json", metrics)
    # the weights last: a run counts as finished once they exist
    member_val_accuracies = [row["val_accuracy"] for row in metrics["members"]]
    save_weights(out_dir / WEIGHTS_FILE, ensemble, configs[0],
                 {"members": [cfg.to_dict() for cfg in configs],
                  "metrics": {"data": metrics["data"], "member_val_accuracies": member_val_accuracies}})
    return metrics


def train_ensemble(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, size: int = DEFAULT_ENSEMBLE_SIZE,
                   resume: bool = False, quiet: bool = False) -> dict:
    """Train `size` members of `cfg` (see member_config) into `out_dir/member-<i>/`, then combine
    them into `out_dir`. Returns the ensemble's metrics.json content.

    With `resume`, a finished member is kept and a member with a checkpoint continues from it.
    """
    out_dir = Path(out_dir)
    if size < 2:
        raise InputError(f"an ensemble needs at least 2 members, got {size}")
    if resume:
        if not (out_dir / "config.json").is_file():
            raise InputError(f"{out_dir}: nothing to resume (no config.json)")
        _check_same_config(out_dir, cfg)
        if (out_dir / WEIGHTS_FILE).is_file():
            metrics = read_json(out_dir / "metrics.json")
            if len(metrics["members"]) != size:
                raise InputError(f"{out_dir}: holds a finished ensemble of {len(metrics['members'])}, not {size}")
            return metrics
    elif (out_dir / "config.json").exists() or (out_dir / WEIGHTS_FILE).exists():
        raise InputError(f"{out_dir}: already holds a run; use --resume or another --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg.to_dict())

    member_dirs = [train_member(cfg, i, size, data, out_dir, resume, quiet) for i in range(size)]
    return combine_runs(member_dirs, out_dir)


def train_member(cfg: TrainConfig, index: int, size: int, data: Digits, out_dir: Path, resume: bool = False,
                 quiet: bool = False) -> Path:
    """Member `index` of an ensemble of `size` in out_dir/member-<index>/. A finished member (of the
    same config) is kept; with `resume`, a member with a checkpoint continues from it."""
    member_dir, member_cfg = out_dir / f"member-{index}", member_config(cfg, index)
    if (member_dir / WEIGHTS_FILE).is_file() and (member_dir / "metrics.json").is_file():
        saved = config_from_dict(read_json(member_dir / "config.json"))
        if saved != member_cfg:
            raise InputError(f"{member_dir}: finished with another config than member {index} of this ensemble")
        if read_json(member_dir / "metrics.json").get("data_sha256", data.sha256) != data.sha256:
            raise InputError(f"{member_dir}: finished on other data than {data.source}")
        if not quiet:
            print(f"member {index + 1}/{size}: finished already ({member_dir})")
        return member_dir
    if not quiet:
        deskew = ", deskewed inputs" if member_cfg.deskew else ""
        print(f"member {index + 1}/{size}: seed {member_cfg.seed}, val_seed {member_cfg.val_seed}{deskew}")
    fit(member_cfg, data, member_dir, resume=resume and (member_dir / CHECKPOINT_FILE).is_file(), quiet=quiet)
    return member_dir
