"""Time to accuracy (issue 19): preset `fast` against the recipe it replaced, side by side in one run.

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
accuracy on that split instead of the test set; --set overrides recipe fields of the new `fast`
(the levers of README's table).
    python benchmarks/speedrun.py [--seeds 5] [--out runs/speedrun]
    python benchmarks/speedrun.py --validation --seeds 3 --set epochs=5 --set label_smoothing=0
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from accuracy import mean_std  # noqa: E402  (the same mean ± std as the accuracy tables)

from digitrec.nets.weights import environment
from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.nets.predict import evaluate_run, predict_probs
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import setup_process
from digitrec.training.train import fit

# `fast` until this record (commit 6775270): width 24, 6 epochs, one view per image
PREVIOUS_FAST = {"width": 24, "epochs": 6, "tta": False}
VALIDATION = {"val_fraction": 0.1, "val_seed": 7, "calibration_fraction": 0.0}


def timed_job(cfg, out_dir: Path, validation: bool) -> tuple[float, float]:
    """(accuracy, wall seconds) of one run: data from the cache, training, then the test set scored
    (with --validation: the held-out split, scored at the end of training, in the time too)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    train = load_mnist("train")
    if validation:
        accuracy = fit(cfg, train, out_dir, quiet=True)["val_accuracy"]
    else:
        test = load_mnist("test")
        fit(cfg, train, out_dir, quiet=True)
        preds = evaluate_run(out_dir, test, "test")
        accuracy = float((preds.y_pred == preds.y_true).mean())
    return accuracy, time.perf_counter() - start


def curve(cfg, out_dir: Path) -> list[tuple[int, float, float]]:
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
    fit(cfg, load_mnist("train"), out_dir, quiet=True, on_epoch=score)
    return points


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--validation", action="store_true",
                        help="judge on a 10%% validation split of the training images, not the test set")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a recipe field of the new `fast` (repeatable), e.g. epochs=5")
    parser.add_argument("--no-curve", action="store_true", help="skip the time-to-accuracy curve")
    parser.add_argument("--out", default="runs/speedrun")
    args = parser.parse_args()
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    common = VALIDATION if args.validation else {}

    threads = setup_process(RuntimeConfig())  # as `digitrec train` does: the threads `fast` gets
    env = environment()
    print(f"{env['cpu']}, {env['cpu_count']} CPUs, {threads} threads, torch {env['torch']}")
    recipes = {"fast": {**overrides}, "previous fast": PREVIOUS_FAST}
    results = {name: [] for name in recipes}
    for seed in range(args.seeds):
        for name, recipe in recipes.items():
            cfg = make_config("fast", **{**recipe, **common, "seed": seed})
            accuracy, seconds = timed_job(cfg, Path(args.out) / f"{name.replace(' ', '-')}-{seed}", args.validation)
            results[name].append((accuracy, seconds))
            print(f"  {name}, seed {seed}: {100 * accuracy:.2f}% in {seconds:.1f} s", flush=True)

    scored = "validation split (10% of the training images)" if args.validation else "official test set"
    print(f"\n| recipe | {scored}: accuracy (%), mean ± std over {args.seeds} seeds | each seed | "
          f"wall time, median (range) | ratio of medians |\n|---|---|---|---|---|")
    baseline = statistics.median(s for _, s in results["previous fast"])
    for name, runs in results.items():
        accuracies, seconds = [a for a, _ in runs], [s for _, s in runs]
        print(f"| {name} {recipes[name] or ''} | {mean_std(accuracies)} | "
              f"{', '.join(f'{100 * a:.2f}' for a in accuracies)} | {statistics.median(seconds):.1f} s "
              f"({min(seconds):.1f}-{max(seconds):.1f}) | {statistics.median(seconds) / baseline:.2f} |")

    if args.no_curve or args.validation:
        return
    print("\nTime to accuracy, seed 0 (test accuracy after each epoch; training seconds so far):")
    for name, recipe in recipes.items():
        points = curve(make_config("fast", **recipe), Path(args.out) / f"curve-{name.replace(' ', '-')}")
        print(f"  {name}: " + ", ".join(f"epoch {e} {s:.0f} s {100 * a:.2f}%" for e, s, a in points))


if __name__ == "__main__":
    main()
