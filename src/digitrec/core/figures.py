"""Figures: every plot digitrec draws, for the HTML report, the CLI and notebooks alike.

Each builder takes plain numbers (or a predictions record) and returns a `Figure`, built without
pyplot: nothing is registered with pyplot's global figure list, so a notebook shows a figure once
(as the value of its cell) and a script leaks nothing. The house style is applied while a figure
is built and while it is rendered; matplotlib's global settings and backend are left alone.
"""

from __future__ import annotations

import functools
import io
import math

import matplotlib
import matplotlib.figure
import numpy as np
from cycler import cycler
from matplotlib.patches import Rectangle

from .data import as_digits

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, YELLOW, BLACK = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
PALETTE = [BLUE, VERMILLION, GREEN, PURPLE, ORANGE, SKY, BLACK, YELLOW]
GREY = "#9a9a9a"
STYLE = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.8, "axes.axisbelow": True,
    "font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold", "legend.frameon": False,
    "figure.facecolor": "white", "savefig.facecolor": "white", "savefig.dpi": 110, "savefig.bbox": "tight",
    "image.cmap": "gray",
}


class Figure(matplotlib.figure.Figure):
    """A matplotlib Figure that renders in the house style: `png()` for files, `_repr_png_` for Jupyter."""

    def png(self) -> bytes:
        buffer = io.BytesIO()
        with matplotlib.rc_context(STYLE):
            self.savefig(buffer, format="png")
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()


def _styled(build):
    """Build the figure under the house style; tick marks made now keep it when drawn later."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            fig = build(*args, **kwargs)
            for ax in fig.axes:  # ticks are made lazily; later ones copy the first one's style
                ax.xaxis.get_major_ticks(1)
                ax.yaxis.get_major_ticks(1)
        return fig

    return wrapper


def _as_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float 0..1 images as float32 in [0, 1]."""
    images = np.asarray(images)
    return images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)


@_styled
def label_distribution_figure(counts: list[int]) -> Figure:
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    bars = ax.bar(range(10), counts, color=BLUE)
    ax.bar_label(bars, fontsize=8, padding=2)
    ax.set(xticks=range(10), xlabel="digit", ylabel="training images (count)",
           title=f"Label distribution ({sum(counts):,} training images)")
    ax.grid(axis="x", visible=False)
    return fig


@_styled
def image_grid_figure(images: np.ndarray, titles: list[str], ncols: int, title: str) -> Figure:
    """Images (N, 28, 28), uint8 or float in [0, 1], white ink on black, each with a caption above.

    Drawn as one mosaic in one axes (one axes per image is several times slower to render).
    """
    images = _as_float_images(images)
    nrows = max(1, math.ceil(len(images) / ncols))
    cell_w, cell_h = 28 + 4, 28 + 12  # room between images and for a caption above each
    mosaic = np.ones((nrows * cell_h, ncols * cell_w), dtype=np.float32)  # white paper
    fig = Figure(figsize=(ncols * 0.95, nrows * 1.2 + 0.3))
    ax = fig.subplots()
    for k, (image, caption) in enumerate(zip(images, titles)):
        row, col = divmod(k, ncols)
        top, left = row * cell_h + 10, col * cell_w + 2
        mosaic[top:top + 28, left:left + 28] = image
        ax.text(left + 14, top - 2, caption, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title)
    return fig


def augmentation_figure(grid: np.ndarray, cfg, copies: int) -> Figure:
    """One row per original: the original, then `copies` random draws of `cfg`'s augmentation, as
    augment.augmented_grid makes them (float (R * (copies + 1), 28, 28))."""
    rows = len(grid) // (copies + 1)
    titles = [("original" if k == 0 else f"draw {k}") for _ in range(rows) for k in range(copies + 1)]
    title = (f"Augmentation: rotation ±{cfg.rotation_deg:g}°, zoom ±{100 * cfg.zoom:g}%, shift ±{100 * cfg.shift:g}%"
             + (f", elastic alpha {cfg.elastic_alpha:g} px, sigma {cfg.elastic_sigma:g} px" if cfg.elastic_alpha else ""))
    return image_grid_figure(grid, titles, copies + 1, title)


@_styled
def training_curves_figure(history: list[dict], lr_steps: tuple[np.ndarray, np.ndarray] | None = None) -> Figure:
    """Loss, accuracy and learning rate per epoch. `lr_steps` = (epoch position, rate) of every
    step, for schedules that change the rate within an epoch (history keeps its first value)."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(12, 3.4))
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    marker = "o" if len(epochs) < 40 else None
    for ax, key, scale in ((ax_loss, "loss", 1), (ax_acc, "acc", 100)):
        for split, color in (("train", BLUE), ("val", VERMILLION)):
            values = [row[f"{split}_{key}"] * scale for row in history]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker=marker, color=color,
                        label="train (augmented batches)" if split == "train" else "validation")
        ax.legend()
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy (nats per image)")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    if lr_steps is not None:
        ax_lr.plot(lr_steps[0], lr_steps[1], color=GREEN)
        ax_lr.set_title("Learning rate (every step)")
    else:
        ax_lr.plot(epochs, [row["lr"] for row in history], marker=marker, color=GREEN, drawstyle="steps-post")
        ax_lr.set_title("Learning rate")
    ax_lr.set(xlabel="epoch", ylabel="learning rate (log scale)", yscale="log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


@_styled
def confusion_figure(cm: np.ndarray, normalise: bool) -> Figure:
    """Rows: true class; columns: predicted class. Counts, or each row as % of the true class."""
    cm = np.asarray(cm)
    values = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalise else cm
    fig = Figure(figsize=(5.6, 5))
    ax = fig.subplots()
    shown = ax.imshow(values, cmap="Blues", vmin=0)
    ax.grid(False)
    high = values.max() / 2
    for t in range(10):
        for p in range(10):
            text = f"{values[t, p]:.1f}" if normalise else f"{int(values[t, p])}"
            if normalise and values[t, p] == 0:
                text = "0"
            ax.text(p, t, text, ha="center", va="center", fontsize=7 if normalise else 8,
                    color="white" if values[t, p] > high else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted digit", ylabel="true digit",
           title="Confusion matrix, % of each true digit" if normalise else "Confusion matrix (image counts)")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="% of row" if normalise else "images")
    return fig


@_styled
def mistakes_figure(preds, mistakes: list[dict], ncols: int = 4) -> Figure:
    """Each mistake (evaluate.confident_mistakes) of a predictions record: its image and, below it,
    the probabilities of all 10 digits as bars (the predicted digit vermillion, the true one blue).
    One axes, units of image pixels."""
    cell_w, cell_h = 44, 76
    bar_top, bar_height = 12 + 28 + 4, 22  # caption, image, gap; bars for p = 0..1
    ncols = max(1, min(ncols, len(mistakes)))
    nrows = max(1, math.ceil(len(mistakes) / ncols))
    mosaic = np.ones((nrows * cell_h, ncols * cell_w), dtype=np.float32)
    fig = Figure(figsize=(ncols * 2.4, nrows * 2.4 * cell_h / cell_w))
    ax = fig.subplots()
    xs = np.arange(10) * 3.8 + 4  # bar centres within a cell
    for k, m in enumerate(mistakes):
        row, col = divmod(k, ncols)
        top, left = row * cell_h, col * cell_w
        mosaic[top + 12:top + 40, left + 8:left + 36] = preds.images[m["index"]] / 255.0
        ax.text(left + 22, top + 10, f"id {m['id']}: predicted {m['pred']}, true {m['true']}",
                ha="center", va="bottom", fontsize=8)
        base = top + bar_top + bar_height
        colors = [GREY] * 10
        colors[m["pred"]], colors[m["true"]] = VERMILLION, BLUE
        ax.add_patch(Rectangle((left + 1.5, base - bar_height), 41, bar_height, color="#f2f2f2", lw=0))
        ax.bar(left + xs, -bar_height * preds.probs[m["index"]], bottom=base, width=2.9, color=colors)
        for digit, x in enumerate(xs):
            ax.text(left + x, base + 1, str(digit), ha="center", va="top", fontsize=6.5)
        ax.text(left + 1, base - bar_height, "1", ha="right", va="center", fontsize=6, color="#666")
        ax.text(left + 1, base, "0", ha="right", va="center", fontsize=6, color="#666")
    ax.imshow(mosaic, vmin=0, vmax=1, interpolation="nearest", extent=(0, mosaic.shape[1], mosaic.shape[0], 0))
    ax.set(xlim=(0, mosaic.shape[1]), ylim=(mosaic.shape[0], 0))
    ax.axis("off")
    ax.set_title("Probability of each digit (0 to 1): predicted vermillion, true blue")
    return fig


@_styled
def reliability_figure(calib: dict, before: dict | None = None) -> Figure:
    """evaluate.calibration's bins: accuracy against mean confidence, and how many images each bin holds.

    `before`: the same images' bins with every temperature 1 (the uncalibrated model), drawn over them
    as accuracy against mean confidence per bin, with its own counts.
    """
    bins = calib["bins"]
    width = bins[0]["high"] - bins[0]["low"]
    lows = [b["low"] for b in bins]
    fig = Figure(figsize=(5.6, 5.6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    ax.plot([0, 1], [0, 100], color=GREY, linestyle="--", label="perfect calibration")
    which = "calibrated: " if before is not None else ""
    ax.bar(lows, [100 * (b["accuracy"] or 0) for b in bins], width=width, align="edge", color=BLUE,
           edgecolor="white", label=f"{which}accuracy in bin")
    filled = [b for b in bins if b["count"]]
    ax.plot([b["confidence"] for b in filled], [100 * b["confidence"] for b in filled], "D", color=VERMILLION,
            markersize=4, label=f"{which}mean confidence in bin")
    title = f"Reliability ({calib['n_bins']} bins), ECE {100 * calib['ece']:.2f}%"
    if before is not None:
        shown = [b for b in before["bins"] if b["count"]]
        ax.plot([b["confidence"] for b in shown], [100 * b["accuracy"] for b in shown], "o-", color=ORANGE,
                markersize=4, label="uncalibrated: accuracy at the bin's mean confidence")
        title = f"Reliability ({calib['n_bins']} bins), ECE {100 * calib['ece']:.2f}% (uncalibrated {100 * before['ece']:.2f}%)"
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), xlim=(0, 1), title=title)
    ax.legend(loc="upper left" if before is None else "lower left", fontsize="small")
    ax_count.bar(lows, [b["count"] for b in bins], width=width, align="edge", color=GREY, edgecolor="white",
                 label="calibrated" if before is not None else None)
    if before is not None:
        ax_count.step([b["low"] for b in before["bins"]] + [1.0],
                      [b["count"] for b in before["bins"]] + [before["bins"][-1]["count"]], where="post",
                      color=ORANGE, label="uncalibrated")
        ax_count.legend(loc="upper left", fontsize="small")
    ax_count.set(yscale="log", xlabel="confidence (top-class probability)", ylabel="images (log)")
    fig.tight_layout()
    return fig


@_styled
def comparison_figure(histories: list[list[dict]], labels: list[str]) -> Figure:
    """Several runs' per-epoch histories overlaid: validation accuracy and loss, training loss, learning rate."""
    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2)
    panels = [("val_acc", 100, "Validation accuracy", "accuracy (%)"),
              ("val_loss", 1, "Validation loss", "cross-entropy (nats per image)"),
              ("train_loss", 1, "Training loss (augmented batches)", "cross-entropy (nats per image)"),
              ("lr", 1, "Learning rate", "learning rate (log scale)")]
    styles, markers = ["-", "--", "-.", ":"], "osD^v<>p"  # runs that coincide stay visible
    for ax, (key, scale, title, ylabel) in zip(axes.flat, panels):
        for k, (history, label) in enumerate(zip(histories, labels)):
            if history:
                ax.plot([r["epoch"] for r in history], [r[key] * scale for r in history],
                        color=PALETTE[k % len(PALETTE)], linestyle=styles[k % len(styles)],
                        marker=markers[k % len(markers)] if len(history) < 40 else None, markersize=4,
                        drawstyle="steps-post" if key == "lr" else "default", label=label)
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
        if key == "lr":
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncols=min(len(names), 4), bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 4), 1, 1))
    return fig


# ---------------------------------------------------------------------------------------------
# one-call plots for notebooks: they take what a user holds (see data.as_digits)


def plot_digits(data, y=None, n: int = 32, ncols: int = 8, title: str | None = None) -> Figure:
    """The first `n` images of `data` with their labels (or '?' where there are none).

    >>> import digitrec as dr
    >>> dr.plot_digits(dr.load_mnist("test"), n=16)  # doctest: +SKIP
    """
    digits = as_digits(data, y)
    images = digits.images[:n]
    labels = digits.labels[:n] if digits.labels is not None else [None] * len(images)
    titles = [f"id {i}: {'?' if y is None else y}" for i, y in zip(digits.ids[:n], labels)]
    return image_grid_figure(images, titles, min(ncols, max(len(images), 1)),
                             title or f"{len(images)} of {len(digits):,} images, with labels")


def plot_label_counts(data, y=None) -> Figure:
    """A bar chart of how many images of each digit `data` holds (it needs labels).

    >>> dr.plot_label_counts(dr.load_mnist("train"))  # doctest: +SKIP
    """
    digits = as_digits(data, y, need_labels=True)
    return label_distribution_figure(np.bincount(digits.labels, minlength=10).tolist())
