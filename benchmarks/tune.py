"""What `digitrec tune` earns on this machine, with no test image anywhere.

Side by side in one run, through the real CLI on the default SQLite storage, preset `fast`'s network
at a fixed cost per trial (IMAGES MNIST training images, EPOCHS epochs, width WIDTH), 10% held out:
1. a study of TRIALS trials with the median pruner (1 worker, all cores);
2. the same study without pruning, 1 worker: what pruning saved (epochs trained, wall time) and
   trials/hour with 1 worker;
3. the same again with 2 workers (1 thread each): trials/hour with 2 workers;
4. the best trial's recipe against the hand-found one (preset `fast`'s values at the same cost),
   both trained again with SEEDS fresh seeds and scored on a *second* validation split
   (val_seed + 1): the study's own split chose the winner, so its score there flatters it.
    python benchmarks/tune.py [--images 3000] [--epochs 3] [--width 16] [--trials 8] [--seeds 2] [--out /tmp/tune-bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from digitrec.core.config import RuntimeConfig, load_recipe, make_config
from digitrec.core.data import load_mnist
from digitrec.training import tune
from digitrec.training.runtime import resolve, setup_process
from digitrec.training.train import fit

DIGITREC = [sys.executable, "-m", "digitrec", "tune", "--quiet"]


def study(out: Path, csv: Path, args, workers: int, pruner: str) -> dict:
    """One study from the command line; its wall time, trials and epochs trained."""
    shutil.rmtree(out, ignore_errors=True)
    flags = ["--train", str(csv), "--preset", "fast", "--width", str(args.width), "--epochs", str(args.epochs),
             "--no-tta", "--budget", str(args.trials), "--pruner", pruner, "--workers", str(workers),
             "--sampler-seed", "0", "--out", str(out), "--study", out.name]
    start = time.perf_counter()
    subprocess.run(DIGITREC + flags, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    opened = tune.load_study(out.name, f"sqlite:///{out / tune.STUDY_DB}")
    trials = opened.get_trials()
    return {"workers": workers, "pruner": pruner, "seconds": round(seconds, 1),
            "trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "epochs_trained": sum(len(t.intermediate_values) for t in trials),
            "trials_per_hour": round(3600 * len(trials) / seconds, 1),
            "best_value": opened.best_value, "best_trial": opened.best_trial.number, "out": str(out)}


def rescore(cfg, data, out: Path, seeds: int) -> list[float]:
    """Validation accuracy on a second split (val_seed + 1), over `seeds` seeds."""
    fresh = dataclasses.replace(cfg, val_seed=cfg.val_seed + 1)
    accuracies = []
    for seed in range(seeds):
        run_dir = out / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        metrics = fit(dataclasses.replace(fresh, seed=seed), data, run_dir, quiet=True,
                      runtime=resolve(RuntimeConfig(device="cpu")))
        accuracies.append(metrics["val_accuracy"])
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    setup_process(RuntimeConfig())

    train = load_mnist("train")
    data = train.subset(np.arange(args.images), f"mnist:train[:{args.images}]")
    csv = args.out / "train.csv"
    frame = pd.DataFrame(data.images.reshape(len(data), -1), columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", data.labels)
    frame.to_csv(csv, index=False)

    print(f"preset fast's network, width {args.width}, {args.epochs} epochs per trial, {args.images:,} MNIST training "
          f"images ({tune.TUNE_VAL_FRACTION:.0%} held out), {args.trials} trials per study, {os.cpu_count()} CPUs")
    results = {"pruned_1": study(args.out / "pruned-1", csv, args, 1, "median"),
               "full_1": study(args.out / "full-1", csv, args, 1, "none"),
               "full_2": study(args.out / "full-2", csv, args, 2, "none")}
    for name, r in results.items():
        print(f"{name}: {r['seconds']} s, {r['trials']} trials ({r['pruned']} pruned), {r['epochs_trained']} epochs "
              f"trained, {r['trials_per_hour']} trials/hour, best validation accuracy {100 * r['best_value']:.2f}% "
              f"(trial {r['best_trial']})")
    saved_epochs = 1 - results["pruned_1"]["epochs_trained"] / results["full_1"]["epochs_trained"]
    saved_time = 1 - results["pruned_1"]["seconds"] / results["full_1"]["seconds"]
    print(f"pruning saved {100 * saved_epochs:.0f}% of the epochs and {100 * saved_time:.0f}% of the wall time; "
          f"best {100 * results['pruned_1']['best_value']:.2f}% with it, {100 * results['full_1']['best_value']:.2f}% without")
    print(f"2 workers: {results['full_2']['trials_per_hour'] / results['full_1']['trials_per_hour']:.2f}x the trials/hour of 1")

    hand = dataclasses.replace(make_config("fast", width=args.width, epochs=args.epochs, tta=False),
                               val_fraction=tune.TUNE_VAL_FRACTION)
    best = load_recipe(Path(results["pruned_1"]["out"]) / tune.BEST_RECIPE)
    rows = {"hand-found (fast)": rescore(hand, data, args.out / "rescore-hand", args.seeds),
            "tuned (best trial)": rescore(best, data, args.out / "rescore-best", args.seeds)}
    print(f"on a second validation split (val_seed {hand.val_seed + 1}), {args.seeds} seeds each:")
    for name, accuracies in rows.items():
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f"  {name:<20} {100 * statistics.mean(accuracies):.2f}% ± {100 * spread:.2f}  "
              f"({', '.join(f'{100 * a:.2f}' for a in accuracies)})")
    changed = {k: v for k, v in best.to_dict().items() if hand.to_dict()[k] != v}
    print("the tuned recipe changes: " + json.dumps(changed))
    (args.out / "results.json").write_text(json.dumps({"studies": results, "rescored": rows, "changed": changed},
                                                      indent=2) + "\n")


if __name__ == "__main__":
    main()
