"""Hyperparameter search: `digitrec tune`, on Optuna.

A study searches fields of TrainConfig around a base recipe (a preset with any fixed overrides). Each
trial is an ordinary run folder (core/rundir.py) under the study's folder, trained by `train.fit`;
after every epoch its validation score is reported to Optuna, whose pruner may stop the trial there
(its folder keeps the checkpoint). The objective is the validation split's accuracy, or its loss
(NLL): never the test set. A base recipe that holds out no validation images (the presets `fast` and
`best` train on all of them) is given `TUNE_VAL_FRACTION`, and the study says so.

Storage: an SQLite file in the study folder by default, or any database URL (PostgreSQL) that
several processes and machines share. Every worker runs the same loop (`run_worker`) on the storage
until the study holds its budget of finished trials; running the same command elsewhere with the same
storage and study name adds workers. A worker beats a heartbeat into the storage while it trains; a
worker that dies mid-trial stops beating, and the next worker to look marks that trial failed and
queues a copy (Optuna's RetryHeartbeatStaleTrialCallback), which resumes the dead trial's run folder from its
checkpoint when it runs on the same machine. Workers stay until the last trials are done so they can
take over one whose worker died.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..core.config import RUNTIME_FIELDS, TrainConfig, config_from_dict
from ..core.data import Digits
from ..core.files import InputError, atomic_write, first_line
from ..core.rundir import CHECKPOINT, Run
from . import track
from .runtime import Runtime
from .train import fit

STUDY_DB = "study.db"  # the default storage: an SQLite file in the study folder
BEST_RECIPE = "best_recipe.json"  # the best trial's recipe, for `digitrec train --recipe`
LEADERBOARD = "leaderboard.csv"
TRIAL_PREFIX = "trial-"  # trial-0007/: the run folder of trial 7 (and of its retries)
# the validation share a study holds out when the base recipe holds out none (`fast`, `best`): 6,000 of
# MNIST's 60,000 training images, the reference's split
TUNE_VAL_FRACTION = 0.1
OBJECTIVES = {  # name: (direction, the history column reported each epoch)
    "accuracy": ("maximize", "val_acc"),  # the final value: metrics.json's val_accuracy (as the report shows it)
    "nll": ("minimize", "val_loss"),  # the last epoch's validation loss, before the temperature
}
PRUNERS = ("median", "halving", "none")
# the median pruner waits for this many finished trials before it stops any: fewer makes early
# noise decide, more wastes small budgets
PRUNER_STARTUP_TRIALS = 3
HEARTBEAT_SECONDS = 30  # a worker's heartbeat; one silent for twice this is dead and its trial retried
MAX_RETRIES = 3  # retries of a trial whose worker died, before it stays failed
FAILS_IN_A_ROW = 3  # a worker whose trials fail this often in a row stops, naming the last error
WORKER_FLAG = "--worker"  # what `--workers N` adds to its own command for the processes it starts

# recipe fields a search may not move, and why
FIXED_FIELDS = {
    "preset": "it names the base recipe",
    "val_fraction": "the objective is measured on the validation split; set it with --val-fraction",
    "val_seed": "the objective is measured on the validation split; set it with --val-seed",
    "val_split": "the objective is measured on the validation split",
    "stratify": "the objective is measured on the validation split",
    "seed": "a search over seeds finds a lucky seed, not a better recipe",
    "shuffle_seed_offset": "a search over seeds finds a lucky seed, not a better recipe",
    "calibration_seed": "a search over seeds finds a lucky seed, not a better recipe",
}
_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range (log-scaled or not), or a list of choices."""
    field: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial):
        if self.kind == "float":
            return trial.suggest_float(self.field, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.field, list(self.choices))

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.field}: one of {', '.join(json.dumps(c) for c in self.choices)}"
        return f"{self.field}: {self.kind} in [{self.low:g}, {self.high:g}]{', log scale' if self.log else ''}"

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        return {"type": self.kind, "range": [self.low, self.high], "log": self.log}


def _float(field, low, high, log=False) -> Param:
    return Param(field, "float", low, high, log)


def _choices(field, *choices) -> Param:
    return Param(field, "categorical", choices=tuple(choices))


# Default search spaces, by the base recipe's network. Epochs and width stay the base recipe's: they
# set a trial's cost, which the budget is counted in. The ranges hold the presets' values inside.
AUGMENTATION_SPACE = (_float("rotation_deg", 0.0, 15.0), _float("zoom", 0.0, 0.2), _float("shift", 0.0, 0.2))
DEFAULT_SPACES: dict[str, tuple[Param, ...]] = {
    # the reference's RMSprop and plateau schedule (preset seed)
    "reference": (_float("lr", 2e-4, 3e-3, log=True), _choices("batch_size", 64, 86, 128),
                  _float("label_smoothing", 0.0, 0.2), *AUGMENTATION_SPACE),
    # Nesterov SGD with a one-cycle schedule (presets fast and best)
    "fast": (_float("lr", 0.02, 0.4, log=True), _float("momentum", 0.8, 0.95),
             _float("weight_decay", 1e-5, 2e-3, log=True), _float("label_smoothing", 0.0, 0.2),
             _float("onecycle_warmup", 0.1, 0.4), _choices("batch_size", 64, 128, 256), *AUGMENTATION_SPACE),
}
DEFAULT_SPACES["best"] = DEFAULT_SPACES["fast"]


def default_space(cfg: TrainConfig) -> tuple[Param, ...]:
    """The default space of the base recipe's network family."""
    return DEFAULT_SPACES[cfg.model]


# ---------------------------------------------------------------------------------------------
# space files


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_number(value, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)


def _param_from_spec(field: str, spec, where: str) -> Param:
    """One entry of a space file, checked: every problem is an InputError naming the field."""
    if field not in _FIELD_TYPES:
        if field in RUNTIME_FIELDS:
            raise InputError(f"{where}: {field} is a runtime setting (where a trial computes), not part of the "
                             f"recipe; give it as {_flag(field)}, it is not searched")
        raise InputError(f"{where}: unknown field {field!r} (the fields of TrainConfig in core/config.py)")
    if field in FIXED_FIELDS:
        raise InputError(f"{where}: {field} cannot be searched: {FIXED_FIELDS[field]}")
    if not isinstance(spec, dict):
        raise InputError(f"{where}: {field}: expected a mapping with type and range or choices, got {spec!r}")
    unknown = sorted(set(spec) - {"type", "range", "log", "choices"})
    if unknown:
        raise InputError(f"{where}: {field}: unknown key(s) {', '.join(unknown)} (known: type, range, log, choices)")
    field_type = _FIELD_TYPES[field]
    kind = spec.get("type") or ("categorical" if "choices" in spec or field_type in ("bool", "str") else field_type)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: {field}: log must be true or false, got {log!r}")
    if kind == "categorical":
        if "range" in spec or log:
            raise InputError(f"{where}: {field}: a categorical field takes choices, not a range or log")
        choices = spec.get("choices", [False, True] if field_type == "bool" else None)
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: {field}: choices must be a non-empty list")
        for value in choices:
            ok = {"bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
                  "int": lambda v: _is_number(v, True), "float": lambda v: _is_number(v, False)}[field_type](value)
            if not ok:
                raise InputError(f"{where}: {field}: choice {value!r} is not a {field_type}")
        if len(set(map(json.dumps, choices))) < len(choices):
            raise InputError(f"{where}: {field}: choices repeat a value")
        return Param(field, "categorical", choices=tuple(choices))
    if kind not in ("float", "int"):
        raise InputError(f"{where}: {field}: type must be float, int or categorical, got {kind!r}")
    if kind != field_type:
        raise InputError(f"{where}: {field} holds {field_type}s; type {kind} does not fit it")
    if "choices" in spec:
        raise InputError(f"{where}: {field}: choices need type categorical")
    bounds = spec.get("range")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b, kind == "int") for b in bounds)):
        raise InputError(f"{where}: {field}: range must be [low, high], two {kind}s, got {bounds!r}")
    low, high = bounds
    if not low < high:
        raise InputError(f"{where}: {field}: range [{low}, {high}] is empty: low must be below high")
    if log and low <= 0:
        raise InputError(f"{where}: {field}: a log-scaled range must be above 0, got [{low}, {high}]")
    return Param(field, kind, low, high, log)


def parse_space(obj, where: str) -> tuple[Param, ...]:
    """A search space from a space file's content: a mapping from TrainConfig fields to
    `{type: float|int|categorical, range: [low, high], log: true|false, choices: [...]}`.

    >>> parse_space({"lr": {"range": [0.01, 0.5], "log": True}}, "space")[0].describe()
    'lr: float in [0.01, 0.5], log scale'
    """
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{where}: a search space is a mapping from recipe fields to their ranges or choices")
    return tuple(_param_from_spec(str(field), spec, where) for field, spec in obj.items())


def load_space(path: str | os.PathLike) -> tuple[Param, ...]:
    """A space file, YAML (.yaml, .yml) or JSON (.json); see parse_space."""
    import yaml  # PyYAML (optuna's dependency): only for space files

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        obj = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise InputError(f"{path}: not valid {kind} ({' '.join(str(e).split())})") from None
    return parse_space(obj, str(path))


def check_space(space: tuple[Param, ...], base: TrainConfig, fixed: set[str] = frozenset(), where: str = "space") -> None:
    """Every value at the ends of each range (and every choice) must make a valid recipe with the
    base; a field fixed on the command line is not searched too."""
    seen = set()
    for param in space:
        if param.field in fixed:
            raise InputError(f"{where}: {param.field} is both fixed ({_flag(param.field)}) and searched; drop one")
        if param.field in seen:
            raise InputError(f"{where}: {param.field} appears twice")
        seen.add(param.field)
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        for value in values:
            try:
                dataclasses.replace(base, **{param.field: value})
            except (TypeError, ValueError) as e:
                raise InputError(f"{where}: {param.field} = {value!r} is not a valid recipe: {e}") from None


def tuning_recipe(base: TrainConfig) -> tuple[TrainConfig, str | None]:
    """The base recipe a study trains, and a note when it had to hold out a validation split."""
    if base.val_fraction > 0:
        return base, None
    return (dataclasses.replace(base, val_fraction=TUNE_VAL_FRACTION),
            f"the objective needs a validation split: {TUNE_VAL_FRACTION:.0%} of the training images are held out "
            f"(val_fraction {TUNE_VAL_FRACTION}, preset '{base.preset}' has 0); train the final model with "
            f"--val-fraction 0 if you want every image")


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """'20' -> 20 trials; '90s', '30m', '2h' -> that many seconds of this command's time."""
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "min": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                seconds = float(text[:-len(unit)]) * units[unit]
            except ValueError:
                break
            if seconds > 0:
                return None, seconds
            break
    else:
        if text.isdigit() and int(text) > 0:
            return int(text), None
    raise InputError(f"--budget {text!r}: a number of trials (20) or a time (90s, 30m, 2h)")


# ---------------------------------------------------------------------------------------------
# the study


@dataclass(frozen=True)
class Study:
    """What a study searches and where it lives. `storage` None: STUDY_DB in `study_dir`."""
    name: str
    study_dir: Path
    base: TrainConfig  # the recipe every trial starts from (with a validation split)
    space: tuple[Param, ...]
    objective: str = "accuracy"
    budget_trials: int | None = 20  # finished (complete or pruned) trials the study holds at the end
    budget_seconds: float | None = None  # or: this command's time, after which no trial starts
    pruner: str = "median"
    storage: str | None = None
    sampler_seed: int | None = None
    heartbeat: int = HEARTBEAT_SECONDS

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if self.pruner not in PRUNERS:
            raise InputError(f"--pruner must be one of {', '.join(PRUNERS)}")
        if self.base.val_fraction <= 0:
            raise InputError("a study needs a validation split (val_fraction > 0): its objective is measured there")
        if self.heartbeat < 1:
            raise InputError("--heartbeat must be at least 1 second")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / STUDY_DB).resolve()}"

    def definition(self) -> dict:
        """What must be the same for every worker that joins the study."""
        return {"base": self.base.to_dict(), "space": {p.field: p.to_dict() for p in self.space},
                "objective": self.objective}


def _storage(url: str, heartbeat: int | None) -> RDBStorage:
    # SQLite: several local workers share one file; wait for its lock instead of failing at once
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        if heartbeat is None:
            return RDBStorage(url, engine_kwargs=engine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES,
                                                                                  inherit_intermediate_values=True))
    except ModuleNotFoundError:
        raise
    except Exception as e:  # a wrong URL, a server not answering, a missing driver
        raise InputError(f"storage {safe_url(url)}: cannot be opened ({first_line(e)})") from None


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages.

    >>> safe_url("postgresql://tuner:secret@db-host/studies")
    'postgresql://tuner:***@db-host/studies'
    """
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        login, host = tail.rsplit("@", 1)
        if ":" in login:
            return f"{head}://{login.split(':', 1)[0]}:***@{host}"
    return url


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(study: Study, data: Digits | None = None, worker: int = 0) -> optuna.Study:
    """The study in its storage, created on first use. A study started with another recipe, space,
    objective or data is refused (InputError): workers of one study must all train the same thing."""
    if study.storage is None:
        study.study_dir.mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=None if study.sampler_seed is None else study.sampler_seed + worker,
                                         n_startup_trials=PRUNER_STARTUP_TRIALS + 2)
    opened = optuna.create_study(study_name=study.name, storage=_storage(study.storage_url, study.heartbeat),
                                 sampler=sampler, pruner=_pruner(study.pruner),
                                 direction=OBJECTIVES[study.objective][0], load_if_exists=True)
    wanted = study.definition() | ({"data_sha256": data.sha256} if data is not None else {})
    saved = opened.user_attrs.get("digitrec")
    if saved is None:
        opened.set_user_attr("digitrec", wanted)
    else:
        differ = sorted(k for k in wanted if k in saved and saved[k] != wanted[k])
        if differ:
            detail = [f"{k}: {', '.join(f for f in wanted[k] if saved[k].get(f) != wanted[k].get(f))}"
                      if isinstance(wanted[k], dict) else k for k in differ]
            raise InputError(f"study {study.name!r} in {safe_url(study.storage_url)} was started with another "
                             f"{'; '.join(detail)}; use another --study name (or the same settings)")
    return opened


def load_study(name: str, storage_url: str) -> optuna.Study:
    """An existing study, read-only use (no heartbeat)."""
    try:
        return optuna.load_study(study_name=name, storage=_storage(storage_url, None))
    except KeyError:
        names = optuna.get_all_study_names(_storage(storage_url, None))
        raise InputError(f"no study {name!r} in {safe_url(storage_url)} (there: {', '.join(names) or 'none'})") from None


def trial_recipe(study: Study, params: dict) -> TrainConfig:
    return dataclasses.replace(study.base, **params)


def _counts(opened: optuna.Study) -> dict:
    states = [t.state for t in opened.get_trials(deepcopy=False)]
    return {"finished": sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states),
            "running": states.count(TrialState.RUNNING), "waiting": states.count(TrialState.WAITING)}


class TrialFailed(Exception):
    """A trial that could not train (its loss diverged, say): the trial fails, the study goes on."""


def _objective(study: Study, data: Digits, rt: Runtime, quiet: bool, tracked: bool, parent_run: str | None) -> Callable:
    metric = OBJECTIVES[study.objective][1]

    def objective(trial: optuna.Trial) -> float:
        params = {p.field: p.suggest(trial) for p in study.space}
        cfg = trial_recipe(study, params)
        # a retry of a trial whose worker died inherits its user attributes: on the same machine it
        # continues the dead trial's folder from its checkpoint
        root = trial.user_attrs.get("root_trial", trial.number)
        run_dir = study.study_dir / f"{TRIAL_PREFIX}{root:04d}"
        resume = root != trial.number and Run(run_dir).has(CHECKPOINT)
        trial.set_user_attr("root_trial", root)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("recipe", cfg.to_dict())
        # the epochs the dead worker reported (the retry inherits them) are not reported again
        reported = {int(row["epoch"]) for row in Run(run_dir).history()} if resume else set()
        if resume:
            trial.set_user_attr("resumed_after_epoch", max(reported, default=0))

        with track.tracked("mlflow" if tracked else None, f"{study.name} trial {trial.number}",
                           track.params_of(cfg, rt.describe()) | {f"searched.{k}": v for k, v in params.items()},
                           parent_id=parent_run,
                           tags={"digitrec.study": study.name, "digitrec.trial": str(trial.number),
                                 "digitrec.run_dir": str(run_dir)}) as mlrun:
            log_epoch = mlrun.epoch_hook(run_dir) if mlrun else None

            def on_epoch(epoch: int, model) -> None:
                if log_epoch:
                    log_epoch(epoch, model)
                if epoch in reported:
                    return
                value = Run(run_dir).history()[-1][metric]
                trial.report(value, epoch)
                if epoch < cfg.epochs and trial.should_prune():  # stopping after the last epoch saves nothing
                    trial.set_user_attr("pruned_at", {"epoch": epoch, metric: value})
                    if mlrun:
                        mlrun.set_tag("digitrec.trial_state", "PRUNED")
                    raise optuna.TrialPruned(f"epoch {epoch}: {metric} {value:.4f}")

            if not quiet:
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
                print(f"trial {trial.number}{' (resumed)' if resume else ''}: {shown} -> {run_dir}", flush=True)
            try:
                metrics = fit(cfg, data, run_dir, resume=resume, quiet=True, runtime=rt, on_epoch=on_epoch)
            except InputError as e:  # a diverging loss, say: this trial fails, the study goes on
                trial.set_user_attr("error", first_line(e))
                raise TrialFailed(first_line(e)) from None
            history = Run(run_dir).history()
            value = metrics["val_accuracy"] if study.objective == "accuracy" else history[-1]["val_loss"]
            trial.set_user_attr("train_seconds", metrics["train_seconds"])
            if mlrun:
                mlrun.log_run(run_dir)
                mlrun.set_tag("digitrec.trial_state", "COMPLETE")
            return value

    return objective


def finished_trials(opened: optuna.Study) -> int:
    """Trials that count against the budget: complete or pruned."""
    return _counts(opened)["finished"]


def run_worker(study: Study, data: Digits, rt: Runtime, worker: int = 0, quiet: bool = False,
               tracked: bool = False, poll_seconds: float | None = None) -> int:
    """Run trials of `study` until it holds its budget of finished trials (or this command's time is
    up). Returns the number of trials this worker ran. Safe to run in many processes and machines at
    once on one storage; workers that find one trial left at the same moment may each start one, so
    a study of N workers can end up to N - 1 trials past its budget. `tracked`: each trial is an MLflow run, nested under the study's run when
    the study has one (its id is in the study's attributes)."""
    opened = open_study(study, data, worker)
    parent = opened.user_attrs.get("mlflow_run_id") if tracked else None
    objective = _objective(study, data, rt, quiet, tracked, parent)
    deadline = time.monotonic() + study.budget_seconds if study.budget_seconds else None
    poll = poll_seconds or study.heartbeat
    ran, fails = 0, 0
    while True:
        with warnings.catch_warnings():  # optuna calls the heartbeat experimental (since 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(opened)  # a dead worker's trial fails here, and is queued again
        counts = _counts(opened)
        if study.budget_trials is not None and counts["finished"] >= study.budget_trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        if (study.budget_trials is not None and counts["finished"] + counts["running"] >= study.budget_trials
                and not counts["waiting"]):
            time.sleep(poll)  # the last trials run elsewhere: stay, to take one over if its worker dies
            continue
        finished = []
        opened.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[lambda _, t: finished.append(t)])
        ran += 1
        fails = fails + 1 if finished and finished[-1].state == TrialState.FAIL else 0
        if fails >= FAILS_IN_A_ROW:
            raise InputError(f"study {study.name!r}: {fails} trials in a row failed in this worker; the last: "
                             f"{finished[-1].user_attrs.get('error', 'see above')}")
    return ran


def launch_workers(n: int, argv: list[str], env: dict | None = None) -> list[int]:
    """Start `n` processes of `digitrec <argv> --worker` (argv: `tune ...`) on this machine, each running the worker
    loop on the same storage; wait for them all. Returns their exit codes (negative: killed by a
    signal). Each process takes its share of the cores (LOCAL_WORLD_SIZE)."""
    procs = []
    for i in range(n):
        child_env = {**os.environ, **(env or {}), "LOCAL_WORLD_SIZE": str(n), "DIGITREC_TUNE_WORKER": str(i)}
        procs.append(subprocess.Popen([sys.executable, "-m", "digitrec", *argv, WORKER_FLAG], env=child_env))
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers had the same SIGINT: give them time to leave
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
        raise


# ---------------------------------------------------------------------------------------------
# results


def leaderboard(opened: optuna.Study) -> list[dict]:
    """One row per trial, the best first (finished trials by value, then pruned, running, failed)."""
    direction = 1 if opened.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3,
             TrialState.FAIL: 4}
    rows = []
    for t in opened.get_trials(deepcopy=False):
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     "last_report": t.intermediate_values[last] if last is not None else None,
                     "epochs": last or 0, "seconds": t.duration.total_seconds() if t.duration else None,
                     "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host"),
                     "retry_of": t.system_attrs.get("failed_trial"), **t.params})
    key = lambda r: (order.get(TrialState[r["state"]], 5),
                     -direction * (r["value"] if r["value"] is not None else r["last_report"] or 0), r["trial"])
    return sorted(rows, key=key)


def importances(opened: optuna.Study) -> dict[str, float] | str:
    """Optuna's parameter importances (fANOVA) over the finished trials, or why there are none."""
    complete = [t for t in opened.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return f"parameter importances need 2 finished trials ({len(complete)} so far)"
    try:
        return optuna.importance.get_param_importances(opened)
    except (RuntimeError, ValueError) as e:
        return f"parameter importances: {first_line(e)}"


def best_recipe(opened: optuna.Study) -> dict | None:
    """The best finished trial's recipe (a TrainConfig dict, as config.json holds), or None."""
    try:
        best = opened.best_trial
    except ValueError:
        return None
    recipe = best.user_attrs.get("recipe")
    return config_from_dict(recipe).to_dict() if recipe else None


def write_results(opened: optuna.Study, study_dir: Path) -> dict:
    """best_recipe.json and leaderboard.csv in the study folder; returns the paths written."""
    written = {}
    recipe = best_recipe(opened)
    if recipe is not None:
        with atomic_write(study_dir / BEST_RECIPE) as f:
            json.dump(recipe, f, indent=2)
            f.write("\n")
        written["best_recipe"] = study_dir / BEST_RECIPE
    rows = leaderboard(opened)
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(study_dir / LEADERBOARD) as f:
            f.write(buffer.getvalue())
        written["leaderboard"] = study_dir / LEADERBOARD
    return written


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def format_study(opened: optuna.Study, top: int = 20) -> str:
    """The leaderboard and the parameter importances, as `digitrec tune --show` prints them."""
    rows = leaderboard(opened)
    saved = opened.user_attrs.get("digitrec", {})
    objective = saved.get("objective", "accuracy")
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}
    lines = [f"study {opened.study_name}: {len(rows)} trials ("
             + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + f"); objective: validation {objective} "
             f"({opened.direction.name.lower()})"]
    params = list(saved.get("space", {}))
    header = ["trial", "state", "value", "epochs", "seconds", *params]
    table = [header] + [[_cell(r["trial"]), r["state"].lower(), _cell(r["value"] if r["value"] is not None else
                                                                     r["last_report"]),
                         _cell(r["epochs"]), _cell(round(r["seconds"], 1) if r["seconds"] else None),
                         *[_cell(r.get(p)) for p in params]] for r in rows[:top]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more in {LEADERBOARD}")
    found = importances(opened)
    if isinstance(found, str):
        lines.append(found)
    else:
        lines.append("parameter importances (fANOVA over the finished trials):")
        lines += [f"  {name:<18} {value:.3f}" for name, value in found.items()]
    try:
        best = opened.best_trial
        lines.append(f"best: trial {best.number}, validation {objective} {best.value:.5g}, "
                     f"run folder {best.user_attrs.get('run_dir')} ({best.user_attrs.get('host')})")
    except ValueError:
        lines.append("best: none yet (no finished trial)")
    return "\n".join(lines)
