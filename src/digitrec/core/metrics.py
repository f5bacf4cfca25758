"""The predictions record and every metric computed from it: numpy only, no torch.

Compute once, render many times: the confusion matrix, the error gallery, the HTML report and the
submission CSV all read one `Predictions` record per data set (saved as `predictions_<name>.npz`
in a run folder, core/rundir.py).
"""

from __future__ import annotations

import html
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Digits
from .files import InputError, atomic_write, first_line


@dataclass(frozen=True, repr=False)
class Predictions:
    """One data set's predictions: what every metric, figure, report and submission reads.

    >>> preds = clf.evaluate(dr.load_mnist("test"))  # doctest: +SKIP
    >>> preds.accuracy, preds.most_confused(3)  # doctest: +SKIP
    >>> preds.plot_top_losses(6)  # doctest: +SKIP
    """
    name: str  # which data set: "val", "test", ...
    ids: np.ndarray  # (N,) int64
    y_true: np.ndarray  # (N,) int64; -1 where the label is unknown (a Kaggle test file)
    y_pred: np.ndarray  # (N,) int64 = probs.argmax(1)
    probs: np.ndarray  # (N, 10) float32, rows sum to 1
    images: np.ndarray  # (N, 28, 28) uint8, kept so galleries need no data re-read
    # (N, 10) float32: the same model's probabilities with every temperature 1, for the report's
    # before / after; None when the model is not calibrated (or the record predates calibration)
    probs_uncalibrated: np.ndarray | None = None

    @property
    def has_labels(self) -> bool:
        return bool(len(self.y_true)) and bool((self.y_true >= 0).all())

    @property
    def accuracy(self) -> float:
        """Share of images predicted right (needs labels)."""
        self._need_labels()
        return float((self.y_pred == self.y_true).mean())

    def to_bytes(self) -> bytes:
        """The record as an .npz file's bytes (no pickles)."""
        buffer = io.BytesIO()
        extra = {} if self.probs_uncalibrated is None else {"probs_uncalibrated": self.probs_uncalibrated}
        np.savez_compressed(buffer, name=np.array(self.name), ids=self.ids, y_true=self.y_true,
                            y_pred=self.y_pred, probs=self.probs, images=self.images, **extra)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str | os.PathLike) -> "Predictions":
        """The record in an .npz file's bytes; InputError naming `where` if they are anything else."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                preds = cls(str(z["name"]), z["ids"], z["y_true"], z["y_pred"], z["probs"], z["images"],
                            z["probs_uncalibrated"] if "probs_uncalibrated" in z.files else None)
        # a truncated, garbled or foreign file: numpy lets each layer's own error through
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise InputError(f"{where}: not a digitrec predictions file ({first_line(e)})") from None
        n = len(preds.ids)
        shapes = {"ids": (n,), "y_true": (n,), "y_pred": (n,), "probs": (n, 10), "images": (n, 28, 28),
                  "probs_uncalibrated": (n, 10)}
        wrong = next((key for key, shape in shapes.items()
                      if getattr(preds, key) is not None and getattr(preds, key).shape != shape), None)
        if wrong is not None:
            raise InputError(f"{where}: not a digitrec predictions file ({wrong} has shape "
                             f"{list(getattr(preds, wrong).shape)}, expected {list(shapes[wrong])})")
        return preds

    def save(self, path: str | os.PathLike) -> None:
        """Write the record to `path` (atomically). In a run folder, rundir.Run.write_predictions also
        records its digest."""
        with atomic_write(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Predictions":
        if not Path(path).is_file():
            raise InputError(f"{path}: no such predictions file")
        return cls.from_bytes(Path(path).read_bytes(), path)

    def _need_labels(self) -> None:
        if not self.has_labels:
            raise InputError(f"predictions '{self.name}' have no labels to score against")

    # -- what a notebook asks of it; each figure is built by figures.py, as in the report

    def confusion_matrix(self) -> np.ndarray:
        """(10, 10) counts; rows are the true digit, columns the predicted one."""
        self._need_labels()
        return confusion_matrix(self.y_true, self.y_pred)

    def most_confused(self, top: int = 10) -> list[tuple[int, int, int]]:
        """(true, predicted, count) of the most frequent mistakes, largest first.

        >>> preds.most_confused(3)  # doctest: +SKIP
        [(4, 9, 7), (7, 2, 5), (9, 4, 4)]
        """
        return most_confused_pairs(self.confusion_matrix(), top)

    def top_losses(self, k: int = 6) -> list[dict]:
        """The `k` most confident mistakes (the reference's ranking: P(predicted) - P(true))."""
        self._need_labels()
        return confident_mistakes(self, k)

    def plot_confusion_matrix(self, normalise: bool = False):
        """The confusion matrix as a Figure: image counts, or each row as % of its true digit."""
        from .figures import confusion_figure  # matplotlib: only when a figure is asked for

        return confusion_figure(self.confusion_matrix(), normalise)

    def plot_top_losses(self, k: int = 6, ncols: int = 3):
        """The reference's "most important errors": the `k` most confident mistakes with all 10 probabilities."""
        from .figures import mistakes_figure  # matplotlib: only when a figure is asked for

        mistakes = self.top_losses(k)
        if not mistakes:
            raise ValueError(f"predictions '{self.name}' have no mistakes to show")
        return mistakes_figure(self, mistakes, ncols)

    def plot_calibration(self, n_bins: int = 15):
        """Reliability diagram: accuracy against confidence per bin, with the expected calibration error
        (and the uncalibrated model's, where the record holds its probabilities)."""
        from .figures import reliability_figure  # matplotlib: only when a figure is asked for

        before = self.uncalibrated()
        return reliability_figure(reliability(self, n_bins), reliability(before, n_bins) if before else None)

    def uncalibrated(self) -> "Predictions | None":
        """The record as the model scored it with every temperature 1, if the record holds that."""
        if self.probs_uncalibrated is None:
            return None
        return Predictions(f"{self.name} (uncalibrated)", self.ids, self.y_true, self.probs_uncalibrated.argmax(1),
                           self.probs_uncalibrated, self.images)

    def __repr__(self) -> str:
        scored = f", accuracy {100 * self.accuracy:.3f}%" if self.has_labels else ", no labels"
        return f"Predictions('{self.name}', {len(self.ids):,} images{scored})"

    def _repr_html_(self) -> str:
        rows = [("images", f"{len(self.ids):,}")]
        if self.has_labels:
            summary = summarize(self, 0)
            low, high = summary["accuracy_ci95"]
            rows += [("accuracy", f"{100 * summary['accuracy']:.3f}% (95% CI {100 * low:.2f}-{100 * high:.2f}%)"),
                     ("errors", f"{summary['errors']:,}"), ("mean loss", f"{summary['loss']:.4f} nats"),
                     ("most confused (true → predicted: images)",
                      ", ".join(f"{t} → {p}: {n}" for t, p, n in self.most_confused(3)) or "none")]
        else:
            rows.append(("labels", "none (predictions only)"))
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in rows)
        return f"<div><strong>Predictions '{html.escape(self.name)}'</strong><table>{body}</table></div>"



def predictions_from_probs(name: str, digits: Digits, probs: np.ndarray,
                           probs_uncalibrated: np.ndarray | None = None) -> Predictions:
    probs = np.asarray(probs, dtype=np.float32)
    y_true = digits.labels if digits.labels is not None else np.full(len(digits), -1, dtype=np.int64)
    if probs_uncalibrated is not None:
        probs_uncalibrated = np.asarray(probs_uncalibrated, dtype=np.float32)
    return Predictions(name, digits.ids, y_true.astype(np.int64), probs.argmax(1).astype(np.int64),
                       probs, digits.images, probs_uncalibrated)



def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """(10, 10) counts; rows are the true class, columns the predicted one."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def most_confused_pairs(cm: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the largest off-diagonal cells, largest first."""
    off = np.array(cm, dtype=np.int64)
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(int(i // 10), int(i % 10), int(off.flat[i])) for i in order if off.flat[i] > 0]


def confident_mistakes(preds: Predictions, top: int = 6) -> list[dict]:
    """The reference's ranking: misclassified images by P(predicted) - P(true), largest first."""
    wrong = np.flatnonzero(preds.y_pred != preds.y_true)
    p_pred = preds.probs[wrong, preds.y_pred[wrong]]
    p_true = preds.probs[wrong, preds.y_true[wrong]]
    gap = p_pred - p_true
    order = np.argsort(-gap, kind="stable")[:top]
    return [{"index": int(wrong[i]), "id": int(preds.ids[wrong[i]]), "true": int(preds.y_true[wrong[i]]),
             "pred": int(preds.y_pred[wrong[i]]), "p_pred": float(p_pred[i]), "p_true": float(p_true[i]),
             "gap": float(gap[i])} for i in order]


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of an accuracy (Wilson score; sound near 100%)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(preds: Predictions, top_mistakes: int = 6) -> dict:
    """Every number the reference showed, from one predictions record."""
    if not preds.has_labels:
        raise InputError(f"predictions '{preds.name}' have no labels to score against")
    cm = confusion_matrix(preds.y_true, preds.y_pred)
    correct = int(np.trace(cm))
    total = int(cm.sum())
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(10), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(10), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(10), where=(precision + recall) > 0)
    nll = -np.log(np.clip(preds.probs[np.arange(total), preds.y_true], 1e-12, None)).mean()
    return {
        "name": preds.name,
        "n": total,
        "accuracy": correct / total,
        "errors": total - correct,
        "accuracy_ci95": list(wilson_interval(correct, total)),
        "loss": float(nll),
        "ece": reliability(preds)["ece"],
        "ece_uncalibrated": reliability(preds.uncalibrated())["ece"] if preds.probs_uncalibrated is not None else None,
        "per_class": [{"class": c, "precision": float(precision[c]), "recall": float(recall[c]),
                       "f1": float(f1[c]), "support": int(cm[c].sum())} for c in range(10)],
        "confusion_matrix": cm.tolist(),
        "confident_mistakes": confident_mistakes(preds, top_mistakes),
    }


def reliability(preds: Predictions, n_bins: int = 15) -> dict:
    """Reliability of the top probability: `n_bins` equal-width confidence bins and the expected
    calibration error, ECE = sum over bins of (share of images) * |accuracy - mean confidence|."""
    if not preds.has_labels:
        raise InputError(f"predictions '{preds.name}' have no labels to score against")
    confidence = preds.probs.max(1).astype(np.float64)
    correct = (preds.y_pred == preds.y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i + 1]]
    count = np.bincount(which, minlength=n_bins)
    mean_conf = np.bincount(which, confidence, minlength=n_bins) / np.maximum(count, 1)
    accuracy = np.bincount(which, correct, minlength=n_bins) / np.maximum(count, 1)
    ece = float((count * np.abs(accuracy - mean_conf)).sum() / max(len(confidence), 1))
    return {"n_bins": n_bins, "ece": ece,
            "bins": [{"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(count[i]),
                      "confidence": float(mean_conf[i]) if count[i] else None,
                      "accuracy": float(accuracy[i]) if count[i] else None} for i in range(n_bins)]}


def format_summary(summary: dict) -> str:
    """The summary as text for the terminal."""
    low, high = summary["accuracy_ci95"]
    lines = [f"{summary['name']}: accuracy {100 * summary['accuracy']:.3f}% "
             f"({summary['errors']} errors in {summary['n']}; 95% CI {100 * low:.2f}-{100 * high:.2f}%)"]
    if summary.get("ece") is not None:  # summaries written before calibration lack it
        before = summary.get("ece_uncalibrated")
        lines.append(f"expected calibration error {100 * summary['ece']:.2f}%"
                     + (f" (uncalibrated: {100 * before:.2f}%)" if before is not None else ""))
    lines += ["", "class  precision  recall     f1  support"]
    lines += [f"{r['class']:>5}  {r['precision']:>9.4f}  {r['recall']:>6.4f}  {r['f1']:.4f}  {r['support']:>7}"
              for r in summary["per_class"]]
    lines += ["", "confusion matrix (rows: true, columns: predicted)", "     " + "".join(f"{c:>6}" for c in range(10))]
    lines += [f"{t:>5}" + "".join(f"{v:>6}" for v in row) for t, row in enumerate(summary["confusion_matrix"])]
    lines += ["", "most confident mistakes (P(pred) - P(true)):"]
    lines += [f"  id {m['id']:>6}: predicted {m['pred']} ({m['p_pred']:.3f}), true {m['true']} ({m['p_true']:.3f})"
              for m in summary["confident_mistakes"]]
    return "\n".join(lines)

