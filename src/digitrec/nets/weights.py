"""Self-describing weights in safetensors: tensors in the file, everything else as JSON metadata.

Nothing is pickled. A run's `model.safetensors` carries the weights plus the config that rebuilds
the model (and, for an ensemble, each member's); `load_run_model` reads it through the run folder,
which checks it against its digest. training/checkpoint.py stores the training state the same way.
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

from ..core.config import TrainConfig, config_from_dict
from ..core.files import InputError, first_line
from ..core.rundir import WEIGHTS, Run
from .model import Ensemble, build_model
from .temperature import is_temperature


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


def safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    """A safetensors file's bytes: the tensors (on the CPU) and `meta`, each value as JSON."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return st_save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()})


def read_safetensors(blob: bytes, where: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON metadata of a safetensors file's bytes; InputError naming `where` if they are
    anything else."""
    try:
        header_size = int.from_bytes(blob[:8], "little")
        raw_meta = json.loads(blob[8:8 + header_size]).get("__metadata__") or {}
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{where}: not a readable safetensors file ({first_line(e)})") from None
    return tensors, {key: _json_or_text(value) for key, value in raw_meta.items()}


def _json_or_text(value: str):
    """digitrec writes every metadata value as JSON; other projects' files hold plain text (`"format": "pt"`)."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def weights_bytes(model: torch.nn.Module, cfg: TrainConfig, extra: dict | None = None) -> bytes:
    """model.safetensors's bytes: the state dict, the config that rebuilds it, the environment."""
    meta = {"config": cfg.to_dict(), "environment": environment(), **(extra or {})}
    return safetensors_bytes(model.state_dict(), meta)


def save_weights(run: Run, model: torch.nn.Module, cfg: TrainConfig, extra: dict | None = None) -> None:
    run.write_bytes(WEIGHTS, weights_bytes(model, cfg, extra))


def load_weights(path: str | os.PathLike) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """A weights file outside a run folder (no digest to check); see weights_from_bytes."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    return weights_from_bytes(Path(path).read_bytes(), path)


def weights_from_bytes(blob: bytes, path: str | os.PathLike) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild a model from its weights file alone; returns (model in eval mode, config, metadata).

    Anything but a digitrec weights file (truncated, garbled, another project's, another model's
    weights) raises InputError naming the file. The model is first built on the meta device, where
    it costs no memory, and its shapes compared with the file's tensors: metadata describing a huge
    model is refused before anything is allocated.
    """
    tensors, meta = read_safetensors(blob, path)
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
        raise InputError(f"{path}: its config is not one this digitrec can build ({first_line(e)})") from None
    # a temperature is optional: files from before calibration load with temperature 1
    missing = [k for k in expected if k not in tensors and not is_temperature(k)]
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
    cold = next((k for k, v in tensors.items() if is_temperature(k) and not (v > 0).all()), None)
    if cold is not None:
        raise InputError(f"{path}: tensor {cold!r} is not a positive temperature; the file is damaged")
    model = build()
    model.load_state_dict(tensors)
    return model.eval(), cfg, meta


def load_run_model(run_dir: str | os.PathLike) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """The model of a finished run (in eval mode), its config and its weights file's metadata; the
    file is checked against the run's manifest first."""
    run = Run(run_dir)
    run.require(WEIGHTS)
    return weights_from_bytes(run.read_bytes(WEIGHTS), run / WEIGHTS)
