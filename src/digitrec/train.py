"""The training loop: data held on the device as one uint8 tensor, batches sliced and augmented there.

`fit` trains one run: on one process, or as one rank of a DistributedDataParallel job (torchrun),
each rank computing its share of every global batch. Everything a run writes or prints goes
through `RunWriter`, which only the main process (rank 0) drives: config.json, history.csv and
checkpoint.safetensors each epoch; at the end the temperature of the probabilities (fitted on
held-out images, calibrate.py), model.safetensors, predictions_val.npz and metrics.json. A killed
run resumes from its last checkpoint with identical results on the CPU.
`train_ensemble` trains several members (in parallel, one per rank, under torchrun) and
`combine_runs` makes them one ensemble run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .augment import apply_transforms, sample_transforms
from .calibrate import calibrate
from .checkpoint import (CHECKPOINT_FILE, WEIGHTS_FILE, environment, load_checkpoint, load_run_model, save_checkpoint,
                         save_weights)
from .config import TrainConfig, config_from_dict
from .data import Digits
from .evaluate import Predictions, predict, summarize, to_float
from .files import InputError, atomic_write, read_json, write_json
from .model import Ensemble, build_model, count_parameters
from .runtime import Runtime, RuntimeConfig, resolve

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def split_validation(labels: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each sorted: a random `val_fraction` held out with `val_seed`.

    Unstratified with val_split "sklearn", the held-out images are exactly those of scikit-learn's
    train_test_split(test_size=val_fraction, random_state=val_seed): numpy's legacy RandomState
    permutation, the first ceil(n * val_fraction) of it (tests/test_train.py checks it against sklearn).
    """
    n = len(labels)
    if cfg.val_fraction == 0:
        return np.arange(n), np.arange(0)
    if not cfg.stratify:
        rng = np.random.RandomState(cfg.val_seed) if cfg.val_split == "sklearn" else np.random.default_rng(cfg.val_seed)
        order = rng.permutation(n)
        n_val = int(math.ceil(n * cfg.val_fraction))  # sklearn's train_test_split rounds the test part up
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    rng = np.random.default_rng(cfg.val_seed)
    val = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[:int(round(len(members) * cfg.val_fraction))])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n), val), val


def split_calibration(train_idx: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, calibration), each sorted: a random `calibration_fraction` of the training
    indices, drawn with `calibration_seed`, left out of training to fit the temperature on."""
    if cfg.calibration_fraction == 0:
        return train_idx, train_idx[:0]
    order = np.random.default_rng(cfg.calibration_seed).permutation(len(train_idx))
    n_calibration = int(math.ceil(len(train_idx) * cfg.calibration_fraction))
    return np.sort(train_idx[order[n_calibration:]]), np.sort(train_idx[order[:n_calibration]])


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


class Schedule:
    """The learning-rate schedule and when it steps, decided here only: a one-cycle rate after every
    batch, the plateau rate after every epoch on the validation accuracy, a constant rate never."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
        self.per_batch = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)

    def after_step(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_acc: float) -> None:
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step(val_acc)


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    return n_train // cfg.batch_size if cfg.drop_last else math.ceil(n_train / cfg.batch_size)


def _accumulator(device: torch.device) -> torch.Tensor:
    """(loss sum, correct, images) kept on the device: read once per epoch, never per step (no sync)."""
    return torch.zeros(3, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)


def train_one_epoch(model, x: torch.Tensor, y: torch.Tensor, optimizer, schedule: Schedule, cfg: TrainConfig,
                    generator: torch.Generator, rt: Runtime, scaler: torch.amp.GradScaler | None = None,
                    progress: tqdm | None = None) -> dict:
    """One pass over a fresh shuffle of (x uint8 (N, 28, 28), y int64 (N,)), both on rt.device.

    Every rank draws the same global shuffle and the same augmentations of each global batch from
    `generator`, and computes its own share of the batch: any number of ranks sees the images
    one process would. Returns loss and accuracy over all ranks.
    """
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    sums = _accumulator(x.device)
    start = time.perf_counter()
    for step in range(steps_per_epoch(len(x), cfg)):
        batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        transforms = sample_transforms(len(batch), cfg, generator) if cfg.augment else None
        share = torch.tensor_split(torch.arange(len(batch)), rt.world_size)[rt.rank]  # this rank's images
        index = batch[share.to(x.device)]
        xb = to_float(x[index])  # (B / ranks, 1, 28, 28)
        yb = y[index]
        if transforms is not None:
            xb = apply_transforms(xb, *(t[share] if t is not None else None for t in transforms))
        if rt.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        optimizer.zero_grad(set_to_none=True)
        with rt.autocast():
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.after_step()

        sums[0] += loss.detach().to(sums.dtype) * len(yb)
        sums[1] += (logits.argmax(1) == yb).sum()
        sums[2] += len(yb)
        if progress is not None:
            progress.update(1)
    loss_sum, correct, seen = distributed.all_reduce_sum(rt, sums).tolist()
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1),
            "seconds": time.perf_counter() - start, "images": int(seen)}


def evaluate(model, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> dict:
    """Loss and accuracy on held-out images (on rt.device), no augmentation, no gradients. Each rank
    scores its own slice and the sums are added: every image counts once, none is padded in."""
    if len(x) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    sums = _accumulator(x.device)
    model.eval()
    part = torch.tensor_split(torch.arange(len(x), device=x.device), rt.world_size)[rt.rank]
    with torch.inference_mode(), rt.autocast():
        for index in part.split(rt.eval_batch_size):
            xb = to_float(x[index])
            if rt.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            logits = model(xb).float()
            sums[0] += F.cross_entropy(logits, y[index], reduction="sum").to(sums.dtype)
            sums[1] += (logits.argmax(1) == y[index]).sum()
            sums[2] += len(index)
    loss_sum, correct, seen = distributed.all_reduce_sum(rt, sums).tolist()
    return {"loss": loss_sum / seen, "acc": correct / seen}


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _check_same_config(out_dir: Path, cfg: TrainConfig) -> None:
    """A run is resumed only with the recipe it was started with (the runtime may differ)."""
    saved = config_from_dict(read_json(out_dir / "config.json"))
    if saved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        raise InputError(f"{out_dir}: config differs from the run being resumed ({', '.join(diff)})")


def check_start(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, resume: bool, world_size: int = 1) -> None:
    """Everything that can be wrong before a run starts, read-only: each rank checks before any writes,
    and the CLI before a process group exists. Raises InputError."""
    out_dir = Path(out_dir)
    if data.labels is None:
        raise InputError(f"{data.source}: training needs labels")
    if cfg.batch_size % world_size:
        raise InputError(f"batch_size {cfg.batch_size} is the global batch: it must divide among {world_size} processes")
    if world_size > 1 and not cfg.drop_last:
        raise InputError("several processes need drop_last: a partial batch cannot be shared out evenly")
    if resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise InputError(f"{out_dir}: nothing to resume (no {CHECKPOINT_FILE})")
        _check_same_config(out_dir, cfg)
    elif (out_dir / CHECKPOINT_FILE).exists() or (out_dir / WEIGHTS_FILE).exists():
        raise InputError(f"{out_dir}: already holds a run; use --resume or another --out")


class RunWriter:
    """The one place a run writes files and prints. Inactive on every rank but 0, which computes only."""

    def __init__(self, out_dir: Path, active: bool, quiet: bool):
        self.out_dir, self.active, self.quiet = out_dir, active, quiet

    def say(self, text: str) -> None:
        if self.active and not self.quiet:
            print(text)

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, disable=self.quiet or not self.active, leave=True, dynamic_ncols=True,
                    mininterval=1.0)

    def start(self, cfg: TrainConfig) -> None:
        if self.active:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "config.json", cfg.to_dict())
            self.history([])

    def history(self, history: list[dict]) -> None:
        if self.active:
            with atomic_write(self.out_dir / "history.csv") as f:
                f.write(_history_csv(history))

    def checkpoint(self, *args, **kwargs) -> None:
        if self.active:
            save_checkpoint(self.out_dir / CHECKPOINT_FILE, *args, **kwargs)

    def finish(self, model, cfg: TrainConfig, metrics: dict, val: Digits, held_out: Digits) -> None:
        """The temperature, validation predictions, then the weights, then metrics.json: a run with
        metrics is finished. The temperature is fitted on the calibration hold-out `held_out`, else
        on the validation split, else left at 1."""
        if not self.active:
            return
        calibration_set = held_out if len(held_out) else val
        if len(calibration_set):
            on = "calibration hold-out" if len(held_out) else "validation split"
            metrics["calibration"] = {"on": on, **calibrate(model, calibration_set)}
            self.say(f"temperature {metrics['calibration']['temperature']:.3f} (fitted on the {on}, "
                     f"{len(calibration_set):,} images): ECE there {100 * metrics['calibration']['ece_before']:.2f}% "
                     f"-> {100 * metrics['calibration']['ece_after']:.2f}%")
        if len(held_out):  # an ensemble of members sharing this hold-out fits its own temperature on it
            predict(model, held_out, "calibration").save(self.out_dir / "predictions_calibration.npz")
        if len(val):
            val_preds = predict(model, val, "val")
            val_preds.save(self.out_dir / "predictions_val.npz")
            summary = summarize(val_preds)
            write_json(self.out_dir / "evaluation_val.json", summary)
            metrics["val_accuracy"] = summary["accuracy"]
        save_weights(self.out_dir / WEIGHTS_FILE, model, cfg,
                     {"metrics": {k: metrics.get(k) for k in ("val_accuracy", "data", "calibration")}})
        write_json(self.out_dir / "metrics.json", metrics)


def _dropout_seed(cfg: TrainConfig, rank: int, epoch: int) -> int:
    """Dropout seed of ranks above 0 for an epoch: fixed by the seed, the rank and the epoch, so any
    rank can resume from rank 0's checkpoint. Rank 0 continues one stream, as a single process does."""
    return int(np.random.SeedSequence([cfg.seed, rank, epoch]).generate_state(1)[0])


def fit(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, resume: bool = False,
        quiet: bool = False, runtime: Runtime | None = None) -> dict:
    """Train `cfg` on labelled `data`, writing the run into `out_dir`. Returns metrics.json's content.

    With `resume`, continue from `out_dir/checkpoint.safetensors` (the recipe must match; the runtime
    may differ). `runtime` says where to compute (default: runtime.resolve(), the accelerator torch
    reports, else the CPU, with the threads torch has). Under torch.distributed, every rank calls
    fit and rank 0 writes. The process's RNG state is left as it was found.
    """
    rt = runtime or resolve(RuntimeConfig())
    out_dir = Path(out_dir)
    distributed.check_on_main(rt, lambda: check_start(cfg, data, out_dir, resume, rt.world_size))
    with rt.fork_rng():
        return _fit(cfg, data, out_dir, resume, RunWriter(out_dir, rt.is_main, quiet), rt)


def _fit(cfg: TrainConfig, data: Digits, out_dir: Path, resume: bool, writer: RunWriter, rt: Runtime) -> dict:
    torch.manual_seed(cfg.seed)  # weights and dropout; fit() restores the caller's RNG state afterwards
    generator = torch.Generator().manual_seed(cfg.seed + 1)  # shuffling and augmentation, on the CPU
    train_idx, val_idx = split_validation(data.labels, cfg)
    train_idx, calibration_idx = split_calibration(train_idx, cfg)
    x_train = torch.from_numpy(data.images[train_idx]).to(rt.device)  # uint8 (N, 28, 28)
    y_train = torch.from_numpy(data.labels[train_idx]).to(rt.device)
    x_val = torch.from_numpy(data.images[val_idx]).to(rt.device)
    y_val = torch.from_numpy(data.labels[val_idx]).to(rt.device)
    n_steps = steps_per_epoch(len(x_train), cfg)
    if n_steps == 0:
        raise InputError(f"{data.source}: {len(x_train)} training images is less than one batch of {cfg.batch_size}")

    model = build_model(cfg).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(optimizer, cfg, n_steps)
    scaler = rt.grad_scaler()
    history: list[dict] = []
    train_seconds = 0.0
    if resume:  # every rank reads the checkpoint; rank 0's RNG state is the one saved
        state = load_checkpoint(out_dir / CHECKPOINT_FILE, model, optimizer, schedule.scheduler, generator, rt,
                                scaler)
        if state.get("data_sha256", data.sha256) != data.sha256:  # checkpoints from before the field pass
            raise InputError(f"{out_dir}: the checkpoint was trained on other data than {data.source}")
        history, train_seconds = state["history"], state["train_seconds"]
    else:
        writer.start(cfg)
    distributed.same_on_every_rank(rt, len(history), "the epochs done")

    forward = model
    if rt.distributed:
        if rt.sync_batchnorm:
            forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=rt.ddp_device_ids())
    if rt.compile:
        forward = torch.compile(forward)  # shares model's parameters

    writer.say(f"training {cfg.model} ({count_parameters(model):,} parameters) on {len(x_train):,} images, "
               f"validating on {len(x_val):,}; {n_steps} steps/epoch; {rt.device}, {rt.precision}, "
               f"{rt.world_size} process(es) x {rt.threads} threads -> {out_dir}")
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if rt.rank > 0:
            torch.manual_seed(_dropout_seed(cfg, rt.rank, epoch))
        epoch_start = time.perf_counter()
        with writer.progress(n_steps, f"epoch {epoch}/{cfg.epochs}") as progress:
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(forward, x_train, y_train, optimizer, schedule, cfg, generator, rt, scaler,
                                    progress)
            distributed.broadcast_buffers(rt, model)
            val = evaluate(model, x_val, y_val, rt)
            shown = {"loss": train["loss"], "acc": train["acc"]}
            if len(x_val):
                shown |= {"val_loss": val["loss"], "val_acc": val["acc"]}
            progress.set_postfix({k: f"{v:.4f}" for k, v in shown.items()} |
                                 {"lr": f"{lr:.2e}", "img_s": f"{train['images'] / train['seconds']:.0f}"})
        val_acc = val["acc"]
        if rt.distributed:  # the plateau decision is rank 0's, sent to all: every rank keeps the same rate
            val_acc = distributed.broadcast_from_main(rt, torch.tensor(val_acc, dtype=torch.float64, device=rt.device))
            val_acc = val_acc.item()
        schedule.after_epoch(val_acc)
        seconds = time.perf_counter() - epoch_start  # training and validation
        train_seconds += seconds
        history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                        "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr, "seconds": round(seconds, 3)})
        writer.checkpoint(model, optimizer, schedule.scheduler, generator,
                          {"history": history, "train_seconds": train_seconds, "data_sha256": data.sha256},
                          rt, scaler)
        writer.history(history)
        distributed.barrier(rt)  # the checkpoint is complete before any rank moves on

    metrics = {
        "preset": cfg.preset, "model": cfg.model, "parameters": count_parameters(model),
        "data": data.source, "data_sha256": data.sha256, "n_train": len(x_train), "n_val": len(x_val),
        "n_calibration": len(calibration_idx), "epochs": cfg.epochs,
        "label_counts": np.bincount(data.labels, minlength=10).tolist(),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(len(history) * n_steps * cfg.batch_size / max(train_seconds, 1e-9), 1),
        "runtime": rt.describe(),
        "environment": environment(),
    }
    writer.finish(model.cpu().float(), cfg, metrics, data.subset(val_idx), data.subset(calibration_idx))
    distributed.barrier(rt)
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

    ensemble = Ensemble(members)  # each member keeps the temperature its own run fitted
    held_out = _shared_calibration_set(run_dirs)
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
    if held_out is not None:
        metrics["calibration"] = {"on": "members' shared calibration hold-out", **calibrate(ensemble, held_out)}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", configs[0].to_dict())
    write_json(out_dir / "metrics.json", metrics)
    # the weights last: a run counts as finished once they exist
    member_val_accuracies = [row["val_accuracy"] for row in metrics["members"]]
    save_weights(out_dir / WEIGHTS_FILE, ensemble, configs[0],
                 {"members": [cfg.to_dict() for cfg in configs],
                  "metrics": {"data": metrics["data"], "member_val_accuracies": member_val_accuracies,
                              "calibration": metrics.get("calibration")}})
    return metrics


def _shared_calibration_set(run_dirs: list[Path]) -> Digits | None:
    """The calibration hold-out every member left out of its training (members of one `--ensemble`
    share it: the same calibration_seed), on which the ensemble fits its own temperature; None if
    any member lacks one or they differ."""
    paths = [run_dir / "predictions_calibration.npz" for run_dir in run_dirs]
    if not all(path.is_file() for path in paths):
        return None
    records = [Predictions.load(path) for path in paths]
    first = records[0]
    if any(not np.array_equal(r.ids, first.ids) or not np.array_equal(r.images, first.images) for r in records):
        return None
    return Digits(first.images, first.y_true, first.ids, "calibration hold-out")


def check_ensemble_start(cfg: TrainConfig, out_dir: str | os.PathLike, size: int, resume: bool) -> None:
    """What can be wrong before an ensemble starts, read-only (the members check their own runs)."""
    out_dir = Path(out_dir)
    if size < 2:
        raise InputError(f"an ensemble needs at least 2 members, got {size}")
    if resume:
        if not (out_dir / "config.json").is_file():
            raise InputError(f"{out_dir}: nothing to resume (no config.json)")
        _check_same_config(out_dir, cfg)
        if (out_dir / WEIGHTS_FILE).is_file():
            finished = len(read_json(out_dir / "metrics.json")["members"])
            if finished != size:
                raise InputError(f"{out_dir}: holds a finished ensemble of {finished}, not {size}")
    elif (out_dir / "config.json").exists() or (out_dir / WEIGHTS_FILE).exists():
        raise InputError(f"{out_dir}: already holds a run; use --resume or another --out")


def train_ensemble(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, size: int = DEFAULT_ENSEMBLE_SIZE,
                   resume: bool = False, quiet: bool = False, runtime: Runtime | None = None) -> dict:
    """Train `size` members of `cfg` (see member_config) into `out_dir/member-<i>/`, then combine
    them into `out_dir`. Returns the ensemble's metrics.json content (on rank 0; {} on the others).

    Under torch.distributed, member i trains on rank i mod world size as a whole single-process run
    (no gradient traffic); rank 0 then receives the members' files, on its own machine whether or not
    the machines share a filesystem, and combines them. With `resume`, a finished member is kept and
    a member with a checkpoint continues from it.
    """
    rt = runtime or resolve(RuntimeConfig())
    out_dir = Path(out_dir)
    distributed.check_on_main(rt, lambda: check_ensemble_start(cfg, out_dir, size, resume))
    finished = torch.tensor(int(rt.is_main and resume and (out_dir / WEIGHTS_FILE).is_file()), device=rt.device)
    if distributed.broadcast_from_main(rt, finished).item():
        return read_json(out_dir / "metrics.json") if rt.is_main else {}
    if rt.is_main and not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg.to_dict())
    member_rt = dataclasses.replace(rt, rank=0, world_size=1)  # each member is a run of its own
    mine = [train_member(cfg, i, size, data, out_dir, resume, quiet or not rt.is_main, member_rt)
            for i in range(rt.rank, size, rt.world_size)]
    distributed.gather_files(rt, out_dir, [str(path.relative_to(out_dir)) for member_dir in mine
                                           for path in sorted(member_dir.iterdir()) if path.is_file()])
    if not rt.is_main:
        return {}
    return combine_runs([out_dir / f"member-{i}" for i in range(size)], out_dir)


def train_member(cfg: TrainConfig, index: int, size: int, data: Digits, out_dir: Path, resume: bool = False,
                 quiet: bool = False, runtime: Runtime | None = None) -> Path:
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
    fit(member_cfg, data, member_dir, resume=resume and (member_dir / CHECKPOINT_FILE).is_file(), quiet=quiet,
        runtime=runtime)
    return member_dir
