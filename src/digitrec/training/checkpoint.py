"""The training state, explicit: what a run holds between two steps, and its checkpoint file.

`TrainState` is the model, optimizer, schedule, grad scaler, the run's generator, the epochs done
and, when a run was stopped mid-epoch, a `PartialEpoch`. `TrainState.start` builds it the way every
run starts (the seeds, then the model); `save`/`load` write and restore it exactly as
`checkpoint.safetensors` (safetensors: tensors in the file, the rest as JSON metadata; nothing is
pickled), through the run folder, which records and checks its digest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.config import TrainConfig
from ..core.files import InputError, first_line
from ..core.rundir import CHECKPOINT, Run
from ..nets.model import build_model
from ..nets.weights import read_safetensors, safetensors_bytes
from .optim import Schedule, build_optimizer
from .runtime import Runtime

CHECKPOINT_META = ("state", "optimizer_param_groups", "optimizer_scalars", "scheduler")


@dataclass
class PartialEpoch:
    """An epoch stopped at a step boundary: what finishing it as if never stopped needs."""
    step: int  # steps done (the next one to run)
    order: torch.Tensor  # (N,) int64: the epoch's shuffle
    sums: torch.Tensor  # (3,): loss sum, correct, images so far, over all ranks
    lr: float = 0.0  # the rate the epoch started with (what history.csv shows)
    seconds: float = 0.0  # time spent in it so far

    def to_state(self) -> dict:
        """The checkpoint's `state` entries (their names are the file format's)."""
        return {"epoch_step": self.step, "epoch_order": self.order.cpu(), "epoch_sums": self.sums.cpu(),
                "epoch_lr": self.lr, "epoch_seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict) -> "PartialEpoch | None":
        if not state.get("epoch_step"):
            return None
        return cls(state["epoch_step"], state["epoch_order"], state["epoch_sums"], state["epoch_lr"],
                   state["epoch_seconds"])


@dataclass
class TrainState:
    """Everything that changes while a run trains."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    generator: torch.Generator  # shuffling and augmentation, on the CPU
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    train_seconds: float = 0.0
    partial: PartialEpoch | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, rt: Runtime, steps_per_epoch: int) -> "TrainState":
        """A fresh state: torch's default generator seeded with cfg.seed (initial weights, then
        dropout; fit restores the caller's RNG state afterwards), the run's own generator with
        cfg.seed + cfg.shuffle_seed_offset, then the model, optimizer, schedule and scaler."""
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed + cfg.shuffle_seed_offset)
        model = build_model(cfg).to(rt.device)
        if rt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg)
        return cls(model, optimizer, Schedule(optimizer, cfg, steps_per_epoch), generator, rt.grad_scaler())

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def save(self, run: Run, state: dict, rt: Runtime | None = None) -> None:
        """Write checkpoint.safetensors: weights, optimizer, scheduler, the RNGs (the CPU's, the run's
        generator and the runtime device's), the fp16 grad scaler, history, the partial epoch, and
        `state` (JSON values, and tensors stored as `state.<key>`). Saved on the CPU."""
        state = {"history": self.history, "train_seconds": self.train_seconds, **state,
                 **(self.partial.to_state() if self.partial is not None else {})}
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optim_state = self.optimizer.state_dict()
        optim_scalars = {}
        for pid, entries in optim_state["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{pid}.{key}"] = value
                else:
                    optim_scalars[f"{pid}.{key}"] = value
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.generator"] = self.generator.get_state()
        device_rng = rt.device_rng_state() if rt is not None else None
        if device_rng is not None:
            tensors[device_rng[0]] = device_rng[1]
        tensors |= {f"state.{k}": v for k, v in state.items() if torch.is_tensor(v)}
        scheduler = self.schedule.scheduler
        meta = {
            "state": {k: v for k, v in state.items() if not torch.is_tensor(v)},
            "optimizer_param_groups": optim_state["param_groups"],
            "optimizer_scalars": optim_scalars,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        run.write_bytes(CHECKPOINT, safetensors_bytes(tensors, meta))

    def load(self, run: Run, rt: Runtime | None = None) -> dict:
        """Restore what `save` wrote, in place; returns the saved `state` dict (the history and the
        partial epoch are restored into this state). A checkpoint from another device restores all
        but that device's RNG; one from an fp16 run restores the scaler.

        Anything but a checkpoint of this model (truncated, garbled, another project's safetensors
        file, a weights file, another model's checkpoint, a file that does not match its digest)
        raises InputError naming the file, before anything is restored.
        """
        path = run / CHECKPOINT
        tensors, meta = read_safetensors(run.read_bytes(CHECKPOINT), path)
        missing = [k for k in CHECKPOINT_META if k not in meta] + [k for k in ("rng.torch", "rng.generator")
                                                                   if k not in tensors]
        if missing or not isinstance(meta.get("state"), dict):
            raise InputError(f"{path}: not a digitrec checkpoint (no {(missing or ['state'])[0]!r} in it)")
        expected = self.model.state_dict()
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        misfits = [k for k in expected if k not in weights or weights[k].shape != expected[k].shape]
        misfits += [k for k in weights if k not in expected]
        if misfits:
            raise InputError(f"{path}: its weights do not fit this run's model ({len(misfits)} tensors missing, "
                             f"unexpected or of another shape, first: {misfits[0]!r})")
        try:
            self.model.load_state_dict(weights)
            optim_state: dict = {"state": {}, "param_groups": meta["optimizer_param_groups"]}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, pid, name = key.split(".", 2)
                    optim_state["state"].setdefault(int(pid), {})[name] = value
            for key, value in meta["optimizer_scalars"].items():
                pid, name = key.split(".", 1)
                optim_state["state"].setdefault(int(pid), {})[name] = value
            self.optimizer.load_state_dict(optim_state)
            if self.schedule.scheduler is not None:
                self.schedule.scheduler.load_state_dict(meta["scheduler"])
            torch.set_rng_state(tensors["rng.torch"])
            self.generator.set_state(tensors["rng.generator"])
            if rt is not None:
                rt.set_device_rng_state(tensors)
            if self.scaler is not None and meta.get("grad_scaler"):
                self.scaler.load_state_dict(meta["grad_scaler"])
            state = meta["state"] | {k[6:]: v for k, v in tensors.items() if k.startswith("state.")}
            self.history, self.train_seconds = state["history"], state["train_seconds"]
            self.partial = PartialEpoch.from_state(state)
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:  # metadata of the wrong shape
            raise InputError(f"{path}: a damaged or foreign checkpoint ({type(e).__name__}: {first_line(e)})") from None
        return state
