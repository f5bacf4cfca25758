"""The training loop: data held on the device as one uint8 tensor, batches sliced and augmented there.

`fit` trains one run: on one process, or as one rank of a DistributedDataParallel job (torchrun),
each rank computing its share of every global batch. Everything a run writes or prints goes
through `RunWriter`, which only the main process (rank 0) drives: config.json, history.csv and
checkpoint.safetensors each epoch; at the end the temperature of the probabilities (fitted on
held-out images, calibrate.py), model.safetensors, predictions_val.npz and metrics.json. A killed
run resumes from its last checkpoint with identical results on the CPU; a run asked to stop
(`StopRequest`, set by the CLI's SIGINT/SIGTERM handler) checkpoints at the next step boundary,
mid-epoch, and raises `Interrupted`. One process at a time writes a run folder (`RunLock`).
`train_ensemble` trains several members (in parallel, one per rank, under torchrun) and
`combine_runs` makes them one ensemble run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import time
from pathlib import Path
from typing import Callable

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
from .files import InputError, Interrupted, RunLock, atomic_write, read_json, write_json
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
                    progress: tqdm | None = None, should_stop: Callable[[], bool] | None = None,
                    partial: dict | None = None) -> dict:
    """One pass over a fresh shuffle of (x uint8 (N, 28, 28), y int64 (N,)), both on rt.device.

    Every rank draws the same global shuffle and the same augmentations of each global batch from
    `generator`, and computes its own share of the batch: any number of ranks sees the images
    one process would. Returns loss and accuracy over all ranks, and `bad_step`: the first step
    (1-based) whose loss was not finite, else None.

    `should_stop` is asked after every step but the last; when it says so, the epoch ends there and
    the result's `partial` holds what `partial=` takes to finish the epoch as if never stopped: the
    shuffle, the steps done and the sums over all ranks so far (the generator is the caller's).
    """
    model.train()
    n_steps = steps_per_epoch(len(x), cfg)
    sums = _accumulator(x.device)
    if partial is None:
        order, first = torch.randperm(len(x), generator=generator).to(x.device), 0
    else:
        order, first = partial["order"].to(x.device), partial["step"]
        if rt.is_main:  # the sums over all ranks so far, counted once
            sums += partial["sums"].to(x.device, sums.dtype)
    bad_step = torch.full((), n_steps, dtype=torch.int64, device=x.device)  # n_steps: none yet
    start = time.perf_counter()
    done = first
    for step in range(first, n_steps):
        index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        transforms = sample_transforms(len(index), cfg, generator) if cfg.augment else None
        if rt.distributed:  # this rank's share of the global batch, and of its transforms
            share = torch.tensor_split(torch.arange(len(index)), rt.world_size)[rt.rank]
            index = index[share.to(x.device)]
            transforms = transforms and tuple(t[share] if t is not None else None for t in transforms)
        xb = to_float(x[index])  # (B / ranks, 1, 28, 28)
        yb = y[index]
        if transforms is not None:
            xb = apply_transforms(xb, *transforms)
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

        loss = loss.detach()
        sums[0] += loss.to(sums.dtype) * len(yb)
        sums[1] += (logits.argmax(1) == yb).sum()
        sums[2] += len(yb)
        # on the device, no sync: read only if the epoch's loss is not finite
        bad_step = torch.where(torch.isfinite(loss) | (bad_step < n_steps), bad_step, step)
        if progress is not None:
            progress.update(1)
        done = step + 1
        if done < n_steps and should_stop is not None and should_stop():
            break
    sums = distributed.all_reduce_sum(rt, sums)
    loss_sum, correct, seen = sums.tolist()
    stats = {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1),
             "seconds": time.perf_counter() - start, "images": int(seen - (partial["sums"][2].item() if partial else 0)),
             "bad_step": None, "partial": None}
    if not math.isfinite(loss_sum):  # the first bad step over all ranks: the max of minus each rank's
        first_bad = -distributed.all_reduce_max(rt, -bad_step).item()
        stats["bad_step"] = first_bad + 1 if first_bad < n_steps else None
    if done < n_steps:
        stats["partial"] = {"order": order.cpu(), "sums": sums.cpu(), "step": done}
    return stats


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
    if resume:  # a run killed before its first checkpoint starts again from its config
        if not (out_dir / CHECKPOINT_FILE).is_file() and not (out_dir / "config.json").is_file():
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


def _restore_rank_rng(cfg: TrainConfig, rt: Runtime, state: dict, epoch: int) -> None:
    """Ranks above 0 continue their own dropout stream in an epoch stopped midway, if the stopped
    run had this rank (else a fresh one from the seed: the run continues, not bit-identically)."""
    if rt.rank == 0:
        return
    cpu = state.get(f"rng.rank{rt.rank}.cpu")
    if cpu is None:
        torch.manual_seed(_dropout_seed(cfg, rt.rank, epoch))
        return
    torch.set_rng_state(cpu)
    rt.set_device_rng_state({f"rng.{k.rsplit('.', 1)[1]}": v for k, v in state.items()
                             if k.startswith(f"rng.rank{rt.rank}.")})


def _stop_non_finite(train: dict, epoch: int, n_steps: int, out_dir: Path, epochs_done: int) -> None:
    step = f"step {train['bad_step']} of {n_steps}" if train["bad_step"] else f"a step of {n_steps}"
    kept = (f"the checkpoint of epoch {epochs_done} is kept" if epochs_done else "no checkpoint was written")
    raise InputError(f"{out_dir}: the training loss became {train['loss']} at epoch {epoch}, {step}; "
                     f"stopped, {kept} (a lower --lr often helps)")


def _dropout_seed(cfg: TrainConfig, rank: int, epoch: int) -> int:
    """Dropout seed of ranks above 0 for an epoch: fixed by the seed, the rank and the epoch, so any
    rank can resume from rank 0's checkpoint. Rank 0 continues one stream, as a single process does."""
    return int(np.random.SeedSequence([cfg.seed, rank, epoch]).generate_state(1)[0])


class StopRequest:
    """A request to stop training, which the entry point's signal handler sets (cli.py): the loop reads
    `signum` after every step, checkpoints at that step boundary and raises Interrupted. A plain
    Python attribute: reading it costs nothing and needs no device sync."""

    def __init__(self):
        self.signum = 0


class _StopCheck:
    """Whether any rank was asked to stop (its signal number, 0: none), asked after every step.

    One process reads its flag. Several ranks must stop at the same step, so their flags are combined
    by an all-reduce of one number, pipelined: the one started after a step is read after the next,
    so no rank waits on it (every rank stops one step after the signal, the same step everywhere).
    `now()`, at an epoch's end, waits for the flags as they are.
    """

    def __init__(self, rt: Runtime, stop: StopRequest | None):
        self.rt, self.stop, self.pending = rt, stop, None

    def _mine(self) -> torch.Tensor:
        return torch.full((1,), self.stop.signum if self.stop is not None else 0, dtype=torch.int32,
                          device=self.rt.device)

    def _previous(self) -> int:
        if self.pending is None:
            return 0
        work, flag = self.pending
        self.pending = None
        work.wait()
        return int(flag.item())

    def __call__(self) -> int:
        if not self.rt.distributed:
            return self.stop.signum if self.stop is not None else 0
        previous = self._previous()
        flag = self._mine()
        self.pending = (distributed.all_reduce_max(self.rt, flag, async_op=True), flag)
        return previous

    def now(self) -> int:
        if not self.rt.distributed:
            return self()
        previous = self._previous()
        return max(previous, int(distributed.all_reduce_max(self.rt, self._mine()).item()))


def fit(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, resume: bool = False,
        quiet: bool = False, runtime: Runtime | None = None, stop: StopRequest | None = None,
        on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """Train `cfg` on labelled `data`, writing the run into `out_dir`. Returns metrics.json's content.

    With `resume`, continue from `out_dir/checkpoint.safetensors` (the recipe must match; the runtime
    may differ). `runtime` says where to compute (default: runtime.resolve(), the accelerator torch
    reports, else the CPU, with the threads torch has). Under torch.distributed, every rank calls
    fit and rank 0 writes. The process's RNG state is left as it was found.

    Rank 0 holds `out_dir`'s RunLock while it trains: a second process on the same folder gets
    InputError at once. When `stop` is set (see StopRequest), the run checkpoints at the next step
    boundary and raises Interrupted; `resume` continues from that step exactly. `on_epoch(epoch,
    model)` is called on rank 0 after each epoch's checkpoint, outside the timed epoch, e.g. to
    score the model on other images (benchmarks/speedrun.py draws its time-to-accuracy curve so).
    """
    rt = runtime or resolve(RuntimeConfig())
    out_dir = Path(out_dir)
    with _run_folder(rt, out_dir, lambda: check_start(cfg, data, out_dir, resume, rt.world_size)), rt.fork_rng():
        return _fit(cfg, data, out_dir, resume, RunWriter(out_dir, rt.is_main, quiet), rt, stop, on_epoch)


@contextlib.contextmanager
def _run_folder(rt: Runtime, out_dir: Path, check: Callable[[], None]):
    """Check the run folder on rank 0 (its InputError raised on every rank) and hold the folder's
    RunLock there until the run ends: a second process on the same folder is refused at once."""
    lock = RunLock(out_dir)

    def check_and_lock():
        check()
        lock.acquire()

    distributed.check_on_main(rt, check_and_lock)
    try:
        yield
    finally:
        lock.release()


def _fit(cfg: TrainConfig, data: Digits, out_dir: Path, resume: bool, writer: RunWriter, rt: Runtime,
         stop: StopRequest | None = None, on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
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
    partial = None  # an epoch stopped midway: where it stands
    if resume and (out_dir / CHECKPOINT_FILE).is_file():  # every rank reads it; rank 0's RNG state is the one saved
        state = load_checkpoint(out_dir / CHECKPOINT_FILE, model, optimizer, schedule.scheduler, generator, rt,
                                scaler)
        if state.get("data_sha256", data.sha256) != data.sha256:  # checkpoints from before the field pass
            raise InputError(f"{out_dir}: the checkpoint was trained on other data than {data.source}")
        history, train_seconds = state["history"], state["train_seconds"]
        writer.history(history)  # the checkpoint's, should a full disk have kept the last one from the file
        if state.get("epoch_step"):
            partial = {"order": state["epoch_order"], "sums": state["epoch_sums"], "step": state["epoch_step"],
                       "lr": state["epoch_lr"], "seconds": state["epoch_seconds"]}
            _restore_rank_rng(cfg, rt, state, len(history) + 1)
    else:
        writer.start(cfg)
    distributed.same_on_every_rank(rt, len(history), "the epochs done")
    distributed.same_on_every_rank(rt, partial["step"] if partial else 0, "the steps done")
    should_stop = _StopCheck(rt, stop)

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
        if rt.rank > 0 and partial is None:
            torch.manual_seed(_dropout_seed(cfg, rt.rank, epoch))
        epoch_start = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        with writer.progress(n_steps, f"epoch {epoch}/{cfg.epochs}") as progress:
            lr = partial["lr"] if partial else optimizer.param_groups[0]["lr"]
            if partial:
                progress.update(partial["step"])
            train = train_one_epoch(forward, x_train, y_train, optimizer, schedule, cfg, generator, rt, scaler,
                                    progress, should_stop, partial)
            partial = None
            if not math.isfinite(train["loss"]):
                _stop_non_finite(train, epoch, n_steps, out_dir, len(history))
            if train["partial"] is not None:  # asked to stop: checkpoint this step boundary, then stop
                stopped = train["partial"]
                state = {"history": history, "train_seconds": train_seconds, "data_sha256": data.sha256,
                         "epoch_step": stopped["step"], "epoch_order": stopped["order"],
                         "epoch_sums": stopped["sums"], "epoch_lr": lr,
                         "epoch_seconds": time.perf_counter() - epoch_start} | distributed.rng_states(rt)
                writer.checkpoint(model, optimizer, schedule.scheduler, generator, state, rt, scaler)
                distributed.barrier(rt)
                raise Interrupted(should_stop.now(), f"stopped at epoch {epoch}, step {stopped['step']} of {n_steps}; "
                                                 f"checkpoint written to {out_dir / CHECKPOINT_FILE}")
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
        if on_epoch is not None and rt.is_main:
            on_epoch(epoch, model)
        distributed.barrier(rt)  # the checkpoint is complete before any rank moves on
        signum = should_stop.now()
        if signum:
            raise Interrupted(signum, f"stopped after epoch {epoch}; checkpoint written to {out_dir / CHECKPOINT_FILE}")

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
                   resume: bool = False, quiet: bool = False, runtime: Runtime | None = None,
                   stop: StopRequest | None = None) -> dict:
    """Train `size` members of `cfg` (see member_config) into `out_dir/member-<i>/`, then combine
    them into `out_dir`. Returns the ensemble's metrics.json content (on rank 0; {} on the others).

    Under torch.distributed, member i trains on rank i mod world size as a whole single-process run
    (no gradient traffic); rank 0 then receives the members' files, on its own machine whether or not
    the machines share a filesystem, and combines them. With `resume`, a finished member is kept and
    a member with a checkpoint continues from it.
    """
    rt = runtime or resolve(RuntimeConfig())
    out_dir = Path(out_dir)
    # rank 0 locks the ensemble's folder, as for one run; each member's fit locks its member folder
    with _run_folder(rt, out_dir, lambda: check_ensemble_start(cfg, out_dir, size, resume)):
        finished = torch.tensor(int(rt.is_main and resume and (out_dir / WEIGHTS_FILE).is_file()), device=rt.device)
        if distributed.broadcast_from_main(rt, finished).item():
            return read_json(out_dir / "metrics.json") if rt.is_main else {}
        if rt.is_main and not resume:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / "config.json", cfg.to_dict())
        member_rt = dataclasses.replace(rt, rank=0, world_size=1)  # each member is a run of its own
        mine = [train_member(cfg, i, size, data, out_dir, resume, quiet or not rt.is_main, member_rt, stop)
                for i in range(rt.rank, size, rt.world_size)]
        distributed.gather_files(rt, out_dir, [str(path.relative_to(out_dir)) for member_dir in mine
                                               for path in sorted(member_dir.iterdir()) if path.is_file()])
        if not rt.is_main:
            return {}
        return combine_runs([out_dir / f"member-{i}" for i in range(size)], out_dir)


def train_member(cfg: TrainConfig, index: int, size: int, data: Digits, out_dir: Path, resume: bool = False,
                 quiet: bool = False, runtime: Runtime | None = None, stop: StopRequest | None = None) -> Path:
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
        runtime=runtime, stop=stop)
    return member_dir
