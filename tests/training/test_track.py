"""`--track mlflow` with a real MLflow: a local SQLite tracking store under a temporary folder, found
through MLFLOW_TRACKING_URI as a user sets it, read back with mlflow.search_runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow  # each test starts digitrec and MLflow's store in a subprocess

ROOT = Path(__file__).resolve().parents[2]
DIGITREC = [sys.executable, "-m", "digitrec"]
TINY = ["--preset", "fast", "--width", "8", "--epochs", "2", "--no-tta", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The tracking store's URI; its folder is the commands' working directory, where MLflow puts
    the artifacts of a database store by default (./mlruns)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tiny_csv(mnist_train, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    frame = pd.DataFrame(mnist_train.images[:600].reshape(600, -1), columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", mnist_train.labels[:600])
    frame.to_csv(path, index=False)
    return path


def _digitrec(store: str, *args: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store,
           "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(ROOT / "src")) if p)}
    cwd = Path(store.removeprefix("sqlite:///")).parent
    return subprocess.run(DIGITREC + list(args), capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def _runs(store: str, filter_string: str = ""):
    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=["digitrec"], filter_string=filter_string)


@pytest.fixture(scope="module")
def tracked_train(store, tiny_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tracked"
    done = _digitrec(store, "train", "--train", str(tiny_csv), *TINY, "--val-fraction", "0.1", "--track", "mlflow",
                     "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_a_tracked_train_is_an_mlflow_run(store, tracked_train):
    from digitrec.core.rundir import Run

    runs = _runs(store, f"tags.`digitrec.run_dir` = '{tracked_train.resolve()}'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "tracked"
    assert run["artifact_uri"].startswith(str(Path(store.removeprefix("sqlite:///")).parent / "mlruns"))
    assert run["tags.digitrec.command"] == "train"
    config = Run(tracked_train).config()
    for field in ("lr", "width", "epochs", "optimizer", "val_fraction"):  # the resolved recipe
        assert run[f"params.{field}"] == str(config[field])
    assert run["params.runtime.threads"] == "1" and run["params.runtime.device"] == "cpu"
    assert run["metrics.val_accuracy"] == Run(tracked_train).metrics()["val_accuracy"]
    assert 0 <= run["metrics.val_nll"] and "metrics.val_ece" in runs.columns

    client = mlflow.tracking.MlflowClient(store)
    history = Run(tracked_train).history()
    val_acc = client.get_metric_history(run["run_id"], "val_acc")
    assert [(m.step, m.value) for m in sorted(val_acc, key=lambda m: m.step)] == \
        [(int(row["epoch"]), row["val_acc"]) for row in history]
    assert [m.step for m in client.get_metric_history(run["run_id"], "lr")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"model.safetensors", "config.json", "metrics.json", "history.csv", "report.html"} <= artifacts
    assert "checkpoint.safetensors" not in artifacts


def test_a_tracked_study_nests_its_trials(store, tiny_csv, tmp_path):
    done = _digitrec(store, "tune", "--train", str(tiny_csv), *TINY, "--budget", "2", "--study", "nested",
                     "--track", "mlflow", "--out", str(tmp_path / "nested"))
    assert done.returncode == 0, done.stderr
    studies = _runs(store, "tags.`digitrec.command` = 'tune' and tags.`digitrec.study` = 'nested'")
    assert len(studies) == 1 and studies.iloc[0]["status"] == "FINISHED"
    parent = studies.iloc[0]["run_id"]
    trials = _runs(store, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(trials) == 2 and set(trials["tags.digitrec.trial"]) == {"0", "1"}
    assert set(trials["params.val_fraction"]) == {"0.1"} and "params.searched.lr" in trials.columns
    assert studies.iloc[0]["metrics.best_val_accuracy"] == trials["metrics.val_accuracy"].max()
    client = mlflow.tracking.MlflowClient(store)
    assert "best_recipe.json" in {a.path for a in client.list_artifacts(parent)}


def test_without_mlflow_the_extra_is_named_in_one_line(store, tiny_csv, tmp_path):
    blocker = tmp_path / "blocked" / "mlflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n")
    done = _digitrec(store, "train", "--train", str(tiny_csv), *TINY, "--val-fraction", "0.1", "--track", "mlflow",
                     "--out", str(tmp_path / "run"), pythonpath=str(tmp_path / "blocked"))
    assert done.returncode == 2
    assert done.stderr == ("error: digitrec train needs mlflow, from the 'track' extra: "
                           "pip install 'digitrec[track]'\n")
