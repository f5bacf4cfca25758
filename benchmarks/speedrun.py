"""Time to accuracy (issues 19, 26): a recipe against a baseline, side by side in one run.

The recipe is preset `--preset` (default `fast`) with `--set` overrides; the baseline is today's
`fast`, or the recipe `fast` replaced (`--baseline previous-fast`, the default when the recipe is
`fast` itself).

The job timed, in this one process, for each recipe and seed: load the built-in MNIST from the
cache, train (`train.fit`, as `digitrec train` does: checkpoints, calibration, files), then score
the official 10,000 test images (`evaluate_run`, as `digitrec evaluate` does; `fast` predicts by
test-time augmentation inside its model, so that is in the time). Seeds alternate between the two
recipes, so a machine that slows down slows both. Each test score is computed once per model.

Prints test accuracy (mean ± std over the seeds, and each seed), the median wall time of each
recipe, and the ratio of those medians: the machine's speed drifts from day to day, the ratio is
the figure that holds. Then the time-to-accuracy curve (untimed runs of the first seed, scored on
the test set after every epoch: for the README, never to choose anything).

With --validation, every choice is judged as it was made: the runs hold out 10% of the training
images (train_test_split's, val_seed 7), train on the rest, no calibration hold-out, and report
accuracy on that split instead of the test set, plain and with test-time augmentation (each
model is trained once, without its views, and scored both ways: the views change no weight), with
the training seconds (the wall time there includes validating after every epoch).
--precision bf16 runs the timed recipe under bf16 autocast (a runtime setting, not the recipe's); the
baseline runs at --baseline-precision (default auto: fp32 on a CPU, as `digitrec train` runs it).
--json FILE writes every figure (benchmarks/records.py reads it).
    python benchmarks/speedrun.py [--seeds 5] [--out runs/speedrun]
    python benchmarks/speedrun.py --validation --seeds 3 --set epochs=5 --set label_smoothing=0
    python benchmarks/speedrun.py --preset better --seeds 3 --no-curve  # issue 26's record against `fast`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import mean_std  # noqa: E402  (the same mean ± std as the accuracy tables)

from digitrec.nets.weights import environment, load_run_model
from digitrec.core.config import PRESETS, make_config
from digitrec.core.data import load_mnist
from digitrec.core.splits import split_validation
from digitrec.nets.predict import evaluate_run, predict_probs, tta_probs
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve, setup_process
from digitrec.training.train import fit

# `fast` until this record (commit 6775270): width 24, 6 epochs, one view per image
PREVIOUS_FAST = {"width": 24, "epochs": 6, "tta": False}
VALIDATION = {"val_fraction": 0.1, "val_seed": 7, "calibration_fraction": 0.0}


def timed_job(cfg, out_dir: Path, validation: bool, runtime=None) -> dict:
    """One run: data from the cache, training, then the test set scored. Returns accuracy, wall
    seconds and training seconds; with --validation, the held-out split's accuracy plain
    ("accuracy") and with test-time augmentation ("tta_accuracy"), the model trained without its
    views (the same weights as with them) and scored once each way."""
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    train = load_mnist("train")
    if validation:
        metrics = fit(dataclasses.replace(cfg, tta=False), train, out_dir, quiet=True, runtime=runtime)
        seconds = time.perf_counter() - start
        model, _, _ = load_run_model(out_dir)
        val = train.subset(split_validation(train.labels, cfg)[1])
        tta = float((tta_probs(model, val.images).argmax(1) == val.labels).mean())
        return {"accuracy": metrics["val_accuracy"], "tta_accuracy": tta, "seconds": seconds,
                "train_seconds": metrics["train_seconds"]}
    test = load_mnist("test")
    metrics = fit(cfg, train, out_dir, quiet=True, runtime=runtime)
    preds = evaluate_run(out_dir, test, "test")
    return {"accuracy": float((preds.y_pred == preds.y_true).mean()), "seconds": time.perf_counter() - start,
            "train_seconds": metrics["train_seconds"]}


def curve(cfg, out_dir: Path, runtime=None) -> list[tuple[int, float, float]]:
    """(epoch, training seconds so far, test accuracy) after every epoch of one untimed run."""
    test = load_mnist("test")
    points, start, scoring = [], time.perf_counter(), 0.0

    def score(epoch, model):
        nonlocal scoring
        began = time.perf_counter()
        accuracy = float((predict_probs(model, test.images).argmax(1) == test.labels).mean())
        points.append((epoch, began - start - scoring, accuracy))
        scoring += time.perf_counter() - began

    shutil.rmtree(out_dir, ignore_errors=True)
    fit(cfg, load_mnist("train"), out_dir, quiet=True, on_epoch=score, runtime=runtime)
    return points


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--preset", default="fast", choices=list(PRESETS), help="the recipe timed (default: fast)")
    parser.add_argument("--baseline", choices=["fast", "previous-fast", "none"],
                        help="timed beside it (default: fast; previous-fast when --preset is fast); none: "
                             "screening accuracy on the validation split alone")
    parser.add_argument("--validation", action="store_true",
                        help="judge on a 10%% validation split of the training images, not the test set")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a recipe field of --preset's recipe (repeatable), e.g. epochs=5")
    parser.add_argument("--precision", default="auto", help="runtime precision of the timed recipe (e.g. bf16)")
    parser.add_argument("--baseline-precision", default="auto", help="runtime precision of the baseline")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the physical cores)")
    parser.add_argument("--no-curve", action="store_true", help="skip the time-to-accuracy curve")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--out", default="runs/speedrun")
    args = parser.parse_args()
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    common = VALIDATION if args.validation else {}
    baseline = args.baseline or ("previous-fast" if args.preset == "fast" else "fast")

    threads = setup_process(RuntimeConfig(threads=args.threads))  # as `digitrec train` does
    runtimes = [resolve(RuntimeConfig(precision=p), threads=threads) for p in (args.precision, args.baseline_precision)]
    candidate = args.preset + ("-modified" if overrides else "")
    if candidate == baseline:
        parser.error(f"--preset {args.preset} without --set is the baseline itself")
    recipes = {candidate: (args.preset, overrides, runtimes[0])}
    if baseline != "none":
        recipes[baseline] = ("fast", PREVIOUS_FAST if baseline == "previous-fast" else {}, runtimes[1])
    env, load_start = environment(), os.getloadavg()
    precisions = " and ".join(dict.fromkeys(runtime.precision for _, _, runtime in recipes.values()))
    print(f"{env['cpu']}, {env['cpu_count']} CPUs, {threads} threads, {precisions}, torch {env['torch']}; "
          f"load average {' '.join(f'{x:.2f}' for x in load_start)}")
    results = {name: [] for name in recipes}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, (preset, recipe, runtime) in recipes.items():
            cfg = make_config(preset, **{**recipe, **common, "seed": seed})
            run = timed_job(cfg, Path(args.out) / f"{name}-{seed}", args.validation, runtime)
            results[name].append({"seed": seed, **run})
            tta = f" ({100 * run['tta_accuracy']:.2f}% with TTA)" if "tta_accuracy" in run else ""
            print(f"  {name}, seed {seed}: {100 * run['accuracy']:.2f}%{tta} in {run['seconds']:.1f} s "
                  f"(training {run['train_seconds']:.1f} s; load average {os.getloadavg()[0]:.2f})", flush=True)

    scored = "validation split (10% of the training images)" if args.validation else "official test set"
    tta_column = " | with TTA" if args.validation else ""
    print(f"\n| recipe | {scored}: accuracy (%), mean ± std over {args.seeds} seeds | each seed{tta_column} | "
          f"wall time, median (range) | ratio of medians | training time, median |\n|---|---|---|---|---|---|"
          + ("---|" if args.validation else ""))
    base_median = statistics.median(r["seconds"] for r in results[baseline if baseline != "none" else candidate])
    summary = {"validation": args.validation, "precision": precisions, "threads": threads,
               "environment": env, "load_average": {"start": load_start, "end": os.getloadavg()},
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "baseline": baseline, "recipes": {}}
    for name, runs in results.items():
        accuracies, seconds = [r["accuracy"] for r in runs], [r["seconds"] for r in runs]
        tta = f" | {mean_std([r['tta_accuracy'] for r in runs])}" if args.validation else ""
        ratio = statistics.median(seconds) / base_median
        print(f"| {name} {recipes[name][1] or ''} | {mean_std(accuracies)} | "
              f"{', '.join(f'{100 * a:.2f}' for a in accuracies)}{tta} | {statistics.median(seconds):.1f} s "
              f"({min(seconds):.1f}-{max(seconds):.1f}) | {ratio:.2f} | "
              f"{statistics.median(r['train_seconds'] for r in runs):.1f} s |")
        summary["recipes"][name] = {"preset": recipes[name][0], "overrides": recipes[name][1],
                                    "precision": recipes[name][2].precision, "runs": runs,
                                    "median_seconds": statistics.median(seconds), "ratio": ratio}
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))

    if args.no_curve or args.validation:
        return
    print("\nTime to accuracy, seed 0 (test accuracy after each epoch; training seconds so far):")
    for name, (preset, recipe, runtime) in recipes.items():
        points = curve(make_config(preset, **recipe), Path(args.out) / f"curve-{name}", runtime)
        print(f"  {name}: " + ", ".join(f"epoch {e} {s:.0f} s {100 * a:.2f}%" for e, s, a in points))


if __name__ == "__main__":
    main()
