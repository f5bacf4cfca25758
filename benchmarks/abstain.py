"""'Not sure' as an answer (issue 27): the share of digits answered against the accuracy on them, per
confidence threshold, for one trained run, on three sets:

1. the official MNIST test set (10,000 images, as they are);
2. photos from the tuning generator, tests/image_variants.py: every clean VARIANT and every photo
   CONDITION at each strength, built from MNIST test digits (the same digits for every condition);
3. photos from the held-out generator, benchmarks/heldout_photos.py: every condition at every
   strength. Nothing is chosen on this set; it only checks the choice made on the first two.

Photos go through today's preprocessing (outputs/images.py, as `digitrec predict` reads them); a
photo where no digit is found counts as not answered at every threshold. Each set's curve comes from
core.metrics.coverage_curve, then the accuracy and coverage per condition at --recommend.

    python benchmarks/abstain.py RUN [--digits 300] [--heldout 40] [--recommend 0.9]

(a `fast` run: `digitrec run --preset fast --out RUN`; about 4 minutes on 2 idle cores with the defaults)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/image_variants.py
sys.path.insert(0, str(ROOT / "benchmarks"))  # heldout_photos.py

import heldout_photos  # noqa: E402
from digitrec.core.data import load_mnist, make_digits  # noqa: E402
from digitrec.core.metrics import CURVE_THRESHOLDS, coverage_curve, format_coverage_curve, predictions_from_probs  # noqa: E402
from digitrec.nets.predict import predict_probs  # noqa: E402
from digitrec.nets.weights import load_run_model  # noqa: E402
from digitrec.outputs.images import open_image, to_mnist  # noqa: E402
from tests.image_variants import CONDITIONS, STRENGTHS, VARIANTS  # noqa: E402

THRESHOLDS = CURVE_THRESHOLDS


def preprocess(pictures: list, labels: np.ndarray, name: str, classify):
    """Pictures (PIL images or encoded bytes) preprocessed as `digitrec predict` does (`classify`
    choosing where strokes may be stray marks) -> (Digits of those where a digit was found, how many
    had none)."""
    found, images = [], []
    for i, picture in enumerate(pictures):
        image = to_mnist(open_image(picture, name) if isinstance(picture, bytes) else picture, classify)
        if image is not None:
            found.append(i)
            images.append(image)
    images = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return make_digits(images, np.asarray(labels)[found], name), len(pictures) - len(found)


def read_photos(classify, pictures: list, labels: np.ndarray, name: str):
    """-> (Predictions of the pictures where a digit was found, how many had none)."""
    digits, unread = preprocess(pictures, labels, name, classify)
    return predictions_from_probs(name, digits, classify(digits.images)), unread


def tuning_photos(test, n: int) -> dict[str, tuple[list, np.ndarray]]:
    """Every condition of tests/image_variants.py on the same n MNIST test digits: name -> (pictures, labels)."""
    index = np.random.default_rng(0).choice(len(test), n, replace=False)
    images, labels = test.images[index], test.labels[index]
    sets = {}
    for name, make in VARIANTS.items():
        rng = np.random.default_rng(1)
        sets[f"{name} (clean)"] = ([make(d, rng) for d in images], labels)
    for name, make in CONDITIONS.items():
        for strength in STRENGTHS:
            rng = np.random.default_rng(1)
            sets[f"{name} {strength}"] = ([make(d, rng, strength) for d in images], labels)
    return sets


def heldout_sets(n: int) -> dict[str, tuple[list, np.ndarray]]:
    """Every condition and strength of benchmarks/heldout_photos.py, n pictures each."""
    sets = {}
    for condition in heldout_photos.CONDITIONS:
        for strength in heldout_photos.STRENGTHS:
            cases = heldout_photos.cases(condition, strength, n)
            sets[f"{condition} {strength}"] = ([c.encoded for c in cases], np.array([int(c.label) for c in cases]))
    return sets


def pooled(classify, sets: dict, title: str, recommend: float) -> None:
    """The curve over every picture of `sets`, then each set at the recommended threshold."""
    records = {name: read_photos(classify, pictures, labels, name) for name, (pictures, labels) in sets.items()}
    probs = np.concatenate([r.probs for r, _ in records.values()])
    labels = np.concatenate([r.y_true for r, _ in records.values()])
    unread = sum(missing for _, missing in records.values())
    everything = predictions_from_probs(title, make_digits(np.zeros((len(labels), 28, 28), np.uint8), labels, title), probs)
    print(f"\n## {title}: {len(labels) + unread} pictures, {unread} with no digit found (never answered)\n")
    print(format_coverage_curve(coverage_curve(everything, THRESHOLDS, unread)))
    print(f"\nper condition at {recommend}: answered / accuracy on answered (always answering: accuracy)")
    for name, (record, missing) in records.items():
        always, at = coverage_curve(record, [0.0, recommend], missing)
        accuracy = "-" if at["accuracy"] is None else f"{100 * at['accuracy']:.2f}%"
        print(f"  {name:<22} {100 * at['coverage']:6.1f}% / {accuracy:>7}  ({100 * always['answered'] / always['n']:.1f}% "
              f"found, {100 * (always['answered'] - always['errors']) / always['n']:.1f}% right)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--digits", type=int, default=300, help="MNIST test digits per tuning condition")
    parser.add_argument("--heldout", type=int, default=40, help="held-out pictures per condition and strength")
    parser.add_argument("--recommend", type=float, default=0.9, help="the threshold to show per condition")
    args = parser.parse_args()

    start = time.perf_counter()
    model, cfg, _ = load_run_model(args.run)
    classify = lambda x: predict_probs(model, np.asarray(x))  # noqa: E731
    test = load_mnist("test")
    preds = predictions_from_probs("mnist test", test, classify(test.images))
    print(f"run {args.run} (preset {cfg.preset}); thresholds: a digit is answered when its probability is at least this")
    print(f"\n## the official MNIST test set: {len(test):,} images\n")
    print(format_coverage_curve(coverage_curve(preds, THRESHOLDS)))
    pooled(classify, tuning_photos(test, args.digits), "photos, tuning generator (tests/image_variants.py)", args.recommend)
    pooled(classify, heldout_sets(args.heldout), "photos, held-out generator (benchmarks/heldout_photos.py)", args.recommend)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
