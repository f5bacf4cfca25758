"""The run report: every figure and table of a run in one self-contained HTML file.

Compute once, render many times: the numbers come from the run's saved files (config.json,
metrics.json, history.csv and one predictions record through `summarize` and `calibration`);
nothing is re-trained or re-predicted. Each figure is also written as a PNG in RUN/figures/.
The page embeds its images as data URIs and loads nothing else (a CSP meta tag enforces it).
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.config import TrainConfig, config_from_dict
from ..core.metrics import Predictions, reliability, most_confused_pairs, summarize
from ..core.rundir import CONFIG, FIGURES, REPORT, Run, predictions_file
from ..nets.augment import AUGMENT_SEED, AUGMENTED_COPIES, AUGMENTED_ROWS, augmented_grid
from ..training.optim import build_optimizer, build_scheduler, steps_per_epoch
from ..core.figures import (augmentation_figure, comparison_figure,
                      confusion_figure, image_grid_figure, label_distribution_figure, mistakes_figure,
                      reliability_figure, training_curves_figure)
from ..core.files import InputError, atomic_write

SAMPLE_IMAGES = 32  # sample grid: 4 rows of 8


@dataclass(frozen=True)
class RunFiles:
    """What a run directory holds, read once; None (or empty) where a file is missing."""
    run_dir: Path
    config: dict
    metrics: dict | None
    history: list[dict]
    preds: Predictions | None
    preds_file: str | None  # "predictions_test.npz" or "predictions_val.npz"

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_run(run_dir: str | os.PathLike) -> RunFiles:
    """Read a run's files (each checked against its digest); missing ones are None. A directory
    without config.json is not a run."""
    run = Run(run_dir)
    run.require(CONFIG)
    scored = run.scored_set()
    return RunFiles(run.path, run.config(), run.metrics() or None, run.history(),
                    run.predictions(scored) if scored else None, predictions_file(scored) if scored else None)


# ---------------------------------------------------------------------------------------------
# HTML pieces; every string from a file or a run goes through html.escape

CSS = """
:root { color-scheme: light; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 72rem; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .2rem 0; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
img { max-width: 100%; height: auto; display: block; margin: .6rem 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 24rem), 1fr)); gap: 1rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; font-size: .92rem; font-variant-numeric: tabular-nums; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e6e6e6; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.kv td:last-child { text-align: left; white-space: normal; overflow-wrap: anywhere; }
.headline { font-size: 1.15rem; }
.missing { color: #8a4b00; background: #fff5e6; border-left: 4px solid #e69f00; padding: .4rem .7rem; }
.muted { color: #666; font-size: .9rem; }
details summary { cursor: pointer; margin: .8rem 0 .3rem; font-weight: 600; }
@media (max-width: 40rem) { body { padding: .6rem; } th, td { padding: .2rem .4rem; } }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _section(section_id: str, title: str, parts: list[str]) -> str:
    return f"<section id=\"{section_id}\">\n<h2>{_e(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def _img(png: bytes, alt: str) -> str:
    return f"<img src=\"data:image/png;base64,{base64.b64encode(png).decode('ascii')}\" alt=\"{_e(alt)}\">"


def _table(header: list[str], rows: list[list], css_class: str = "") -> str:
    head = "".join(f"<th scope=\"col\">{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>\n" for row in rows)
    class_attr = f" class=\"{css_class}\"" if css_class else ""
    return f"<div class=\"scroll\"><table{class_attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>"


def _kv_table(pairs: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{_e(k)}</th><td>{_e(v)}</td></tr>\n" for k, v in pairs)
    return f"<div class=\"scroll\"><table class=\"kv\"><tbody>\n{rows}</tbody></table></div>"


def _p(text: str, css_class: str = "") -> str:
    class_attr = f" class=\"{css_class}\"" if css_class else ""
    return f"<p{class_attr}>{_e(text)}</p>"


def _missing(text: str) -> str:
    return _p(text, "missing")


NO_VALUE = "—"  # a number the run does not have (validation scores of a run without a hold-out)


def _pct(x: float, digits: int = 2) -> str:
    return NO_VALUE if math.isnan(x) else f"{100 * x:.{digits}f}%"


def _number(x: float, digits: int = 4) -> str:
    return NO_VALUE if math.isnan(x) else f"{x:.{digits}f}"


def _member_epochs(members: list[dict]) -> str:
    """An ensemble has no history of its own: say what its members trained."""
    epochs = [m.get("epochs") for m in members]
    each = f"{epochs[0]} each" if len(set(epochs)) == 1 else ", ".join(map(str, epochs))
    return f"{len(members)} members, {each}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def evaluated_on(run: RunFiles, short: bool = False) -> str:
    """Which images the scored sections describe, in words."""
    if run.preds is None:
        return "no predictions"
    n = f"{len(run.preds.ids):,} images"
    if short:
        return f"{'test' if run.preds_file == predictions_file('test') else 'validation'} ({n})"
    if run.preds_file == predictions_file("test"):
        return f"test set ({n}, {run.preds_file})"
    return f"validation hold-out ({n}, {run.preds_file}; no test predictions in this run)"


# ---------------------------------------------------------------------------------------------
# the report


class _Figures:
    """Collects (name, png) pairs: each is written to figures/<name>.png and embedded in the page."""

    def __init__(self):
        self.pngs: dict[str, bytes] = {}

    def add(self, name: str, alt: str, make_figure, *args, **kwargs) -> str:
        png = make_figure(*args, **kwargs).png()
        self.pngs[name] = png
        return _img(png, alt)


def write_report(run_dir: str | os.PathLike, top_mistakes: int = 24) -> Path:
    """Write RUN/report.html and RUN/figures/*.png from the run's saved files. Returns the page's path.

    >>> write_report("runs/fast")  # doctest: +SKIP
    PosixPath('runs/fast/report.html')
    """
    if top_mistakes < 1:
        raise InputError(f"top mistakes must be at least 1, not {top_mistakes}")
    run = read_run(run_dir)
    summary = summarize(run.preds, top_mistakes) if run.preds is not None and run.preds.has_labels else None
    calib = reliability(run.preds) if summary is not None else None
    before = run.preds.uncalibrated() if summary is not None else None
    calib_before = reliability(before) if before is not None else None
    figures = _Figures()
    sections = [
        _summary_section(run, summary, calib),
        _data_section(run, figures),
        _curves_section(run, figures),
        _confusion_section(summary, figures),
        _per_class_section(summary),
        _mistakes_section(run, summary, top_mistakes, figures),
        _calibration_section(run, summary, calib, calib_before, figures),
    ]
    title = f"digitrec run {run.name}"
    body = (f"<header><h1>{_e(title)}</h1>"
            f"{_p(f'{run.run_dir.resolve()}', 'muted')}</header>\n" + "\n".join(sections))
    folder = Run(run.run_dir)
    for name, png in figures.pngs.items():
        folder.write_bytes(f"{FIGURES}/{name}.png", png)
    return folder.write_text(REPORT, _page(title, body))


def _summary_section(run: RunFiles, summary: dict | None, calib: dict | None) -> str:
    parts = []
    metrics = run.metrics or {}
    env = metrics.get("environment") or {}
    if summary is not None:
        low, high = summary["accuracy_ci95"]
        headline = (f"{_pct(summary['accuracy'], 3)} accuracy on the {evaluated_on(run)}: {summary['errors']} errors "
                    f"in {summary['n']:,} images; 95% confidence interval {_pct(low)} to {_pct(high)} (Wilson); "
                    f"mean loss {summary['loss']:.4f} nats; ECE {_pct(calib['ece'])}.")
        parts.append(_p(headline, "headline"))
    elif run.preds is not None:
        parts.append(_missing(f"The predictions in {run.preds_file} have no labels: no accuracy, confusion "
                              "matrix, per-class scores, mistakes or calibration can be computed."))
    else:
        parts.append(_missing("No predictions yet (neither predictions_test.npz nor predictions_val.npz): "
                              "no accuracy, confusion matrix, per-class scores, mistakes or calibration."))
    if run.metrics is None:
        parts.append(_missing("No metrics.json: the run has not finished, so parameters, training time, "
                              "machine and versions are unknown."))
    cfg = run.config
    epochs_done = len(run.history)
    pairs = [
        ("training data", metrics.get("data", "unknown")),
        ("split", f"{metrics['n_train']:,} train / {metrics['n_val']:,} validation images "
                  f"(val_fraction {cfg.get('val_fraction')}, seed {cfg.get('val_seed')}"
                  f"{', stratified' if cfg.get('stratify') else ''})" if "n_train" in metrics else "unknown"),
        ("scored on", evaluated_on(run)),
        ("preset", cfg.get("preset", "unknown")),
        ("model", f"{metrics.get('model') or cfg.get('model', 'unknown')}"  # metrics names ensembles
                  + (f", {metrics['parameters']:,} parameters" if "parameters" in metrics else "")),
        ("epochs", _member_epochs(metrics["members"]) if "members" in metrics
         else f"{epochs_done} of {cfg.get('epochs', '?')} done"),
        ("training time", f"{_seconds(metrics['train_seconds'])}, {metrics.get('images_per_second', 0):,.0f} "
                          "images/s (training and validation)" if "train_seconds" in metrics else "unknown"),
        ("machine", f"{env.get('cpu', 'unknown')}, {env.get('cpu_count', '?')} CPUs, "
                    f"{env.get('torch_threads', '?')} torch threads; {env.get('platform', '')}" if env else "unknown"),
        ("versions", ", ".join(f"{k} {env[k]}" for k in ("digitrec", "torch", "numpy", "python") if env.get(k))
         or "unknown"),
        ("git commit", env.get("git_commit") or "unknown"),
    ]
    parts.append(_kv_table(pairs))
    parts.append(f"<details><summary>Resolved config ({len(cfg)} fields, from config.json)</summary>\n"
                 f"{_kv_table(sorted(cfg.items()))}</details>")
    return _section("summary", "Summary", parts)


def _data_section(run: RunFiles, figures: _Figures) -> str:
    parts = []
    counts = (run.metrics or {}).get("label_counts")
    if counts:
        parts.append(figures.add("label_distribution", "bar chart of training images per digit",
                                 label_distribution_figure, counts))
    else:
        parts.append(_missing("No label counts (metrics.json is missing or predates them)."))
    if run.preds is None or len(run.preds.ids) == 0:
        parts.append(_missing("No predictions record, so no sample images."))
        return _section("data", "Data", parts)
    images = run.preds.images[:SAMPLE_IMAGES]
    labels = run.preds.y_true[:SAMPLE_IMAGES]
    titles = [f"id {i}: {y}" if y >= 0 else f"id {i}: ?" for i, y in zip(run.preds.ids, labels)]
    parts.append(figures.add("samples", "grid of sample images with their labels", image_grid_figure,
                             images, titles, 8, f"Sample images from the {run.preds_file} record, with labels"))
    cfg = config_from_dict(run.config)
    if not cfg.augment:
        parts.append(_p("This run trains without augmentation (augment = false), so no augmented samples."))
        return _section("data", "Data", parts)
    parts.append(figures.add(
        "augmented", "grid of augmented samples: each row an original and random draws", augmentation_figure,
        augmented_grid(images[:AUGMENTED_ROWS], cfg, AUGMENTED_COPIES, AUGMENT_SEED), cfg, AUGMENTED_COPIES))
    parts.append(_p("Each row: an original and random draws of the run's augmentation (fixed seed "
                    f"{AUGMENT_SEED}; a rendering, not the draws seen in training).", "muted"))
    return _section("data", "Data", parts)


def learning_rate_steps(cfg: TrainConfig, n_train: int, epochs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rate of every step of the first `epochs` epochs, as (epoch position, rate), for a
    schedule that changes it within an epoch ('onecycle'; history.csv keeps one value an epoch);
    None for the others. It replays train's own scheduler on a stand-in parameter."""
    if cfg.schedule != "onecycle" or epochs < 1:
        return None
    n_steps = steps_per_epoch(n_train, cfg)
    if n_steps < 1:
        return None
    stand_in = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))])  # no draw from the global RNG
    optimizer = build_optimizer(stand_in, cfg)
    scheduler = build_scheduler(optimizer, cfg, n_steps)
    total = min(epochs, cfg.epochs) * n_steps
    rates = np.empty(total)
    for step in range(total):
        rates[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()  # no gradients: nothing moves, but the scheduler sees the usual order
        scheduler.step()
    return 1 + np.arange(total) / n_steps, rates  # epoch e starts at position e, as in history.csv


def run_learning_rate_steps(run: RunFiles) -> tuple[np.ndarray, np.ndarray] | None:
    n_train = (run.metrics or {}).get("n_train")
    if not run.history or n_train is None:
        return None
    return learning_rate_steps(config_from_dict(run.config), n_train, len(run.history))


def _curves_section(run: RunFiles, figures: _Figures) -> str:
    if not run.history:
        return _section("curves", "Training curves", [_missing("No finished epoch yet (history.csv is empty or missing).")])
    parts = [figures.add("training_curves", "training curves: loss, accuracy and learning rate per epoch",
                         training_curves_figure, run.history, run_learning_rate_steps(run))]
    rows = [[int(r["epoch"]), _number(r["train_loss"]), _pct(r["train_acc"]), _number(r["val_loss"]),
             _pct(r["val_acc"]), f"{r['lr']:.2e}", f"{r['seconds']:.1f}"] for r in run.history]
    parts.append(_table(["epoch", "train loss", "train acc", "val loss", "val acc", "learning rate", "seconds"], rows))
    if all(math.isnan(r["val_acc"]) for r in run.history):
        parts.append(_p("This run held out no validation images (val_fraction 0): the validation columns are empty.",
                        "muted"))
    return _section("curves", "Training curves", parts)


def _confusion_section(summary: dict | None, figures: _Figures) -> str:
    if summary is None:
        return _section("confusion", "Confusion matrix", [_missing("Needs labelled predictions.")])
    cm = np.array(summary["confusion_matrix"])
    parts = ["<div class=\"figs\">",
             figures.add("confusion_counts", "confusion matrix, image counts", confusion_figure, cm, False),
             figures.add("confusion_normalised", "confusion matrix, percent of each true digit",
                         confusion_figure, cm, True),
             "</div>", "<h3>Most-confused pairs</h3>"]
    pairs = most_confused_pairs(cm)
    if pairs:
        support = cm.sum(1)
        parts.append(_table(["true", "predicted as", "images", "% of true digit"],
                            [[t, p, n, _pct(n / support[t])] for t, p, n in pairs]))
    else:
        parts.append(_p("No mistakes."))
    return _section("confusion", "Confusion matrix", parts)


def _per_class_section(summary: dict | None) -> str:
    if summary is None:
        return _section("per-class", "Per-class scores", [_missing("Needs labelled predictions.")])
    rows = [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", f"{r['support']:,}"]
            for r in summary["per_class"]]
    return _section("per-class", "Per-class scores", [_table(["digit", "precision", "recall", "F1", "support"], rows)])


def _mistakes_section(run: RunFiles, summary: dict | None, top: int, figures: _Figures) -> str:
    title = "Most confident mistakes"
    if summary is None:
        return _section("mistakes", title, [_missing("Needs labelled predictions.")])
    mistakes = summary["confident_mistakes"]
    if not mistakes:
        return _section("mistakes", title, [_p("No mistakes.")])
    parts = [_p(f"The {len(mistakes)} misclassified images with the largest P(predicted) - P(true) "
                f"(of {summary['errors']} errors, top {top} asked). Bars: the probability of each digit; "
                "vermillion is the predicted digit, blue the true one.", "muted"),
             figures.add("mistakes", "gallery of the most confident mistakes with class probabilities",
                         mistakes_figure, run.preds, mistakes),
             _table(["id", "true", "predicted", "P(predicted)", "P(true)", "gap"],
                    [[m["id"], m["true"], m["pred"], f"{m['p_pred']:.4f}", f"{m['p_true']:.4f}", f"{m['gap']:.4f}"]
                     for m in mistakes])]
    return _section("mistakes", title, parts)


def _calibration_section(run: RunFiles, summary: dict | None, calib: dict | None, calib_before: dict | None,
                         figures: _Figures) -> str:
    if summary is None:
        return _section("calibration", "Calibration", [_missing("Needs labelled predictions.")])
    before = f"; uncalibrated (every temperature 1): {_pct(calib_before['ece'])}" if calib_before else ""
    parts = [_p(f"Expected calibration error: {_pct(calib['ece'])}{before} ({calib['n_bins']} equal-width bins on "
                "the top-class probability; 0 means the stated confidence matches the accuracy).", "headline")]
    fitted = (run.metrics or {}).get("calibration")
    if fitted:
        parts.append(_p(f"Temperature {fitted['temperature']:.3f}, fitted at the end of training on the "
                        f"{fitted['on']} ({fitted['n']:,} images the model did not train on): there, ECE "
                        f"{_pct(fitted['ece_before'])} before and {_pct(fitted['ece_after'])} after, mean loss "
                        f"{fitted['nll_before']:.4f} and {fitted['nll_after']:.4f} nats. Logits are divided by it; "
                        "no prediction changes."))
    elif calib_before is None:
        parts.append(_p("No temperature was fitted for this model, so it shows its probabilities as trained: it had "
                        "no held-out images to fit one on, or was trained before digitrec calibrated."))
    parts.append(figures.add("reliability", "reliability diagram: accuracy against confidence per bin",
                             reliability_figure, calib, calib_before))
    return _section("calibration", "Calibration", parts)


# ---------------------------------------------------------------------------------------------
# several runs side by side


def _run_labels(runs: list[RunFiles]) -> list[str]:
    names = [run.name for run in runs]
    return [run.name if names.count(run.name) == 1 else str(run.run_dir) for run in runs]


def write_comparison(run_dirs: list[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """One page overlaying the curves of several runs and tabulating accuracy, time and parameters."""
    if not run_dirs:
        raise InputError("compare needs at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    labels = _run_labels(runs)
    rows = []
    for run, label in zip(runs, labels):
        metrics = run.metrics or {}
        summary = summarize(run.preds) if run.preds is not None and run.preds.has_labels else None
        ci = summary["accuracy_ci95"] if summary else None
        rows.append([
            label, run.config.get("preset", "?"), run.config.get("model", "?"),
            f"{metrics['parameters']:,}" if "parameters" in metrics else "?",
            f"{len(run.history)} / {run.config.get('epochs', '?')}",
            _seconds(metrics["train_seconds"]) if "train_seconds" in metrics else "?",
            f"{metrics['images_per_second']:,.0f}" if "images_per_second" in metrics else "?",
            evaluated_on(run, short=True) if summary else "no labelled predictions",
            _pct(summary["accuracy"], 3) if summary else "?",
            f"{_pct(ci[0])} to {_pct(ci[1])}" if summary else "?",
            summary["errors"] if summary else "?",
        ])
    parts = [_p(f"{len(runs)} runs. Accuracy is on each run's test predictions where it has them, else on "
                "its validation hold-out (the 'scored on' column says which); the 95% interval is Wilson's.",
                "muted"),
             _table(["run", "preset", "model", "parameters", "epochs", "training time", "images/s",
                     "scored on", "accuracy", "95% CI", "errors"], rows)]
    if any(run.history for run in runs):
        parts.append(_img(comparison_figure([run.history for run in runs], labels).png(),
                          "curves of all runs overlaid: validation accuracy and loss, training loss, learning rate"))
    else:
        parts.append(_missing("None of these runs has a finished epoch: no curves."))
    missing = [label for run, label in zip(runs, labels) if not run.history]
    if missing and len(missing) < len(runs):
        parts.append(_missing(f"No finished epoch yet in: {', '.join(missing)}."))
    title = "digitrec: " + " vs ".join(labels)
    body = f"<header><h1>Comparison of {len(runs)} runs</h1></header>\n" + _section("runs", "Runs", parts)
    out_path = Path(out_path)
    with atomic_write(out_path, encoding="utf-8") as f:
        f.write(_page(title, body))
    return out_path
