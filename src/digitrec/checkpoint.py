"""Self-describing checkpoints in safetensors: tensors in the file, everything else as JSON metadata.

Nothing is pickled. `model.safetensors` carries the weights plus the config that rebuilds the
model; `checkpoint.safetensors` adds optimizer, scheduler and RNG state so a run can resume.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors import safe_open

from .config import TrainConfig, config_from_dict
from .files import InputError, atomic_write
from .model import Ensemble, build_model

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


def environment() -> dict:
    """Versions, machine and git commit, recorded beside every run."""

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "digitrec": version("digitrec"), "git_commit": commit, "torch": torch.__version__,
        "numpy": version("numpy"), "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = st_save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()})
    with atomic_write(path, "wb") as f:
        f.write(blob)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        tensors = st_load(Path(path).read_bytes())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def save_weights(path: Path, model: torch.nn.Module, cfg: TrainConfig, extra: dict | None = None) -> None:
    meta = {"config": cfg.to_dict(), "environment": environment(), **(extra or {})}
    _write_safetensors(path, model.state_dict(), meta)


def load_weights(path: Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild a model from its weights file alone; returns (model in eval mode, config, metadata)."""
    tensors, meta = _read_safetensors(path)
    if "config" not in meta:
        raise InputError(f"{path}: no config in its metadata; not a digitrec weights file")
    cfg = config_from_dict(meta["config"])
    if "members" in meta:  # an ensemble run (train.combine_runs): one member config each
        model = Ensemble([build_model(config_from_dict(member)) for member in meta["members"]])
    else:
        model = build_model(cfg)
    model.load_state_dict(tensors)
    return model.eval(), cfg, meta


def load_run_model(run_dir: str | os.PathLike) -> tuple[torch.nn.Module, TrainConfig, dict]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: no {WEIGHTS_FILE} (is the run finished?)")
    return load_weights(path)


def save_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator, state: dict,
                    runtime=None, scaler: torch.amp.GradScaler | None = None) -> None:
    """Everything needed to continue exactly: weights, optimizer, scheduler, the RNGs (the CPU's, the
    run's generator and the runtime device's), the fp16 grad scaler, and `state`. Saved on the CPU."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    optim_scalars = {}
    for pid, entries in optim_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                optim_scalars[f"{pid}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    device_rng = runtime.device_rng_state() if runtime is not None else None
    if device_rng is not None:
        tensors[device_rng[0]] = device_rng[1]
    meta = {
        "state": state,
        "optimizer_param_groups": optim_state["param_groups"],
        "optimizer_scalars": optim_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
    }
    _write_safetensors(path, tensors, meta)


def load_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator,
                    runtime=None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """Restore what save_checkpoint wrote, in place; returns the saved `state` dict. A checkpoint
    from another device restores all but that device's RNG; one from an fp16 run restores the scaler."""
    tensors, meta = _read_safetensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim_state: dict = {"state": {}, "param_groups": meta["optimizer_param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state["state"].setdefault(int(pid), {})[name] = value
    for key, value in meta["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        optim_state["state"].setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(optim_state)
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    if runtime is not None:
        runtime.set_device_rng_state(tensors)
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    return meta["state"]
