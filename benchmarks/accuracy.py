"""Accuracy of the presets over seeds, with test-time augmentation (TTA) and as an ensemble.

For each preset, trains `--seeds` models on the official 60,000 MNIST training images: model i
uses seed + i and validation split val_seed + i (and deskews its inputs when i is odd, for a preset
with alternate_deskew), so the first K models are exactly the members of
`digitrec train --preset P --ensemble K`; they are combined into that ensemble for every K from 2
to --seeds (OUT/P/ensemble-K). Every model and ensemble is scored once on the official 10,000 test
images, plain, and with TTA (the models and the largest ensemble). Whether TTA helps is decided on
each model's own validation images when the preset holds some out (an ensemble has none: every
image was seen by some member); the test set only reports.

Prints a Markdown table: mean ± standard deviation over seeds, plain and deskewed models apart (an
ensemble is one run), and training time per model; writes the numbers to OUT/accuracy.json. Rerun
with the same --out to resume, or with more --seeds to add members.
    python benchmarks/accuracy.py --presets seed --seeds 3 [--out runs/accuracy]
    python benchmarks/accuracy.py --presets seed --seeds 2 --epochs 1 --train-images 1000 --test-images 500  # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from digitrec.nets.weights import environment, load_run_model
from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.core.metrics import Predictions
from digitrec.nets.predict import evaluate_run, tta_probs
from digitrec.core.files import InputError, read_json, write_json
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import setup_process
from digitrec.training.ensemble import combine_runs, member_config, train_member


def mean_std(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    values = [scale * v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "—"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def median_range(values: list[float]) -> str:
    """Median (min-max): one run that shared the CPU does not drag the figure as a mean would."""
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def score_once(run_dir: Path, test, name: str, tta: bool) -> float:
    """Accuracy on the test images, scored once: a saved evaluation of the same name is reused."""
    saved = run_dir / f"evaluation_{name}{'-tta' if tta else ''}.json"
    if saved.is_file():
        return read_json(saved)["accuracy"]
    preds = evaluate_run(run_dir, test, name, tta=tta)
    return float((preds.y_pred == preds.y_true).mean())


def val_tta_accuracy(run_dir: Path) -> float | None:
    """The model's accuracy with TTA on its own validation images (saved by fit); None without any
    (a preset that trains on every image)."""
    if not (run_dir / "predictions_val.npz").is_file():
        return None
    val = Predictions.load(run_dir / "predictions_val.npz")
    model, _, _ = load_run_model(run_dir)
    probs = tta_probs(model, val.images)
    return float((probs.argmax(1) == val.y_true).mean())


def benchmark_preset(preset: str, args, train, test, test_name: str) -> dict:
    overrides = {"epochs": args.epochs} if args.epochs else {}
    if args.val_fraction is not None:
        overrides["val_fraction"] = args.val_fraction
    cfg = make_config(preset, **overrides)
    out = Path(args.out) / preset
    print(f"\n== {preset}: {args.seeds} models of {cfg.epochs} epochs -> {out}", flush=True)
    models = []
    for i in range(args.seeds):
        run_dir = train_member(cfg, i, args.seeds, train, out, resume=True, quiet=args.quiet)
        metrics = read_json(run_dir / "metrics.json")
        models.append({
            "run": str(run_dir), "seed": cfg.seed + i, "deskew": member_config(cfg, i).deskew,
            "train_seconds": metrics["train_seconds"],
            "val": metrics.get("val_accuracy"), "val_tta": val_tta_accuracy(run_dir),
            "test": score_once(run_dir, test, test_name, tta=False),
            "test_tta": score_once(run_dir, test, test_name, tta=True),
        })
        m = models[-1]
        val = (f"val {100 * m['val']:.2f}% (TTA {100 * m['val_tta']:.2f}%), " if m["val_tta"] is not None
               else "no validation images, ")
        kind = ", deskewed" if m["deskew"] else ""
        print(f"  seed {m['seed']}{kind}: {val}test {100 * m['test']:.2f}% (TTA {100 * m['test_tta']:.2f}%), "
              f"{m['train_seconds'] / 60:.1f} min", flush=True)

    ensembles = []  # the first K members, for every K: exactly `digitrec train --preset P --ensemble K`
    for k in range(2, args.seeds + 1):
        ens_dir = out / f"ensemble-{k}"
        if not (ens_dir / "model.safetensors").is_file():
            combine_runs([m["run"] for m in models[:k]], ens_dir)
        ensembles.append({"run": str(ens_dir), "size": k,
                          "train_seconds": sum(m["train_seconds"] for m in models[:k]),
                          "test": score_once(ens_dir, test, test_name, tta=False),
                          "test_tta": score_once(ens_dir, test, test_name, tta=True) if k == args.seeds else None})
        e = ensembles[-1]
        tta = f" (TTA {100 * e['test_tta']:.2f}%)" if e["test_tta"] is not None else ""
        print(f"  ensemble of {k}: test {100 * e['test']:.2f}%{tta}", flush=True)
    tta_gain = [m["val_tta"] - m["val"] for m in models if m["val_tta"] is not None]
    return {"preset": preset, "epochs": cfg.epochs, "models": models, "ensembles": ensembles,
            "tta_val_gain": tta_gain, "tta_helps_on_validation": statistics.mean(tta_gain) > 0 if tta_gain else None}


def table(results: list[dict], n_test: int) -> str:
    lines = [f"| preset | models | epochs | training time per model (min, median (range)) | validation accuracy (%) | "
             f"validation with TTA (%) | test accuracy (%, {n_test:,} images) | test with TTA (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for deskew in (False, True):  # a preset with alternate_deskew has members of both kinds
            models = [m for m in r["models"] if m["deskew"] == deskew]
            if not models:
                continue
            lines.append(f"| {r['preset']}{', deskewed' if deskew else ''} | {len(models)} seeds | {r['epochs']} | "
                         f"{median_range([m['train_seconds'] / 60 for m in models])} | "
                         f"{mean_std([m['val'] for m in models])} | {mean_std([m['val_tta'] for m in models])} | "
                         f"{mean_std([m['test'] for m in models])} | {mean_std([m['test_tta'] for m in models])} |")
        for e in r["ensembles"]:
            tta = f"{100 * e['test_tta']:.2f}" if e["test_tta"] is not None else "—"
            lines.append(f"| {r['preset']}, ensemble | first {e['size']} seeds | {r['epochs']} | "
                         f"{e['train_seconds'] / 60:.1f} (all members) | — | — | {100 * e['test']:.2f} | {tta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="seed", help="comma-separated preset names")
    parser.add_argument("--seeds", type=int, default=3, help="models per preset (>= 2; they form the ensembles)")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="hold out this fraction of the training images (default: the preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the physical cores)")
    parser.add_argument("--train-images", type=int, default=None, help="train on the first N images only (smoke runs)")
    parser.add_argument("--test-images", type=int, default=None, help="score the first N test images only (smoke runs)")
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: a standard deviation and an ensemble need two models")

    setup_process(RuntimeConfig(threads=args.threads))  # as `digitrec train` does
    train, test = load_mnist("train"), load_mnist("test")
    test_name = "test"
    if args.train_images:
        train = train.subset(np.arange(args.train_images), f"mnist:train[:{args.train_images}]")
    if args.test_images:
        test = test.subset(np.arange(args.test_images), f"mnist:test[:{args.test_images}]")
        test_name = f"test-first{args.test_images}"  # never mixed up with a full-test-set score
    env = environment()
    print(f"{env['cpu']}, {env['cpu_count']} CPUs, torch {env['torch']}; training on {len(train):,} images "
          f"({train.source}), testing on {len(test):,} ({test.source})")

    start = time.perf_counter()
    try:
        results = [benchmark_preset(p.strip(), args, train, test, test_name)
                   for p in args.presets.split(",") if p.strip()]
    except (InputError, ValueError) as e:  # e.g. an --out holding runs of another config
        sys.exit(f"error: {e}")
    write_json(Path(args.out) / "accuracy.json", {"environment": env, "train": train.source, "test": test.source,
                                                  "results": results})
    print(f"\n{table(results, len(test))}\n")
    for r in results:
        if r["tta_helps_on_validation"] is None:
            print(f"TTA on validation, {r['preset']}: not measured (the preset trains on every image; "
                  f"judge TTA with --val-fraction 0.1)")
            continue
        gain = mean_std(r["tta_val_gain"])
        print(f"TTA on validation, {r['preset']}: {gain} percentage points over {len(r['tta_val_gain'])} models: "
              f"{'helps' if r['tta_helps_on_validation'] else 'does not help'}")
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min; numbers in {Path(args.out) / 'accuracy.json'}")


if __name__ == "__main__":
    main()
