"""Robust by training as well as by rules (issue 27): runs side by side on MNIST's test set and on
photos, to see what a recipe option (say `photo_augment`) gains and costs.

Every picture is preprocessed once (outputs/images.py, as `digitrec predict` reads it) and read by
each run: the tuning generator's conditions (tests/image_variants.py: every clean VARIANT, every
photo CONDITION per strength, on the same MNIST test digits) and the held-out generator's
(benchmarks/heldout_photos.py: every condition per strength). "No digit found" counts as wrong.

    python benchmarks/photo_training.py RUN [RUN ...] [--digits 300] [--heldout 40]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from abstain import heldout_sets, preprocess, tuning_photos
from digitrec.core.data import load_mnist
from digitrec.core.metrics import wilson_interval
from digitrec.nets.predict import predict_probs
from digitrec.nets.weights import load_run_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--digits", type=int, default=300, help="MNIST test digits per tuning condition")
    parser.add_argument("--heldout", type=int, default=40, help="held-out pictures per condition and strength")
    args = parser.parse_args()

    start = time.perf_counter()
    models = [load_run_model(run)[0] for run in args.runs]
    test = load_mnist("test")
    print("| set | " + " | ".join(str(run) for run in args.runs) + " |")
    print("| --- |" + " ---: |" * len(args.runs))

    def row(name: str, images: np.ndarray, labels: np.ndarray, n: int) -> list[int]:
        right = [int((predict_probs(m, images).argmax(1) == labels).sum()) if len(images) else 0 for m in models]
        print(f"| {name} | " + " | ".join(f"{100 * r / n:.2f}%" for r in right) + " |", flush=True)
        return right

    row(f"MNIST test ({len(test):,})", test.images, test.labels, len(test))
    for title, sets in (("tuning", tuning_photos(test, args.digits)), ("held-out", heldout_sets(args.heldout))):
        totals, n_all = np.zeros(len(models), int), 0
        for name, (pictures, labels) in sets.items():
            digits, unread = preprocess(pictures, labels, name)
            totals += row(f"{title}: {name} ({len(pictures)})", digits.images, digits.labels, len(pictures))
            n_all += len(pictures)
        cells = []
        for right in totals:
            low, high = wilson_interval(int(right), n_all)
            cells.append(f"**{100 * right / n_all:.2f}%** ({100 * low:.1f}-{100 * high:.1f})")
        print(f"| **{title}, all {n_all:,}** | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
