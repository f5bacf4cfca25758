"""`digitrec tune` with real parts: Optuna on the default SQLite file and on a PostgreSQL server this
module starts (Debian's binaries, a temporary data folder, a loopback port), real worker processes,
one of them killed mid-trial; pruning; space files; --show; the best recipe trained again.

Every trial trains `fast` at width 8 on 600 MNIST images (540 train, 60 validation) for 2-3 epochs,
one thread: a second or two each."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from digitrec.cli import main
from digitrec.core.config import load_recipe, make_config
from digitrec.core.rundir import CHECKPOINT, METRICS, WEIGHTS, Run
from digitrec.training import tune
from digitrec.training.runtime import resolve
from digitrec.core.config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
DIGITREC = [sys.executable, "-m", "digitrec"]
TINY = ["--preset", "fast", "--width", "8", "--epochs", "2", "--no-tta", "--threads", "1", "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _digitrec(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(DIGITREC + list(args), capture_output=True, text=True, env=_env(), timeout=timeout)


@pytest.fixture(scope="module")
def tiny(mnist_train):
    return mnist_train.subset(np.arange(600), "mnist:train[:600]")


@pytest.fixture(scope="module")
def tiny_csv(tiny, tmp_path_factory) -> Path:
    """The same 600 images as a Kaggle train.csv, for the command line."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    frame = pd.DataFrame(tiny.images.reshape(len(tiny), -1), columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", tiny.labels)
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------
# a PostgreSQL server of our own


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    assert found, f"{name} missing: install Debian's postgresql (make test does: apt-get install postgresql)"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a loopback port, its data in a fresh temporary folder; stopped and
    removed afterwards. initdb refuses root: as root, the server runs as the `postgres` user."""
    folder = Path(tempfile.mkdtemp(prefix="digitrec-pg-"))
    as_user = []
    if os.getuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, text=True, timeout=120)
    run(_pg_binary("initdb"), "-D", str(data), "-U", "digitrec", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(_pg_binary("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg2://digitrec@127.0.0.1:{port}/postgres"
    finally:
        run(_pg_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# space files and budgets: one error line, exit 2, before any data is read


@pytest.mark.parametrize("content, message", [
    ({"lr": {"range": [0.01, 0.5], "log": True}, "dropout": {"range": [0, 0.5]}}, "unknown field 'dropout'"),
    ({"threads": {"range": [1, 4]}}, "threads is a runtime setting"),
    ({"lr": {"range": [0.5, 0.01]}}, "range [0.5, 0.01] is empty"),
    ({"lr": {"range": [0, 0.5], "log": True}}, "a log-scaled range must be above 0"),
    ({"lr": {"range": [0.01]}}, "range must be [low, high]"),
    ({"batch_size": {"range": [32.5, 256]}}, "range must be [low, high], two ints"),
    ({"batch_size": {"type": "float", "range": [32, 256]}}, "batch_size holds ints; type float does not fit it"),
    ({"val_fraction": {"range": [0.1, 0.2]}}, "val_fraction cannot be searched"),
    ({"seed": {"choices": [0, 1]}}, "seed cannot be searched"),
    ({"label_smoothing": {"range": [0.0, 1.5]}}, "label_smoothing = 1.5 is not a valid recipe"),
    ({"optimizer": {"choices": ["sgd", "adam"]}}, "optimizer = 'adam' is not a valid recipe"),
    ({"optimizer": {"choices": []}}, "choices must be a non-empty list"),
    ({"lr": {"range": [0.01, 0.5], "step": 0.01}}, "unknown key(s) step"),
    ({"lr": {"range": [0.01, 0.5]}, "momentum": {"range": [0.8, 0.9]}}, "momentum is both fixed (--momentum)"),
    ([1, 2], "a search space is a mapping"),
])
def test_a_bad_space_file_is_one_error_line(tmp_path, capsys, content, message):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(content))
    assert main(["tune", "--preset", "fast", "--momentum", "0.9", "--space", str(space),
                 "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "study").exists()


def test_space_files_in_yaml(tmp_path, capsys):
    good = tmp_path / "space.yaml"
    good.write_text("lr: {range: [0.01, 0.5], log: true}\nbatch_size: {choices: [64, 128]}\ndeskew: {}\n")
    space = tune.load_space(good)
    assert [p.describe() for p in space] == ["lr: float in [0.01, 0.5], log scale", "batch_size: one of 64, 128",
                                             "deskew: one of false, true"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {range: [0.01, 0.5]\n")
    assert main(["tune", "--space", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not valid YAML") and err.count("\n") == 1


@pytest.mark.parametrize("text, expected", [("20", (20, None)), ("90s", (None, 90.0)), ("30m", (None, 1800.0)),
                                            ("2h", (None, 7200.0)), ("1.5min", (None, 90.0))])
def test_budget_in_trials_or_time(text, expected):
    assert tune.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "ten", "5d", "0m"])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(tune.InputError, match="a number of trials"):
        tune.parse_budget(text)


def test_the_presets_get_a_validation_split_and_the_default_spaces_fit_them():
    for preset in ("seed", "fast", "best"):
        base, note = tune.tuning_recipe(make_config(preset))
        assert base.val_fraction > 0
        assert (note is None) == (make_config(preset).val_fraction > 0)
        tune.check_space(tune.default_space(base), base)  # every range end makes a valid recipe
        for param in tune.default_space(base):  # the preset's own value lies inside its range
            value = getattr(base, param.field)
            assert value in param.choices if param.kind == "categorical" else param.low <= value <= param.high


# ---------------------------------------------------------------------------------------------
# studies


@pytest.mark.slow
def test_pruning_stops_trials_behind_the_median(tiny, tmp_path):
    """Three good learning rates finish; then two hopeless ones are stopped before their last epoch,
    their folders left with a checkpoint (resumable) and no model."""
    base, _ = tune.tuning_recipe(make_config("fast", width=8, epochs=3, batch_size=32, tta=False))
    space = (tune.Param("lr", "categorical", choices=(0.2, 1e-6)),)
    study = tune.Study("prune", tmp_path / "prune", base, space, budget_trials=5)
    opened = tune.open_study(study, tiny)
    for lr in (0.2, 0.2, 0.2, 1e-6, 1e-6):
        opened.enqueue_trial({"lr": lr})
    ran = tune.run_worker(study, tiny, resolve(RuntimeConfig(device="cpu", threads=1)), quiet=True)
    assert ran == 5
    trials = opened.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"] * 2
    for t in trials[3:]:
        run = Run(t.user_attrs["run_dir"])
        epochs = t.user_attrs["pruned_at"]["epoch"]
        assert epochs < 3 and list(t.intermediate_values) == list(range(1, epochs + 1))
        assert run.has(CHECKPOINT) and not run.has(WEIGHTS) and len(run.history()) == epochs
    assert all(Run(t.user_attrs["run_dir"]).has(METRICS) for t in trials[:3])


@pytest.fixture(scope="module")
def sqlite_study(tiny_csv, tmp_path_factory):
    """A 4-trial study on the default storage, from the command line."""
    out = tmp_path_factory.mktemp("studies") / "fast"
    done = _digitrec("tune", "--train", str(tiny_csv), *TINY, "--budget", "4", "--sampler-seed", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


@pytest.mark.slow
def test_the_default_storage_is_an_sqlite_file_in_the_study_folder(sqlite_study):
    out, stdout = sqlite_study
    assert "note: the objective needs a validation split: 10% of the training images" in stdout
    assert (out / tune.STUDY_DB).is_file() and (out / "study.json").is_file()
    opened = tune.load_study("fast", f"sqlite:///{out / tune.STUDY_DB}")
    trials = opened.get_trials()
    assert len(trials) == 4 and tune.finished_trials(opened) == 4
    for t in trials:  # each trial is an ordinary run folder under the study's
        run = Run(t.user_attrs["run_dir"])
        assert run.path.parent == out and run.path.name == f"trial-{t.number:04d}"
        assert run.config()["val_fraction"] == 0.1 and run.verify() == []
        if t.state.name == "COMPLETE":
            assert t.value == run.metrics()["val_accuracy"]
    assert "study fast: 4 trials" in stdout and "best: trial" in stdout


@pytest.mark.slow
def test_show_prints_the_leaderboard_and_importances(sqlite_study):
    out, _ = sqlite_study
    done = _digitrec("tune", "--show", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("study fast: 4 trials") and "objective: validation accuracy (maximize)" in lines[0]
    header = lines[1].split()
    assert header[:5] == ["trial", "state", "value", "epochs", "seconds"] and "lr" in header
    values = [float(line.split()[2]) for line in lines[2:6] if line.split()[1] == "complete"]
    assert values == sorted(values, reverse=True)  # the best first
    assert "parameter importances" in done.stdout and f"best recipe: {out / tune.BEST_RECIPE}" in done.stdout
    assert (out / tune.LEADERBOARD).is_file()


@pytest.mark.slow
def test_the_best_recipe_trains_as_is(sqlite_study, tiny_csv, tiny, tmp_path):
    """best_recipe.json through `digitrec train --recipe` gives the best trial's model again, to the
    bit on the CPU; DigitClassifier(recipe=...) reads the same recipe."""
    import digitrec as dr

    out, _ = sqlite_study
    opened = tune.load_study("fast", f"sqlite:///{out / tune.STUDY_DB}")
    recipe = load_recipe(out / tune.BEST_RECIPE)
    assert recipe.to_dict() == Run(opened.best_trial.user_attrs["run_dir"]).config()
    done = _digitrec("train", "--recipe", str(out / tune.BEST_RECIPE), "--train", str(tiny_csv), "--threads", "1",
                     "--quiet", "--out", str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr
    assert Run(tmp_path / "again").metrics()["val_accuracy"] == opened.best_value
    clf = dr.DigitClassifier(recipe=out / tune.BEST_RECIPE, epochs=1, verbose=False, out=tmp_path / "api").fit(tiny)
    assert clf.config_.to_dict() == {**recipe.to_dict(), "epochs": 1}
    # a flag on top of the recipe; the preset is the recipe's to say
    done = _digitrec("train", "--recipe", str(out / tune.BEST_RECIPE), "--preset", "fast", "--train", str(tiny_csv))
    assert done.returncode == 2 and done.stderr == "error: --recipe FILE holds the whole recipe, its preset too: drop --preset\n"
    (tmp_path / "bad.json").write_text('{"lr": 0.1, "dropout": 0.5}')
    done = _digitrec("train", "--recipe", str(tmp_path / "bad.json"), "--train", str(tiny_csv))
    assert done.returncode == 2 and done.stderr == f"error: {tmp_path / 'bad.json'}: unknown config field(s): dropout\n"


@pytest.mark.slow
def test_a_study_is_refused_other_settings_under_its_name(sqlite_study, tiny_csv):
    out, _ = sqlite_study
    done = _digitrec("tune", "--train", str(tiny_csv), *TINY, "--objective", "nll", "--budget", "4", "--out", str(out))
    assert done.returncode == 2 and "was started with another objective" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(postgres, tiny_csv, tmp_path):
    done = _digitrec("tune", "--train", str(tiny_csv), *TINY, "--storage", postgres, "--study", "shared",
                     "--workers", "2", "--budget", "6", "--out", str(tmp_path / "shared"))
    assert done.returncode == 0, done.stderr
    assert "storage postgresql+psycopg2://digitrec@127.0.0.1" in done.stdout
    assert not (tmp_path / "shared" / tune.STUDY_DB).exists()
    opened = tune.load_study("shared", postgres)
    trials = opened.get_trials()
    finished = tune.finished_trials(opened)
    # the workers check the count, then start: both may start when one trial is left (at most one over)
    assert 6 <= finished <= 7 and len(trials) <= 7
    # both workers ran trials (with a budget of 4, a worker slow to start on a busy machine found the
    # study done by the other)
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert (tmp_path / "shared" / tune.BEST_RECIPE).is_file()
    shown = _digitrec("tune", "--show", "shared", "--storage", postgres)
    # a trial may be pruned: the median pruner compares trials that run side by side
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    assert shown.returncode == 0 and shown.stdout.startswith(f"study shared: {len(trials)} trials ({complete} complete")


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_and_the_study_finishes(postgres, tiny_csv, tmp_path):
    """SIGKILL one of two workers once its trial reported an epoch: its heartbeat stops, the other
    worker marks the trial failed, runs the queued retry from the dead trial's checkpoint, and the
    study ends with its budget."""
    epochs = 8
    args = ["tune", "--train", str(tiny_csv), *TINY, "--epochs", str(epochs), "--storage", postgres,
            "--study", "killed", "--workers", "2", "--budget", "3", "--heartbeat", "1", "--out", str(tmp_path / "killed")]
    launcher = subprocess.Popen(DIGITREC + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    killed, deadline = None, time.monotonic() + 180
    while killed is None and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.1)
        try:
            running = [t for t in tune.load_study("killed", postgres).get_trials()
                       if t.state.name == "RUNNING" and 1 <= len(t.intermediate_values) <= epochs - 3]
        except tune.InputError:  # not created yet
            continue
        if running:  # 3 epochs or more to go: the trial is still running when the signal lands
            killed = running[0].user_attrs["pid"]
            os.kill(killed, signal.SIGKILL)
    assert killed is not None, "no trial reached an epoch"
    stdout, stderr = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, stderr
    assert "warning: worker " in stderr and "was killed by SIGKILL; a trial it left running was retried" in stderr
    opened = tune.load_study("killed", postgres)
    trials = {t.number: t for t in opened.get_trials()}
    # the trial the worker was running when it died: the one it left failed
    failed = [t for t in trials.values() if t.user_attrs.get("pid") == killed and t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].intermediate_values
    victim = failed[0]
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    assert retries[0].params == victim.params and retries[0].user_attrs["run_dir"] == victim.user_attrs["run_dir"]
    assert tune.finished_trials(opened) == 3
    # the retry went on from the dead trial's last checkpoint, in its folder (the victim had reported
    # an epoch, so it had written that epoch's checkpoint)
    assert retries[0].user_attrs["resumed_after_epoch"] >= 1
    assert len(Run(victim.user_attrs["run_dir"]).history()) == max(retries[0].intermediate_values)


@pytest.mark.slow
def test_trials_that_cannot_train_fail_and_a_worker_stops_after_three(tiny, tmp_path):
    base, _ = tune.tuning_recipe(make_config("fast", width=8, epochs=1, batch_size=32, tta=False))
    study = tune.Study("diverge", tmp_path / "diverge", base, (tune.Param("lr", "float", 1e5, 1e6, log=True),),
                       budget_trials=5)
    with pytest.raises(tune.InputError, match=r"3 trials in a row failed in this worker; the last: .*"
                                              r"the training loss became nan"):
        tune.run_worker(study, tiny, resolve(RuntimeConfig(device="cpu", threads=1)), quiet=True)
    trials = tune.load_study("diverge", study.storage_url).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] * 3


@pytest.mark.parametrize("args, message", [
    (["--show", "{tmp}/nothing"], "{tmp}/nothing: no study folder"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--budget", "soon"], "--budget 'soon': a number of trials"),
    (["--preset", "fast", "--recipe", "{tmp}/r.json"], "--recipe FILE holds the whole recipe"),
    (["--storage", "nosuchdb://x/y"], "storage nosuchdb://x/y: cannot be opened"),
])
def test_tune_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    (tmp_path / "r.json").write_text(json.dumps(make_config("fast").to_dict()))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["tune", "--out", str(tmp_path / "study"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message.replace("{tmp}", str(tmp_path)) in err, err


@pytest.mark.slow
def test_a_time_budget_starts_no_trial_after_it(tiny, tmp_path):
    base, _ = tune.tuning_recipe(make_config("fast", width=8, epochs=1, batch_size=32, tta=False))
    study = tune.Study("timed", tmp_path / "timed", base, tune.default_space(base), budget_trials=None,
                       budget_seconds=0.5)
    ran = tune.run_worker(study, tiny, resolve(RuntimeConfig(device="cpu", threads=1)), quiet=True)
    trials = tune.load_study("timed", study.storage_url).get_trials()
    assert ran == len(trials) >= 1 and all(t.state.name == "COMPLETE" for t in trials)
    starts = [t.datetime_start for t in trials]  # the first starts as the clock does, the others before 0.5 s
    assert (max(starts) - min(starts)).total_seconds() < 0.5
