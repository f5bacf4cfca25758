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
import warnings
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
    """Tensors and JSON metadata of a safetensors file; InputError naming the file if it is anything else."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        blob = Path(path).read_bytes()
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    return tensors, {key: _json_or_text(value) for key, value in raw_meta.items()}


def _json_or_text(value: str):
    """digitrec writes every metadata value as JSON; other projects' files hold plain text (`"format": "pt"`)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def save_weights(path: Path, model: torch.nn.Module, cfg: TrainConfig, extra: dict | None = None) -> None:
    meta = {"config": cfg.to_dict(), "environment": environment(), **(extra or {})}
    _write_safetensors(path, model.state_dict(), meta)


def load_weights(path: Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild a model from its weights file alone; returns (model in eval mode, config, metadata).

    Anything but a digitrec weights file (truncated, garbled, another project's, another model's
    weights) raises InputError naming the file. The model is first built on the meta device, where
    it costs no memory, and its shapes compared with the file's tensors: metadata describing a huge
    model is refused before anything is allocated.
    """
    tensors, meta = _read_safetensors(path)
    if not isinstance(meta.get("config"), dict):
        raise InputError(f"{path}: no config in its metadata; not a digitrec weights file")
    members = meta.get("members")  # an ensemble run (train.combine_runs): one member config each
    if members is not None and not (isinstance(members, list) and members and all(isinstance(m, dict) for m in members)):
        raise InputError(f"{path}: its 'members' metadata is not a list of configs; not a digitrec weights file")

    def build() -> torch.nn.Module:
        return Ensemble([build_model(c) for c in configs]) if configs is not None else build_model(cfg)

    try:
        cfg = config_from_dict(meta["config"])
        configs = [config_from_dict(member) for member in members] if members is not None else None
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a zero-width layer: torch warns that initialising it does nothing
            expected = build().state_dict()
    except (TypeError, ValueError, RuntimeError) as e:  # a config field of the wrong type or range
        raise InputError(f"{path}: its config is not one this digitrec can build ({_first_line(e)})") from None
    # a temperature is optional: files from before calibration load with temperature 1
    missing = [k for k in expected if k not in tensors and not _is_temperature(k)]
    unexpected = [k for k in tensors if k not in expected]
    reshaped = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {what} (first: {keys[0]!r})" for keys, what in
                    ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if keys]
        raise InputError(f"{path}: its tensors do not fit the {cfg.model!r} model its config describes: "
                         + ", ".join(problems))
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise InputError(f"{path}: tensor {bad!r} holds NaN or infinite values; the file is damaged")
    cold = next((k for k, v in tensors.items() if _is_temperature(k) and not (v > 0).all()), None)
    if cold is not None:
        raise InputError(f"{path}: tensor {cold!r} is not a positive temperature; the file is damaged")
    model = build()
    model.load_state_dict(tensors)
    return model.eval(), cfg, meta


def _is_temperature(key: str) -> bool:
    return key == "temperature" or key.endswith(".temperature")


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
    run's generator and the runtime device's), the fp16 grad scaler, and `state` (JSON values, and
    tensors stored as `state.<key>`). Saved on the CPU."""
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
    tensors |= {f"state.{k}": v for k, v in state.items() if torch.is_tensor(v)}
    meta = {
        "state": {k: v for k, v in state.items() if not torch.is_tensor(v)},
        "optimizer_param_groups": optim_state["param_groups"],
        "optimizer_scalars": optim_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
    }
    _write_safetensors(path, tensors, meta)


CHECKPOINT_META = ("state", "optimizer_param_groups", "optimizer_scalars", "scheduler")


def load_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator,
                    runtime=None, scaler: torch.amp.GradScaler | None = None) -> dict:
    """Restore what save_checkpoint wrote, in place; returns the saved `state` dict. A checkpoint
    from another device restores all but that device's RNG; one from an fp16 run restores the scaler.

    Anything but a checkpoint of this model (truncated, garbled, another project's safetensors file,
    a weights file, another model's checkpoint) raises InputError naming the file, before anything
    is restored.
    """
    tensors, meta = _read_safetensors(path)
    missing = [k for k in CHECKPOINT_META if k not in meta] + [k for k in ("rng.torch", "rng.generator")
                                                               if k not in tensors]
    if missing or not isinstance(meta.get("state"), dict):
        raise InputError(f"{path}: not a digitrec checkpoint (no {(missing or ['state'])[0]!r} in it)")
    expected = model.state_dict()
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    misfits = [k for k in expected if k not in weights or weights[k].shape != expected[k].shape]
    misfits += [k for k in weights if k not in expected]
    if misfits:
        raise InputError(f"{path}: its weights do not fit this run's model ({len(misfits)} tensors missing, "
                         f"unexpected or of another shape, first: {misfits[0]!r})")
    try:
        model.load_state_dict(weights)
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
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:  # metadata of the wrong shape
        raise InputError(f"{path}: a damaged or foreign checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    return meta["state"] | {k[6:]: v for k, v in tensors.items() if k.startswith("state.")}
