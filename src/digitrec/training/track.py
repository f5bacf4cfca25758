"""Experiment tracking: `--track mlflow` on train, run and tune.

One MLflow run per digitrec run: the resolved recipe and the runtime as parameters, each epoch's
history row as metrics at step = epoch, the final validation (and test, once evaluated) scores, and
the run folder's files (model, report, records) as artifacts. A study is one MLflow run, its trials
nested runs of it (the `mlflow.parentRunId` tag), from any process or machine that shares the
tracking store. MLflow's own settings decide where runs go: MLFLOW_TRACKING_URI (default: its
local store, ./mlflow.db) and MLFLOW_EXPERIMENT_NAME (default: EXPERIMENT).

mlflow is the optional extra `digitrec[track]`, imported only when tracking is asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from ..core.config import TrainConfig
from ..core.files import LOCK_FILE, TEMP_SUFFIX
from ..core.rundir import CHECKPOINT, MANIFEST, Run, evaluation_file

TRACKERS = ("mlflow",)
EXPERIMENT = "digitrec"
# files a run folder holds that are not worth a copy in the tracking store: the resume state (the
# model is in model.safetensors) and bookkeeping
NOT_ARTIFACTS = (CHECKPOINT, MANIFEST, LOCK_FILE)


def params_of(cfg: TrainConfig, runtime: dict) -> dict:
    """The parameters a run is logged with: every recipe field, and the runtime's as runtime.*."""
    return cfg.to_dict() | {f"runtime.{k}": v for k, v in runtime.items()}


def _experiment_id(client) -> str:
    from mlflow.exceptions import MlflowException  # mlflow: only when tracking

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another worker created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


class MlflowRun:
    """One MLflow run, written through MlflowClient (no process-wide active run: several can be open)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.logged_epochs: set[int] = set()

    @classmethod
    def start(cls, name: str, params: dict, parent_id: str | None = None, tags: dict | None = None) -> "MlflowRun":
        from mlflow.entities import Param  # mlflow: only when tracking
        from mlflow.tracking import MlflowClient  # mlflow: only when tracking

        client = MlflowClient()  # MLFLOW_TRACKING_URI, or MLflow's default local store
        tags = dict(tags or {})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = client.create_run(_experiment_id(client), run_name=name, tags=tags)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return cls(client, run.info.run_id)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric  # mlflow: only when tracking

        now = _now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_epoch(self, row: dict) -> None:
        """One history row (history.csv's columns) at step = its epoch."""
        epoch = int(row["epoch"])
        if epoch in self.logged_epochs:
            return
        self.log_metrics({("epoch_seconds" if k == "seconds" else k): v for k, v in row.items() if k != "epoch"},
                         step=epoch)
        self.logged_epochs.add(epoch)

    def epoch_hook(self, run_dir: str | os.PathLike) -> Callable:
        """An `on_epoch(epoch, model)` for train.fit: logs the epoch's row of the run's history."""
        run = Run(run_dir)
        return lambda epoch, model: self.log_epoch(run.history()[-1])

    def log_run(self, run_dir: str | os.PathLike) -> None:
        """What a finished run folder holds: history rows not logged yet, its final scores, its files."""
        run = Run(run_dir)
        for row in run.history():
            self.log_epoch(row)
        metrics = run.metrics()
        final = {k: metrics.get(k) for k in ("val_accuracy", "train_seconds", "images_per_second", "parameters")}
        for name in ("val", "test"):
            if run.has(evaluation_file(name)):
                evaluation = run.read_json(evaluation_file(name))
                final |= {f"{name}_accuracy": evaluation["accuracy"], f"{name}_nll": evaluation["loss"],
                          f"{name}_ece": evaluation["ece"], f"{name}_errors": evaluation["errors"]}
        for i, member in enumerate(metrics.get("members", [])):
            final[f"member{i}_val_accuracy"] = member.get("val_accuracy")
        self.log_metrics({k: v for k, v in final.items() if v is not None}, step=len(run.history()))
        self.log_files(run.path)

    def log_files(self, folder: Path, artifact_path: str | None = None) -> None:
        for path in sorted(Path(folder).rglob("*")):
            if (path.is_file() and path.name not in NOT_ARTIFACTS and not path.name.endswith(TEMP_SUFFIX)
                    and not path.name.startswith(".")):
                sub = path.parent.relative_to(folder).as_posix()
                where = "/".join(p for p in (artifact_path, None if sub == "." else sub) if p)
                self.client.log_artifact(self.run_id, str(path), where or None)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def tracked(kind: str | None, name: str, params: dict, parent_id: str | None = None,
            tags: dict | None = None) -> Iterator[MlflowRun | None]:
    """An MLflow run for the block (None when `kind` is None), ended FINISHED, or KILLED/FAILED when
    the block raises (a pruned trial is KILLED, with its state in a tag)."""
    if kind is None:
        yield None
        return
    if kind not in TRACKERS:
        raise ValueError(f"--track must be one of {', '.join(TRACKERS)}")
    run = MlflowRun.start(name, params, parent_id, tags)
    try:
        yield run
    except (KeyboardInterrupt, Exception) as e:
        run.end("KILLED" if isinstance(e, KeyboardInterrupt) or type(e).__name__ == "TrialPruned" else "FAILED")
        raise
    run.end("FINISHED")
