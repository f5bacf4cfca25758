"""The training loop: data held on the device as one uint8 tensor, batches sliced and augmented there.

`fit` trains one run: on one process, or as one rank of a DistributedDataParallel job (torchrun),
each rank computing its share of every global batch. The loop reads and changes one explicit
`TrainState` (checkpoint.py). Everything a run writes or prints goes through `RunWriter`, which only
the main process (rank 0) drives, into the run folder (core/rundir.py): config.json, history.csv and
checkpoint.safetensors each epoch; at the end the temperature of the probabilities (fitted on
held-out images), model.safetensors, predictions_val.npz and metrics.json. A killed run resumes
from its last checkpoint with identical results on the CPU; a run asked to stop (`StopRequest`, set
by the CLI's SIGINT/SIGTERM handler) checkpoints at the next step boundary, mid-epoch, and raises
`Interrupted`. One process at a time writes a run folder (its RunLock). Ensembles: ensemble.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.config import RuntimeConfig, TrainConfig, config_from_dict
from ..core.data import Digits
from ..core.files import InputError, Interrupted
from ..core.metrics import summarize
from ..core.rundir import CHECKPOINT, CONFIG, METRICS, WEIGHTS, Run, evaluation_file
from ..core.splits import split_calibration, split_validation
from ..nets.augment import apply_transforms, sample_transforms, to_float
from ..nets.model import count_parameters
from ..nets.predict import fit_model_temperature, predict, predict_logits
from ..nets.weights import environment, save_weights
from . import distributed
from .checkpoint import PartialEpoch, TrainState
from .distill import check_teacher, distillation_loss, teacher_log_probs
from .optim import steps_per_epoch
from .runtime import Runtime, resolve


def _accumulator(device: torch.device) -> torch.Tensor:
    """(loss sum, correct, images) kept on the device: read once per epoch, never per step (no sync)."""
    return torch.zeros(3, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)


def train_one_epoch(forward: torch.nn.Module, state: TrainState, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    rt: Runtime, progress: tqdm | None = None, should_stop: Callable[[], int] | None = None,
                    teacher: torch.Tensor | None = None) -> dict:
    """One pass over a fresh shuffle of (x uint8 (N, 28, 28), y int64 (N,)), both on rt.device, or the
    rest of `state.partial`, the epoch a stopped run left. `forward` is state.model or its DDP/compiled
    wrapper. `teacher`: the log-probabilities (N, 10) a distilled recipe also learns from (distill.py).

    Every rank draws the same global shuffle and the same augmentations of each global batch from
    `state.generator`, and computes its own share of the batch: any number of ranks sees the images
    one process would. Returns loss and accuracy over all ranks, and `bad_step`: the first step
    (1-based) whose loss was not finite, else None.

    `should_stop` is asked after every step but the last; when it says so, the epoch ends there and
    the result's `partial` is a PartialEpoch (its lr and seconds are the caller's to fill in).
    """
    optimizer, scaler, partial = state.optimizer, state.scaler, state.partial
    forward.train()
    n_steps = steps_per_epoch(len(x), cfg)
    sums = _accumulator(x.device)
    if partial is None:
        order, first = torch.randperm(len(x), generator=state.generator).to(x.device), 0
    else:
        order, first = partial.order.to(x.device), partial.step
        if rt.is_main:  # the sums over all ranks so far, counted once
            sums += partial.sums.to(x.device, sums.dtype)
    bad_step = torch.full((), n_steps, dtype=torch.int64, device=x.device)  # n_steps: none yet
    start = time.perf_counter()
    done = first
    for step in range(first, n_steps):
        index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        transforms = sample_transforms(len(index), cfg, state.generator) if cfg.augment else None
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
            logits = forward(xb)
            loss = distillation_loss(logits, yb, cfg, teacher[index] if teacher is not None else None)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        state.schedule.after_step()

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
             "seconds": time.perf_counter() - start, "images": int(seen - (partial.sums[2].item() if partial else 0)),
             "bad_step": None, "partial": None}
    if not math.isfinite(loss_sum):  # the first bad step over all ranks: the max of minus each rank's
        first_bad = -distributed.all_reduce_max(rt, -bad_step).item()
        stats["bad_step"] = first_bad + 1 if first_bad < n_steps else None
    if done < n_steps:
        stats["partial"] = PartialEpoch(done, order.cpu(), sums.cpu())
    return stats


def validate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> dict:
    """Loss and accuracy on held-out images (on rt.device), no augmentation, no gradients. Each rank
    scores its own slice and the sums are added: every image counts once, none is padded in."""
    if len(x) == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    part = torch.tensor_split(torch.arange(len(x), device=x.device), rt.world_size)[rt.rank]
    logits = predict_logits(model, x[part], rt.eval_batch_size, rt.channels_last, rt.autocast).to(x.device)
    sums = _accumulator(x.device)
    sums[0] += F.cross_entropy(logits, y[part], reduction="sum").to(sums.dtype)
    sums[1] += (logits.argmax(1) == y[part]).sum()
    sums[2] += len(part)
    loss_sum, correct, seen = distributed.all_reduce_sum(rt, sums).tolist()
    return {"loss": loss_sum / seen, "acc": correct / seen}


def check_same_config(run: Run, cfg: TrainConfig) -> None:
    """A run is resumed only with the recipe it was started with (the runtime may differ)."""
    saved = config_from_dict(run.config())
    if saved != cfg:
        diff = [k for k, v in cfg.to_dict().items() if saved.to_dict()[k] != v]
        raise InputError(f"{run.path}: config differs from the run being resumed ({', '.join(diff)})")


def check_start(cfg: TrainConfig, data: Digits, out_dir: str | os.PathLike, resume: bool, world_size: int = 1) -> None:
    """Everything that can be wrong before a run starts, read-only: each rank checks before any writes,
    and the CLI before a process group exists. Raises InputError."""
    run = Run(out_dir)
    if data.labels is None:
        raise InputError(f"{data.source}: training needs labels")
    check_teacher(cfg, out_dir)
    if cfg.batch_size % world_size:
        raise InputError(f"batch_size {cfg.batch_size} is the global batch: it must divide among {world_size} processes")
    if world_size > 1 and not cfg.drop_last:
        raise InputError("several processes need drop_last: a partial batch cannot be shared out evenly")
    if resume:  # a run killed before its first checkpoint starts again from its config
        if not run.has(CHECKPOINT) and not run.has(CONFIG):
            raise InputError(f"{run.path}: nothing to resume (no {CHECKPOINT})")
        check_same_config(run, cfg)
    elif (run / CHECKPOINT).exists() or (run / WEIGHTS).exists():
        raise InputError(f"{run.path}: already holds a run; use --resume or another --out")


class RunWriter:
    """The one place a run writes files and prints. Inactive on every rank but 0, which computes only."""

    def __init__(self, run: Run, active: bool, quiet: bool):
        self.run, self.active, self.quiet = run, active, quiet

    def say(self, text: str) -> None:
        if self.active and not self.quiet:
            print(text)

    def progress(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, disable=self.quiet or not self.active, leave=True, dynamic_ncols=True,
                    mininterval=1.0)

    def start(self, cfg: TrainConfig) -> None:
        if self.active:
            self.run.write_json(CONFIG, cfg.to_dict())
            self.history([])

    def history(self, history: list[dict]) -> None:
        if self.active:
            self.run.write_history(history)

    def checkpoint(self, state: TrainState, extra: dict, rt: Runtime) -> None:
        if self.active:
            state.save(self.run, extra, rt)

    def finish(self, model, cfg: TrainConfig, metrics: dict, val: Digits, held_out: Digits) -> None:
        """The temperature, validation predictions, then the weights, then metrics.json: a run with
        metrics is finished. The temperature is fitted on the calibration hold-out `held_out`, else
        on the validation split, else left at 1."""
        if not self.active:
            return
        temperature_set = held_out if len(held_out) else val
        if len(temperature_set):
            on = "calibration hold-out" if len(held_out) else "validation split"
            metrics["calibration"] = {"on": on, **fit_model_temperature(model, temperature_set)}
            self.say(f"temperature {metrics['calibration']['temperature']:.3f} (fitted on the {on}, "
                     f"{len(temperature_set):,} images): ECE there {100 * metrics['calibration']['ece_before']:.2f}% "
                     f"-> {100 * metrics['calibration']['ece_after']:.2f}%")
        if len(held_out):  # an ensemble of members sharing this hold-out fits its own temperature on it
            self.run.write_predictions(predict(model, held_out, "calibration"))
        if len(val):
            val_preds = predict(model, val, "val")
            self.run.write_predictions(val_preds)
            summary = summarize(val_preds)
            self.run.write_json(evaluation_file("val"), summary)
            metrics["val_accuracy"] = summary["accuracy"]
        save_weights(self.run, model, cfg, {"metrics": {k: metrics.get(k) for k in ("val_accuracy", "data", "calibration")}})
        self.run.write_json(METRICS, metrics)


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
    run = Run(out_dir)
    with locked_run(rt, run, lambda: check_start(cfg, data, out_dir, resume, rt.world_size)), rt.fork_rng():
        return _fit(cfg, data, run, resume, RunWriter(run, rt.is_main, quiet), rt, stop, on_epoch)


@contextlib.contextmanager
def locked_run(rt: Runtime, run: Run, check: Callable[[], None]):
    """Check the run folder on rank 0 (its InputError raised on every rank) and hold the folder's
    RunLock there until the run ends: a second process on the same folder is refused at once."""
    lock = run.lock()

    def check_and_lock():
        check()
        lock.acquire()

    distributed.check_on_main(rt, check_and_lock)
    try:
        yield
    finally:
        lock.release()


def _forward(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """What the training steps call: the model, wrapped for DistributedDataParallel (with synchronised
    batch norm where the runtime asks) and torch.compile as the runtime says; it shares the model's
    parameters."""
    forward = model
    if rt.distributed:
        if rt.sync_batchnorm:
            forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=rt.ddp_device_ids())
    if rt.compile:
        forward = torch.compile(forward)
    return forward


def _fit(cfg: TrainConfig, data: Digits, run: Run, resume: bool, writer: RunWriter, rt: Runtime,
         stop: StopRequest | None = None, on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    train_idx, val_idx = split_validation(data.labels, cfg)
    train_idx, calibration_idx = split_calibration(train_idx, cfg)
    x_train = torch.from_numpy(data.images[train_idx]).to(rt.device)  # uint8 (N, 28, 28)
    y_train = torch.from_numpy(data.labels[train_idx]).to(rt.device)
    x_val = torch.from_numpy(data.images[val_idx]).to(rt.device)
    y_val = torch.from_numpy(data.labels[val_idx]).to(rt.device)
    n_steps = steps_per_epoch(len(x_train), cfg)
    if n_steps == 0:
        raise InputError(f"{data.source}: {len(x_train)} training images is less than one batch of {cfg.batch_size}")

    state = TrainState.start(cfg, rt, n_steps)
    model = state.model
    saved = {}
    if resume and run.has(CHECKPOINT):  # every rank reads it; rank 0's RNG state is the one saved
        saved = state.load(run, rt)
        if saved.get("data_sha256", data.sha256) != data.sha256:  # checkpoints from before the field pass
            raise InputError(f"{run.path}: the checkpoint was trained on other data than {data.source}")
        writer.history(state.history)  # the checkpoint's, should a full disk have kept the last one from the file
        if state.partial is not None:
            _restore_rank_rng(cfg, rt, saved, state.epochs_done + 1)
    else:
        writer.start(cfg)
    distributed.same_on_every_rank(rt, state.epochs_done, "the epochs done")
    distributed.same_on_every_rank(rt, state.partial.step if state.partial else 0, "the steps done")
    should_stop = _StopCheck(rt, stop)
    teacher, distilled = None, None
    if cfg.distill_from:  # the teacher's probabilities of every training image, once (on resume, again)
        teacher, distilled = teacher_log_probs(cfg, x_train, rt)
        if saved.get("teacher_sha256", distilled["teacher_sha256"]) != distilled["teacher_sha256"]:
            raise InputError(f"{cfg.distill_from}: the teacher's weights changed since this run started; "
                             "resuming would learn from another teacher")
        writer.say(f"distilling from {cfg.distill_from} (weight {cfg.distill_weight}, temperature "
                   f"{cfg.distill_temperature}): its probabilities of {len(x_train):,} images took "
                   f"{distilled['teacher_seconds']:.1f} s")
    checkpoint_extra = {"data_sha256": data.sha256} | ({"teacher_sha256": distilled["teacher_sha256"]} if distilled else {})

    forward = _forward(model, rt)
    writer.say(f"training {cfg.model} ({count_parameters(model):,} parameters) on {len(x_train):,} images, "
               f"validating on {len(x_val):,}; {n_steps} steps/epoch; {rt.device}, {rt.precision}, "
               f"{rt.world_size} process(es) x {rt.threads} threads -> {run.path}")
    for epoch in range(state.epochs_done + 1, cfg.epochs + 1):
        partial = state.partial
        if rt.rank > 0 and partial is None:
            torch.manual_seed(_dropout_seed(cfg, rt.rank, epoch))
        epoch_start = time.perf_counter() - (partial.seconds if partial else 0.0)
        with writer.progress(n_steps, f"epoch {epoch}/{cfg.epochs}") as progress:
            lr = partial.lr if partial else state.optimizer.param_groups[0]["lr"]
            if partial:
                progress.update(partial.step)
            train = train_one_epoch(forward, state, x_train, y_train, cfg, rt, progress, should_stop, teacher)
            state.partial = None
            if not math.isfinite(train["loss"]):
                _stop_non_finite(train, epoch, n_steps, run.path, state.epochs_done)
            if train["partial"] is not None:  # asked to stop: checkpoint this step boundary, then stop
                state.partial = train["partial"]
                state.partial.lr, state.partial.seconds = lr, time.perf_counter() - epoch_start
                writer.checkpoint(state, checkpoint_extra | distributed.rng_states(rt), rt)
                distributed.barrier(rt)
                raise Interrupted(should_stop.now(), f"stopped at epoch {epoch}, step {state.partial.step} of "
                                                     f"{n_steps}; checkpoint written to {run / CHECKPOINT}")
            distributed.broadcast_buffers(rt, model)
            val = validate(model, x_val, y_val, rt)
            shown = {"loss": train["loss"], "acc": train["acc"]}
            if len(x_val):
                shown |= {"val_loss": val["loss"], "val_acc": val["acc"]}
            progress.set_postfix({k: f"{v:.4f}" for k, v in shown.items()} |
                                 {"lr": f"{lr:.2e}", "img_s": f"{train['images'] / train['seconds']:.0f}"})
        val_acc = val["acc"]
        if rt.distributed:  # the plateau decision is rank 0's, sent to all: every rank keeps the same rate
            val_acc = distributed.broadcast_from_main(rt, torch.tensor(val_acc, dtype=torch.float64, device=rt.device))
            val_acc = val_acc.item()
        state.schedule.after_epoch(val_acc)
        seconds = time.perf_counter() - epoch_start  # training and validation
        state.train_seconds += seconds
        state.history.append({"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"],
                              "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr, "seconds": round(seconds, 3)})
        writer.checkpoint(state, checkpoint_extra, rt)
        writer.history(state.history)
        if on_epoch is not None and rt.is_main:
            on_epoch(epoch, model)
        distributed.barrier(rt)  # the checkpoint is complete before any rank moves on
        signum = should_stop.now()
        if signum:
            raise Interrupted(signum, f"stopped after epoch {epoch}; checkpoint written to {run / CHECKPOINT}")

    metrics = {
        "preset": cfg.preset, "model": cfg.model, "parameters": count_parameters(model),
        "data": data.source, "data_sha256": data.sha256, "n_train": len(x_train), "n_val": len(x_val),
        "n_calibration": len(calibration_idx), "epochs": cfg.epochs,
        "label_counts": np.bincount(data.labels, minlength=10).tolist(),
        "train_seconds": round(state.train_seconds, 2),
        "images_per_second": round(state.epochs_done * n_steps * cfg.batch_size / max(state.train_seconds, 1e-9), 1),
        "runtime": rt.describe(), "environment": environment(),
    }
    if distilled:
        metrics["distillation"] = distilled
    writer.finish(model.cpu().float(), cfg, metrics, data.subset(val_idx), data.subset(calibration_idx))
    distributed.barrier(rt)
    return metrics
