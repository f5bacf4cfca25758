"""Robust by training as well as by rules (issue 27): runs side by side on MNIST's test set and on
photos, to see what a recipe option (say `photo_augment`) gains and costs.

Every picture is preprocessed as `digitrec predict` reads it with each run (outputs/images.py; the
run's model chooses where strokes may be stray marks) and read by it: the tuning generator's conditions (tests/image_variants.py: every clean VARIANT, every
photo CONDITION per strength, on the same MNIST test digits) and the held-out generator's
(benchmarks/heldout_photos.py: every condition per strength). "No digit found" counts as wrong.

    python benchmarks/photo_training.py RUN [RUN ...] [--pretrained best] [--digits 300] [--heldout 40]
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
from digitrec.nets.weights import load_pretrained, load_run_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*")
    parser.add_argument("--pretrained", nargs="+", default=[], help="bundled models to read beside the runs (best, fast)")
    parser.add_argument("--digits", type=int, default=300, help="MNIST test digits per tuning condition")
    parser.add_argument("--heldout", type=int, default=40, help="held-out pictures per condition and strength")
    args = parser.parse_args()

    start = time.perf_counter()
    if not args.runs and not args.pretrained:
        parser.error("give a run or --pretrained NAME")
    models = [load_run_model(run)[0] for run in args.runs] + [load_pretrained(name)[0] for name in args.pretrained]
    test = load_mnist("test")
    print("| set | " + " | ".join([*map(str, args.runs), *(f"bundled `{name}`" for name in args.pretrained)]) + " |")
    print("| --- |" + " ---: |" * len(models))

    def scored(model, images: np.ndarray, labels: np.ndarray) -> int:
        return int((predict_probs(model, images).argmax(1) == labels).sum()) if len(images) else 0

    def row(name: str, right: list[int], n: int) -> list[int]:
        print(f"| {name} | " + " | ".join(f"{100 * r / n:.2f}%" for r in right) + " |", flush=True)
        return right

    row(f"MNIST test ({len(test):,})", [scored(m, test.images, test.labels) for m in models], len(test))
    for title, sets in (("tuning", tuning_photos(test, args.digits)), ("held-out", heldout_sets(args.heldout))):
        totals, n_all = np.zeros(len(models), int), 0
        for name, (pictures, labels) in sets.items():
            read = [preprocess(pictures, labels, name, lambda x, m=m: predict_probs(m, x))[0] for m in models]
            totals += row(f"{title}: {name} ({len(pictures)})",
                          [scored(m, digits.images, digits.labels) for m, digits in zip(models, read)], len(pictures))
            n_all += len(pictures)
        cells = []
        for right in totals:
            low, high = wilson_interval(int(right), n_all)
            cells.append(f"**{100 * right / n_all:.2f}%** ({100 * low:.1f}-{100 * high:.1f})")
        print(f"| **{title}, all {n_all:,}** | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
