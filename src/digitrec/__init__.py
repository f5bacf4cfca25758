"""digitrec: handwritten-digit recognition, from the classic Kaggle CNN to photos of digits.

The Python front door (the `digitrec` command calls the same functions):

    import digitrec as dr
    train, test = dr.load_mnist("train"), dr.load_mnist("test")   # or numpy arrays, DataFrames, CSV paths
    dr.plot_digits(train, n=16)                                    # figures show inline in Jupyter
    clf = dr.DigitClassifier(preset="fast", epochs=3).fit(train)   # a run folder under runs/
    clf.plot_history()
    preds = clf.evaluate(test)                                     # a Predictions record
    preds.plot_confusion_matrix(); preds.plot_top_losses(6); preds.most_confused(3)
    clf.predict("digit.jpg"), clf.score(test)
    clf.submit(kaggle_test, "submission.csv")

Names are imported on first use, so `import digitrec` stays light (and `digitrec submit --onnx`
never loads torch).
"""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("digitrec")
except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DigitClassifier": "estimator",
    "as_digits": "estimator",  # core.data.as_digits, and image files read as photos
    "Predictions": "core.metrics",
    "Digits": "core.data",
    "load_mnist": "core.data",
    "kaggle_like_split": "core.data",
    "read_kaggle_csv": "core.data",
    "TrainConfig": "core.config",
    "RuntimeConfig": "core.config",
    "make_config": "core.config",
    "PRESETS": "core.config",
    "Run": "core.rundir",
    "build_model": "nets.model",
    "plot_digits": "core.figures",
    "plot_label_counts": "core.figures",
    "plot_augmentations": "nets.augment",
    "write_report": "outputs.report",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'digitrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
