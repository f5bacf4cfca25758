"""The estimator: digitrec in the scikit-learn / Keras spirit, for notebooks and scripts.

`DigitClassifier(preset, **config).fit(data)` trains through `training.train.fit` (or
`training.ensemble.train_ensemble`), which writes a run folder like `digitrec train` does, then
reads the model back with `nets.weights.load_run_model`; every other verb calls the predict,
submit or report functions on that run.
Nothing here trains, predicts or scores on its own. Learned attributes end in `_`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .core import data as core_data
from .core import pretrained as bundled
from .core.config import RUNTIME_FIELDS, RuntimeConfig, TrainConfig, config_from_dict, load_recipe, make_config
from .core.data import IMAGE_SUFFIXES, Digits, make_digits
from .core.figures import training_curves_figure
from .core.metrics import Predictions, abstain
from .core.rundir import Run, new_run
from .nets.predict import evaluate_run, predict, predict_probs, tta_probs
from .nets.weights import load_pretrained, load_run_model
from .outputs.report import learning_rate_steps, write_report
from .outputs.submit import write_submission
from .training.ensemble import combine_runs, train_ensemble
from .training.runtime import resolve
from .training.train import fit

RUNS_ROOT = Path("runs")  # where fresh run folders go when no `out` is given
_DEFAULTS = {"out": None, "overwrite": False, "resume": False, "ensemble": None, "verbose": True,
             "recipe": None}  # left out of repr


def as_digits(data, y=None, *, need_labels: bool = False, mnist_split: str = "train",
              classify: Callable[[np.ndarray], np.ndarray] | None = None) -> Digits:
    """core.data.as_digits, where image files (a path, or a list of paths) are also read as photos, the
    way `digitrec predict` reads them (cropped, centred, scaled like MNIST). With `classify` (uint8
    (N, 28, 28) -> probabilities (N, 10)), a digit beside strokes that may be stray marks is read
    with and without them and the surest reading kept (outputs/images.py: to_mnist).

    >>> dr.as_digits(["three.jpg", "seven.png"]).images.shape  # doctest: +SKIP
    (2, 28, 28)
    """
    paths = [data] if isinstance(data, (str, os.PathLike)) else data
    if (isinstance(paths, (list, tuple)) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths)
            and all(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in paths)):
        from .outputs.images import open_image, to_mnist  # OpenCV and Pillow: only when photos are read

        images = []
        for path in paths:
            image = to_mnist(open_image(path, str(path)), classify)
            if image is None:
                raise ValueError(f"{path}: no digit found")
            images.append(image)
        digits = make_digits(np.stack(images), None, str(paths[0]) if len(paths) == 1 else f"{len(paths)} files")
        return core_data.as_digits(digits, y, need_labels=need_labels)
    return core_data.as_digits(data, y, need_labels=need_labels, mnist_split=mnist_split)


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

    `recipe` starts from a recipe instead of a preset: a JSON file of TrainConfig fields (a run's
    config.json, `digitrec tune`'s best_recipe.json) or such a dict; keywords still override it.

    >>> import digitrec as dr
    >>> clf = dr.DigitClassifier(preset="fast", epochs=3).fit("mnist")  # doctest: +SKIP
    >>> clf.score("mnist")  # doctest: +SKIP
    0.9932
    >>> clf.submit(test_frame, "submission.csv")  # doctest: +SKIP
    """

    def __init__(self, preset: str = "seed", *, out: str | os.PathLike | None = None, overwrite: bool = False,
                 resume: bool = False, ensemble: int | None = None, verbose: bool = True,
                 recipe: str | os.PathLike | dict | None = None, **config):
        self.preset = preset
        self.recipe = recipe
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
        if self.recipe is None:
            return make_config(self.preset, **recipe), RuntimeConfig(**runtime)
        if self.preset != "seed":
            raise ValueError("recipe= holds the whole recipe, its preset too: leave preset out")
        base = dict(self.recipe) if isinstance(self.recipe, dict) else load_recipe(self.recipe).to_dict()
        return config_from_dict({**base, **recipe}), RuntimeConfig(**runtime)

    # -- scikit-learn's parameter protocol

    def get_params(self, deep: bool = True) -> dict:
        return {"preset": self.preset, "out": self.out, "overwrite": self.overwrite, "resume": self.resume,
                "ensemble": self.ensemble, "verbose": self.verbose, "recipe": self.recipe, **self.config}

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

        cfg, runtime_cfg = self._configs()
        runtime = resolve(runtime_cfg)  # a missing device fails before the data is read
        digits = as_digits(X, y, need_labels=True, mnist_split="train")
        run_dir = self._run_dir(cfg.preset)
        if self.ensemble is not None:
            train_ensemble(cfg, digits, run_dir, self.ensemble, resume=self.resume, quiet=not self.verbose,
                           runtime=runtime)
        else:
            fit(cfg, digits, run_dir, resume=self.resume, quiet=not self.verbose, runtime=runtime)
        return self._read_run(run_dir)

    def _run_dir(self, prefix: str) -> Path:
        if self.overwrite and self.resume:
            raise ValueError("overwrite=True and resume=True exclude each other")
        if self.out is None:
            if self.resume:
                raise ValueError("resume=True needs out= (the run folder to continue)")
            return new_run(prefix, RUNS_ROOT).path
        out = Path(self.out)
        if Run(out).holds_run() and not self.resume:
            if not self.overwrite:
                raise ValueError(f"{out}: already holds a run; pass overwrite=True to replace it, "
                                 "resume=True to continue it, or another out")
            Run(out).remove_own_files()
        return out

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "DigitClassifier":
        """A fitted classifier from a finished run folder (from `fit` or `digitrec train`).

        >>> clf = dr.DigitClassifier.load("runs/fast")  # doctest: +SKIP
        """

        _, cfg, _ = load_run_model(run_dir)
        preset = make_config(cfg.preset).to_dict()
        fields = {k: v for k, v in cfg.to_dict().items() if v != preset[k]}  # what differs from the preset
        return cls(cfg.preset, out=run_dir, **fields)._read_run(Path(run_dir))

    @classmethod
    def pretrained(cls, name: str = bundled.DEFAULT) -> "DigitClassifier":
        """A ready classifier with a model that ships inside digitrec ("fast" or "best"; docs/models/),
        its file checked against its SHA-256. It has no run folder (`run_dir_` is None): `evaluate` and
        `submit` write nothing beside their results, and there is no `report()` or history.

        >>> clf = dr.DigitClassifier.pretrained("best")  # doctest: +SKIP
        >>> clf.predict("digit.jpg")  # doctest: +SKIP
        array([7])
        """
        model, cfg, _ = load_pretrained(name)
        clf = cls(cfg.preset)
        card = bundled.card(name)
        clf.model_, clf.config_, clf.run_dir_ = model, cfg, None
        clf.history_ = pd.DataFrame()
        clf.metrics_ = {key: value for key, value in card.items() if key != "files"}
        clf.val_predictions_ = None
        clf.classes_ = np.arange(10)
        return clf

    @classmethod
    def combine(cls, classifiers: list["DigitClassifier"], out: str | os.PathLike | None = None) -> "DigitClassifier":
        """An ensemble averaging the probabilities of fitted classifiers trained on the same data
        (as `digitrec ensemble RUN RUN...`), written to `out` or a fresh folder under runs/.

        >>> ens = dr.DigitClassifier.combine([clf_fast, clf_best])  # doctest: +SKIP
        """

        for clf in classifiers:
            clf._fitted()
        out = Path(out) if out is not None else new_run("ensemble", RUNS_ROOT).path
        if Run(out).holds_run():
            raise ValueError(f"{out}: already holds a run; choose another out")
        combine_runs([clf.run_dir_ for clf in classifiers], out)
        return cls.load(out)

    def _read_run(self, run_dir: Path) -> "DigitClassifier":

        self.model_, self.config_, _ = load_run_model(run_dir)
        self.run_dir_ = run_dir
        run = Run(run_dir)
        self.history_ = pd.DataFrame(run.history())
        self.metrics_ = run.metrics()
        self.val_predictions_ = run.predictions("val")
        self.classes_ = np.arange(10)
        return self

    # -- prediction: each verb calls nets/predict.py on the run's model

    def _fitted(self) -> TrainConfig:
        if not hasattr(self, "model_"):
            raise ValueError("this DigitClassifier is not fitted yet: call fit(...) or DigitClassifier.load(run_dir)")
        return self.config_

    def _probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        return tta_probs(self.model_, images) if tta else predict_probs(self.model_, images)

    def _digits(self, X, y=None, need_labels: bool = False, tta: bool = False) -> Digits:
        """X (and y) as Digits; photos read as `digitrec predict` reads them, this model choosing
        where strokes beside a digit may be stray marks."""
        return as_digits(X, y, need_labels=need_labels, mnist_split="test", classify=lambda x: self._probs(x, tta))

    def predict_proba(self, X, tta: bool = False) -> np.ndarray:
        """Class probabilities (N, 10), rows summing to 1. `tta`: averaged over augment.TTA_VIEWS."""

        self._fitted()
        return self._probs(self._digits(X, tta=tta).images, tta)

    def predict(self, X, tta: bool = False, min_confidence: float | None = None) -> np.ndarray:
        """The predicted digit of each image (N,) int64. X may also be photos: image paths are read
        the way `digitrec predict` reads them (cropped, centred, scaled like MNIST).

        With `min_confidence` P (a probability, 0..1), an image whose most probable digit has a
        probability below P is "not sure": its label is -1 (core.metrics.UNSURE). `predict_proba`
        still gives its probabilities; docs/calibration.md has the share answered and their accuracy per P.

        >>> clf.predict(photos, min_confidence=0.9)  # doctest: +SKIP
        array([ 3,  7, -1,  1])
        """
        return abstain(self.predict_proba(X, tta), min_confidence)

    def score(self, X, y=None, tta: bool = False) -> float:
        """Accuracy on labelled data, in [0, 1]."""
        self._fitted()
        digits = self._digits(X, y, need_labels=True, tta=tta)
        return float((self.predict(digits, tta) == digits.labels).mean())

    def evaluate(self, X, y=None, name: str = "test", tta: bool = False) -> Predictions:
        """Predictions on X, also saved in the run (predictions_<name>.npz, and its scores when
        labelled) so `report()` shows them. Plot them with its plot_* methods."""

        self._fitted()
        digits = self._digits(X, y, tta=tta)
        if self.run_dir_ is None:  # a pretrained model: nowhere to save
            return predict(self.model_, digits, f"{name}-tta" if tta else name, tta=tta)
        return evaluate_run(self.run_dir_, digits, name, tta=tta)

    def submit(self, X, path: str | os.PathLike = "submission.csv", tta: bool = False) -> Path:
        """A Kaggle submission file (ImageId,Label) for X, in X's order. Returns its path."""

        self._fitted()
        digits = self._digits(X, tta=tta)
        if self.run_dir_ is None:  # a pretrained model: nowhere to save the record
            return write_submission(predict(self.model_, digits, "submission", tta=tta), path)
        return write_submission(evaluate_run(self.run_dir_, digits, "submission", tta=tta), path)

    def report(self, top_mistakes: int = 24) -> Path:
        """Write the run's HTML report (run_dir_/report.html) and return its path."""

        self._fitted()
        if self.run_dir_ is None:
            raise ValueError("a pretrained classifier has no run folder to report on; evaluate(...) gives its "
                             "Predictions, and docs/models/ its card")
        return write_report(self.run_dir_, top_mistakes)

    def plot_history(self):
        """Loss, accuracy and learning rate per epoch (one-cycle's rate at every step) as a Figure."""

        cfg = self._fitted()
        if self.history_.empty:
            raise ValueError(f"{self.run_dir_}: no per-epoch history (an ensemble: see its members' folders)")
        history = self.history_.to_dict("records")
        n_train = self.metrics_.get("n_train")
        steps = learning_rate_steps(cfg, n_train, len(history)) if n_train else None
        return training_curves_figure(history, steps)
