"""The estimator: digitrec in the scikit-learn / Keras spirit, for notebooks and scripts.

`DigitClassifier(preset, **config).fit(data)` trains through `train.fit` (or `train_ensemble`),
which writes a run folder like `digitrec train` does, then reads the model back with
`checkpoint.load_run_model`; every other verb calls `evaluate`, `submit` or `report` on that run.
Nothing here trains, predicts or scores on its own. Learned attributes end in `_`.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig, make_config
from .data import as_digits
from .evaluate import Predictions
from .runtime import RUNTIME_FIELDS, RuntimeConfig, resolve

RUNS_ROOT = Path("runs")  # where fresh run folders go when no `out` is given
# What a run folder holds (train.fit, evaluate_run, write_submission, write_report): the only files
# `overwrite=True` removes, so anything else a user keeps beside them stays.
RUN_FILES = ("config.json", "metrics.json", "history.csv", "model.safetensors", "checkpoint.safetensors",
             "submission.csv", "report.html")
RUN_PATTERNS = ("predictions_*.npz", "evaluation_*.json", "figures/*.png")
_DEFAULTS = {"out": None, "overwrite": False, "resume": False, "ensemble": None, "verbose": True}  # left out of repr


def new_run_dir(preset: str, root: str | os.PathLike = RUNS_ROOT) -> Path:
    """A fresh, empty folder `root/<preset>-<date>-<time>-<6 hex digits>`, created now, so
    re-running a notebook cell never collides with the previous run."""
    while True:
        path = Path(root) / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue


def holds_run(run_dir: str | os.PathLike) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in ("config.json", "model.safetensors", "checkpoint.safetensors"))


def remove_run_files(run_dir: str | os.PathLike) -> None:
    """Delete digitrec's own files from a run folder (and its ensemble members'); keep everything else."""
    run_dir = Path(run_dir)
    for member in sorted(run_dir.glob("member-*")):
        if member.is_dir():
            remove_run_files(member)
            if not any(member.iterdir()):
                member.rmdir()
    for path in [run_dir / name for name in RUN_FILES] + [p for pattern in RUN_PATTERNS for p in run_dir.glob(pattern)]:
        if path.is_file():
            path.unlink()
    figures = run_dir / "figures"
    if figures.is_dir() and not any(figures.iterdir()):
        figures.rmdir()


class DigitClassifier:
    """A digit classifier trained with one of digitrec's presets ("seed": the reference Keras CNN;
    "fast"; "best"), with any TrainConfig field as a keyword (`epochs=3`, `lr=0.01`, ...) and the
    runtime's `device` ("auto": a GPU when torch sees one), `precision`, `eval_batch_size`,
    `channels_last` and `compile` (RuntimeConfig; threads are the process's: torch.set_num_threads).

    `fit` returns the classifier; afterwards `model_` (the PyTorch module, in eval mode),
    `config_` (the resolved TrainConfig), `history_` (one row per epoch, a DataFrame), `metrics_`,
    `run_dir_` and `val_predictions_` (the hold-out's Predictions, or None) are set.

    Data can be a numpy array (N, 28, 28) or (N, 784), uint8 0..255 or float 0..1, with labels `y`;
    a Kaggle-layout DataFrame; a CSV or image path; or "mnist" (the built-in MNIST: its training
    set for `fit`, its test set for the other verbs).

    Without `out`, each `fit` writes a fresh folder under runs/. An `out` that already holds a run
    needs `overwrite=True` (its digitrec files are deleted first) or `resume=True` (continue it
    from its last checkpoint). `ensemble=K` trains K members and averages them.

    >>> import digitrec as dr
    >>> clf = dr.DigitClassifier(preset="fast", epochs=3).fit("mnist")  # doctest: +SKIP
    >>> clf.score("mnist")  # doctest: +SKIP
    0.9932
    >>> clf.submit(test_frame, "submission.csv")  # doctest: +SKIP
    """

    def __init__(self, preset: str = "seed", *, out: str | os.PathLike | None = None, overwrite: bool = False,
                 resume: bool = False, ensemble: int | None = None, verbose: bool = True, **config):
        self.preset = preset
        self.out = out
        self.overwrite = overwrite
        self.resume = resume
        self.ensemble = ensemble
        self.verbose = verbose
        self.config = config
        self._configs()  # an unknown preset or field fails here, not after the data is read

    def _configs(self) -> tuple[TrainConfig, RuntimeConfig]:
        """The recipe and the runtime settings among the keywords."""
        runtime = {k: v for k, v in self.config.items() if k in RUNTIME_FIELDS}
        if "threads" in runtime:
            raise ValueError("threads are the process's to set (torch.set_num_threads), not a classifier's")
        recipe = {k: v for k, v in self.config.items() if k not in RUNTIME_FIELDS}
        return make_config(self.preset, **recipe), RuntimeConfig(**runtime)

    # -- scikit-learn's parameter protocol

    def get_params(self, deep: bool = True) -> dict:
        return {"preset": self.preset, "out": self.out, "overwrite": self.overwrite, "resume": self.resume,
                "ensemble": self.ensemble, "verbose": self.verbose, **self.config}

    def set_params(self, **params) -> "DigitClassifier":
        for key, value in params.items():
            if key == "preset" or key in _DEFAULTS:
                setattr(self, key, value)
            else:
                self.config[key] = value
        self._configs()
        return self

    def __repr__(self) -> str:
        args = [f"preset={self.preset!r}"] + [f"{k}={v!r}" for k, v in self.get_params().items()
                                               if k != "preset" and v != _DEFAULTS.get(k)]
        return f"DigitClassifier({', '.join(args)})"

    # -- training

    def fit(self, X, y=None) -> "DigitClassifier":
        """Train on labelled data (see the class docstring for what X can be); returns self."""
        from .train import fit, train_ensemble

        cfg, runtime_cfg = self._configs()
        runtime = resolve(runtime_cfg)  # a missing device fails before the data is read
        digits = as_digits(X, y, need_labels=True, mnist_split="train")
        run_dir = self._run_dir()
        if self.ensemble is not None:
            train_ensemble(cfg, digits, run_dir, self.ensemble, resume=self.resume, quiet=not self.verbose,
                           runtime=runtime)
        else:
            fit(cfg, digits, run_dir, resume=self.resume, quiet=not self.verbose, runtime=runtime)
        return self._read_run(run_dir)

    def _run_dir(self) -> Path:
        if self.overwrite and self.resume:
            raise ValueError("overwrite=True and resume=True exclude each other")
        if self.out is None:
            if self.resume:
                raise ValueError("resume=True needs out= (the run folder to continue)")
            return new_run_dir(self.preset)
        out = Path(self.out)
        if holds_run(out) and not self.resume:
            if not self.overwrite:
                raise ValueError(f"{out}: already holds a run; pass overwrite=True to replace it, "
                                 "resume=True to continue it, or another out")
            remove_run_files(out)
        return out

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "DigitClassifier":
        """A fitted classifier from a finished run folder (from `fit` or `digitrec train`).

        >>> clf = dr.DigitClassifier.load("runs/fast")  # doctest: +SKIP
        """
        from .checkpoint import load_run_model

        _, cfg, _ = load_run_model(run_dir)
        preset = make_config(cfg.preset).to_dict()
        fields = {k: v for k, v in cfg.to_dict().items() if v != preset[k]}  # what differs from the preset
        return cls(cfg.preset, out=run_dir, **fields)._read_run(Path(run_dir))

    @classmethod
    def combine(cls, classifiers: list["DigitClassifier"], out: str | os.PathLike | None = None) -> "DigitClassifier":
        """An ensemble averaging the probabilities of fitted classifiers trained on the same data
        (as `digitrec ensemble RUN RUN...`), written to `out` or a fresh folder under runs/.

        >>> ens = dr.DigitClassifier.combine([clf_fast, clf_best])  # doctest: +SKIP
        """
        from .train import combine_runs

        for clf in classifiers:
            clf._fitted()
        out = Path(out) if out is not None else new_run_dir("ensemble")
        if holds_run(out):
            raise ValueError(f"{out}: already holds a run; choose another out")
        combine_runs([clf.run_dir_ for clf in classifiers], out)
        return cls.load(out)

    def _read_run(self, run_dir: Path) -> "DigitClassifier":
        from .checkpoint import load_run_model
        from .files import read_json

        self.model_, self.config_, _ = load_run_model(run_dir)
        self.run_dir_ = run_dir
        history = run_dir / "history.csv"
        self.history_ = pd.read_csv(history) if history.is_file() else pd.DataFrame()
        self.metrics_ = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
        val = run_dir / "predictions_val.npz"
        self.val_predictions_ = Predictions.load(val) if val.is_file() else None
        self.classes_ = np.arange(10)
        return self

    # -- prediction: each verb calls evaluate.py on the run's model

    def _fitted(self) -> TrainConfig:
        if not hasattr(self, "model_"):
            raise ValueError("this DigitClassifier is not fitted yet: call fit(...) or DigitClassifier.load(run_dir)")
        return self.config_

    def predict_proba(self, X, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, 10), rows summing to 1. `tta`: averaged over evaluate.TTA_VIEWS."""
        from .evaluate import predict_probs, tta_probs

        self._fitted()
        images = as_digits(X, mnist_split="test").images
        return tta_probs(self.model_, images) if tta else predict_probs(self.model_, images)

    def predict(self, X, tta: bool = False) -> np.ndarray:
        """The predicted digit of each image (N,) int64. X may also be photos: image paths are read
        the way `digitrec predict` reads them (cropped, centred, scaled like MNIST)."""
        return self.predict_proba(X, tta).argmax(1).astype(np.int64)

    def score(self, X, y=None, tta: bool = False) -> float:
        """Accuracy on labelled data, in [0, 1]."""
        self._fitted()
        digits = as_digits(X, y, need_labels=True, mnist_split="test")
        return float((self.predict(digits, tta) == digits.labels).mean())

    def evaluate(self, X, y=None, name: str = "test", tta: bool = False) -> Predictions:
        """Predictions on X, also saved in the run (predictions_<name>.npz, and its scores when
        labelled) so `report()` shows them. Plot them with its plot_* methods."""
        from .evaluate import evaluate_run

        self._fitted()
        return evaluate_run(self.run_dir_, as_digits(X, y, mnist_split="test"), name, tta=tta)

    def submit(self, X, path: str | os.PathLike = "submission.csv", tta: bool = False) -> Path:
        """A Kaggle submission file (ImageId,Label) for X, in X's order. Returns its path."""
        from .evaluate import evaluate_run
        from .submit import write_submission

        self._fitted()
        preds = evaluate_run(self.run_dir_, as_digits(X, mnist_split="test"), "submission", tta=tta)
        return write_submission(preds, path)

    def report(self, top_mistakes: int = 24) -> Path:
        """Write the run's HTML report (run_dir_/report.html) and return its path."""
        from .report import write_report

        self._fitted()
        return write_report(self.run_dir_, top_mistakes)

    def plot_history(self):
        """Loss, accuracy and learning rate per epoch (one-cycle's rate at every step) as a Figure."""
        from .figures import training_curves_figure
        from .report import learning_rate_steps

        cfg = self._fitted()
        if self.history_.empty:
            raise ValueError(f"{self.run_dir_}: no per-epoch history (an ensemble: see its members' folders)")
        history = self.history_.to_dict("records")
        n_train = self.metrics_.get("n_train")
        steps = learning_rate_steps(cfg, n_train, len(history)) if n_train else None
        return training_curves_figure(history, steps)
