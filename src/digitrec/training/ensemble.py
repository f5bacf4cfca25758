"""Ensembles: several finished runs voting by averaged probabilities (nets/model.Ensemble).

`train_ensemble` trains the members of one recipe (in parallel, one per rank, under torchrun), each
a run folder of its own (member-<i>/), and `combine_runs` makes finished runs one ensemble run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch

from ..core.config import RuntimeConfig, TrainConfig, config_from_dict
from ..core.data import Digits
from ..core.files import InputError
from ..core.rundir import CHECKPOINT, CONFIG, MEMBER_PREFIX, METRICS, WEIGHTS, Run
from ..nets.model import Ensemble, count_parameters
from ..nets.predict import fit_model_temperature
from ..nets.weights import environment, load_run_model, save_weights
from . import distributed
from .distill import check_teacher
from .runtime import Runtime, resolve
from .train import StopRequest, check_same_config, fit, locked_run


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
    out = Run(out_dir)
    if (out / WEIGHTS).exists() or (out / CHECKPOINT).exists():
        raise InputError(f"{out_dir}: already holds a run; choose another output directory")
    members, configs, member_metrics, seen = [], [], [], set()
    for run_dir in run_dirs:
        if run_dir.resolve() in seen:
            raise InputError(f"{run_dir}: given twice")
        seen.add(run_dir.resolve())
        model, cfg, meta = load_run_model(run_dir)
        if "members" in meta:
            raise InputError(f"{run_dir}: is an ensemble already; combine its members instead")
        Run(run_dir).require(METRICS)
        members.append(model)
        configs.append(cfg)
        member_metrics.append(Run(run_dir).metrics())
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
        metrics["calibration"] = {"on": "members' shared calibration hold-out",
                                  **fit_model_temperature(ensemble, held_out)}
    out.write_json(CONFIG, configs[0].to_dict())
    out.write_json(METRICS, metrics)
    # the weights last: a run counts as finished once they exist
    member_val_accuracies = [row["val_accuracy"] for row in metrics["members"]]
    save_weights(out, ensemble, configs[0],
                 {"members": [cfg.to_dict() for cfg in configs],
                  "metrics": {"data": metrics["data"], "member_val_accuracies": member_val_accuracies,
                              "calibration": metrics.get("calibration")}})
    return metrics


def _shared_calibration_set(run_dirs: list[Path]) -> Digits | None:
    """The calibration hold-out every member left out of its training (members of one `--ensemble`
    share it: the same calibration_seed), on which the ensemble fits its own temperature; None if
    any member lacks one or they differ."""
    records = [Run(run_dir).predictions("calibration") for run_dir in run_dirs]
    if any(record is None for record in records):
        return None
    first = records[0]
    if any(not np.array_equal(r.ids, first.ids) or not np.array_equal(r.images, first.images) for r in records):
        return None
    return Digits(first.images, first.y_true, first.ids, "calibration hold-out")


def check_ensemble_start(cfg: TrainConfig, out_dir: str | os.PathLike, size: int, resume: bool) -> None:
    """What can be wrong before an ensemble starts, read-only (the members check their own runs)."""
    run = Run(out_dir)
    if size < 2:
        raise InputError(f"an ensemble needs at least 2 members, got {size}")
    check_teacher(cfg, out_dir)
    if resume:
        if not run.has(CONFIG):
            raise InputError(f"{out_dir}: nothing to resume (no {CONFIG})")
        check_same_config(run, cfg)
        if run.has(WEIGHTS):
            finished = len(run.metrics()["members"])
            if finished != size:
                raise InputError(f"{out_dir}: holds a finished ensemble of {finished}, not {size}")
    elif (run / CONFIG).exists() or (run / WEIGHTS).exists():
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
    out_dir, run = Path(out_dir), Run(out_dir)
    # rank 0 locks the ensemble's folder, as for one run; each member's fit locks its member folder
    with locked_run(rt, run, lambda: check_ensemble_start(cfg, out_dir, size, resume)):
        finished = torch.tensor(int(rt.is_main and resume and run.has(WEIGHTS)), device=rt.device)
        if distributed.broadcast_from_main(rt, finished).item():
            return run.metrics() if rt.is_main else {}
        if rt.is_main and not resume:
            run.write_json(CONFIG, cfg.to_dict())
        member_rt = dataclasses.replace(rt, rank=0, world_size=1)  # each member is a run of its own
        mine = [train_member(cfg, i, size, data, out_dir, resume, quiet or not rt.is_main, member_rt, stop)
                for i in range(rt.rank, size, rt.world_size)]
        distributed.gather_files(rt, out_dir, [str(path.relative_to(out_dir)) for member_dir in mine
                                               for path in sorted(member_dir.iterdir()) if path.is_file()])
        if not rt.is_main:
            return {}
        return combine_runs([out_dir / f"{MEMBER_PREFIX}{i}" for i in range(size)], out_dir)


def train_member(cfg: TrainConfig, index: int, size: int, data: Digits, out_dir: Path, resume: bool = False,
                 quiet: bool = False, runtime: Runtime | None = None, stop: StopRequest | None = None) -> Path:
    """Member `index` of an ensemble of `size` in out_dir/member-<index>/. A finished member (of the
    same config) is kept; with `resume`, a member with a checkpoint continues from it."""
    member_dir, member_cfg = out_dir / f"{MEMBER_PREFIX}{index}", member_config(cfg, index)
    member = Run(member_dir)
    if member.is_finished():
        saved = config_from_dict(member.config())
        if saved != member_cfg:
            raise InputError(f"{member_dir}: finished with another config than member {index} of this ensemble")
        if member.metrics().get("data_sha256", data.sha256) != data.sha256:
            raise InputError(f"{member_dir}: finished on other data than {data.source}")
        if not quiet:
            print(f"member {index + 1}/{size}: finished already ({member_dir})")
        return member_dir
    if not quiet:
        deskew = ", deskewed inputs" if member_cfg.deskew else ""
        print(f"member {index + 1}/{size}: seed {member_cfg.seed}, val_seed {member_cfg.val_seed}{deskew}")
    fit(member_cfg, data, member_dir, resume=resume and member.has(CHECKPOINT), quiet=quiet,
        runtime=runtime, stop=stop)
    return member_dir
