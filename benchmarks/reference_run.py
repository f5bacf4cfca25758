"""The full reference recipe (preset `seed`, 30 epochs) on the official MNIST split.

Trains on the official 60,000 training images (10% held out for the plateau schedule, as in the
recipe), then scores the official 10,000 test images once. Prints accuracy and wall time.
    python benchmarks/reference_run.py [--epochs 30] [--out runs/reference]
"""

from __future__ import annotations

import argparse
import time

from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.core.metrics import summarize
from digitrec.nets.predict import evaluate_run
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import setup_process
from digitrec.training.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = args.out or f"runs/reference-{time.strftime('%Y%m%d-%H%M%S')}"

    setup_process(RuntimeConfig())  # threads and malloc, as `digitrec train` sets them
    cfg = make_config("seed", epochs=args.epochs, seed=args.seed)
    start = time.perf_counter()
    metrics = fit(cfg, load_mnist("train"), out)
    wall = time.perf_counter() - start
    summary = summarize(evaluate_run(out, load_mnist("test"), "test"))
    low, high = summary["accuracy_ci95"]
    print(f"\n| preset | epochs | official test accuracy | 95% CI | errors | training wall time | images/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| seed | {args.epochs} | {100 * summary['accuracy']:.2f}% | {100 * low:.2f}-{100 * high:.2f}% | "
          f"{summary['errors']} | {wall / 60:.1f} min | {metrics['images_per_second']:.0f} |")
    print(f"run: {out}")


if __name__ == "__main__":
    main()
