"""Accuracy of the presets over seeds, with test-time augmentation (TTA) and as an ensemble.

For each preset, trains `--seeds` models on the official 60,000 MNIST training images: model i
uses seed + i and validation split val_seed + i, so the models are exactly the members of
`digitrec train --preset P --ensemble K`, and they are combined into that ensemble. Every model and
the ensemble are scored once on the official 10,000 test images, plain and with TTA. Whether TTA
helps is decided on each model's own validation images (an ensemble has none: every image was
seen by some member); the test set only reports.

Prints a Markdown table: mean ± standard deviation over seeds (the ensemble is one run), training
time per model, and writes the numbers to OUT/accuracy.json. Rerun with the same --out to resume.
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

from digitrec.checkpoint import environment, load_run_model
from digitrec.config import make_config
from digitrec.data import load_mnist
from digitrec.evaluate import Predictions, evaluate_run, tta_probs
from digitrec.files import InputError, read_json, write_json
from digitrec.train import train_ensemble


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    values = [scale * v for v in values]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "—"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def score_once(run_dir: Path, test, name: str, tta: bool) -> float:
    """Accuracy on the test images, scored once: a saved evaluation of the same name is reused."""
    saved = run_dir / f"evaluation_{name}{'-tta' if tta else ''}.json"
    if saved.is_file():
        return read_json(saved)["accuracy"]
    preds = evaluate_run(run_dir, test, name, tta=tta)
    return float((preds.y_pred == preds.y_true).mean())


def val_tta_accuracy(run_dir: Path) -> float:
    """The model's accuracy with TTA on its own validation images (saved by fit)."""
    val = Predictions.load(run_dir / "predictions_val.npz")
    model, cfg, _ = load_run_model(run_dir)
    probs = tta_probs(model, val.images, batch_size=cfg.eval_batch_size)
    return float((probs.argmax(1) == val.y_true).mean())


def benchmark_preset(preset: str, args, train, test, test_name: str) -> dict:
    overrides = {"epochs": args.epochs} if args.epochs else {}
    if args.threads:
        overrides["threads"] = args.threads
    cfg = make_config(preset, **overrides)
    out = Path(args.out) / preset
    print(f"\n== {preset}: {args.seeds} models of {cfg.epochs} epochs -> {out}", flush=True)
    metrics = train_ensemble(cfg, train, out, size=args.seeds, resume=(out / "config.json").is_file(),
                             quiet=args.quiet)
    models = []
    for member in metrics["members"]:
        run_dir = out / member["run"]
        models.append({
            "run": str(run_dir), "seed": member["seed"], "val_seed": member["val_seed"],
            "train_seconds": member["train_seconds"], "val": member["val_accuracy"],
            "val_tta": val_tta_accuracy(run_dir),
            "test": score_once(run_dir, test, test_name, tta=False),
            "test_tta": score_once(run_dir, test, test_name, tta=True),
        })
        print(f"  seed {member['seed']}: val {100 * models[-1]['val']:.2f}% (TTA {100 * models[-1]['val_tta']:.2f}%), "
              f"test {100 * models[-1]['test']:.2f}% (TTA {100 * models[-1]['test_tta']:.2f}%), "
              f"{member['train_seconds'] / 60:.1f} min", flush=True)
    ensemble = {"run": str(out), "size": len(models), "train_seconds": metrics["train_seconds"],
                "test": score_once(out, test, test_name, tta=False),
                "test_tta": score_once(out, test, test_name, tta=True)}
    tta_gain = [m["val_tta"] - m["val"] for m in models]
    return {"preset": preset, "epochs": cfg.epochs, "models": models, "ensemble": ensemble,
            "tta_val_gain": tta_gain, "tta_helps_on_validation": statistics.mean(tta_gain) > 0}


def table(results: list[dict], n_test: int) -> str:
    lines = [f"| preset | models | epochs | training time per model (min) | validation accuracy (%) | "
             f"validation with TTA (%) | test accuracy (%, {n_test:,} images) | test with TTA (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        models = r["models"]
        lines.append(f"| {r['preset']} | {len(models)} seeds | {r['epochs']} | "
                     f"{mean_std([m['train_seconds'] for m in models], 1 / 60, 1)} | "
                     f"{mean_std([m['val'] for m in models])} | {mean_std([m['val_tta'] for m in models])} | "
                     f"{mean_std([m['test'] for m in models])} | {mean_std([m['test_tta'] for m in models])} |")
        e = r["ensemble"]
        lines.append(f"| {r['preset']}, ensemble | 1 of {e['size']} members | {r['epochs']} | "
                     f"{e['train_seconds'] / 60:.1f} (all members) | — | — | {100 * e['test']:.2f} | "
                     f"{100 * e['test_tta']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="seed", help="comma-separated preset names")
    parser.add_argument("--seeds", type=int, default=3, help="models per preset (>= 2; they form the ensemble)")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    parser.add_argument("--train-images", type=int, default=None, help="train on the first N images only (smoke runs)")
    parser.add_argument("--test-images", type=int, default=None, help="score the first N test images only (smoke runs)")
    parser.add_argument("--out", default="runs/accuracy")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: a standard deviation and an ensemble need two models")

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
        gain = mean_std(r["tta_val_gain"])
        print(f"TTA on validation, {r['preset']}: {gain} percentage points over {len(r['models'])} models: "
              f"{'helps' if r['tta_helps_on_validation'] else 'does not help'}")
    print(f"wall time {(time.perf_counter() - start) / 60:.1f} min; numbers in {Path(args.out) / 'accuracy.json'}")


if __name__ == "__main__":
    main()
