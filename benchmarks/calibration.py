"""How well each run's probabilities mean what they say on the official MNIST test set.

    python benchmarks/calibration.py RUN [RUN ...] [--train-images 3000]

For each finished run (read only; nothing is written into it): test accuracy, and the expected
calibration error (15 bins) and mean loss of its probabilities as shipped (with the temperature in
its weights) and uncalibrated (every temperature 1). Two references beside them, fitted on the
uncalibrated logits: the temperature fitted on `--train-images` of the run's own training images
(what calibrating without a hold-out would give: biased, the model has seen them), and the one fitted
on the test set itself (the best any single temperature can do there; never shipped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from digitrec.nets.temperature import fit_temperature, nll, softmax, temperatures_off
from digitrec.nets.weights import load_run_model
from digitrec.core.data import load_mnist
from digitrec.core.metrics import predictions_from_probs, reliability as calibration
from digitrec.nets.predict import predict_logits
from digitrec.core.files import read_json
from digitrec.core.splits import split_calibration, split_validation


def ece(digits, logits: np.ndarray, temperature: float) -> float:
    return calibration(predictions_from_probs("x", digits, softmax(logits, temperature)))["ece"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--train-images", type=int, default=3000)
    args = parser.parse_args()
    test, train = load_mnist("test"), load_mnist("train")
    print("| run | trained on | temperature (fitted on) | test accuracy | test ECE uncalibrated | test ECE as shipped "
          "| test loss uncalibrated / shipped (nats) | T on own training images: T, test ECE | T on the test set: T, test ECE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        model, cfg, _ = load_run_model(run)
        metrics = read_json(run / "metrics.json")
        assert metrics["data_sha256"] == train.sha256, f"{run}: not trained on the built-in MNIST's 60,000"
        trained_on = split_calibration(split_validation(train.labels, cfg)[0], cfg)[0]  # as train._fit drew them
        own = train.subset(np.random.default_rng(0).permutation(trained_on)[:args.train_images])
        fitted = metrics.get("calibration") or {}
        t = float(model.temperature)
        with temperatures_off(model):
            logits = predict_logits(model, test.images).double().numpy()
            own_logits = predict_logits(model, own.images).double().numpy()
        # an ensemble's members keep their own temperatures inside; these figures are then single-model only
        shipped_logits = predict_logits(model, test.images).double().numpy()
        accuracy = float((logits.argmax(1) == test.labels).mean())
        assert (shipped_logits.argmax(1) == logits.argmax(1)).all()
        t_own, t_test = fit_temperature(own_logits, own.labels), fit_temperature(logits, test.labels)
        on = f"{fitted['on']}, {fitted['n']:,} images" if fitted else "none"
        shipped = calibration(predictions_from_probs("x", test, softmax(shipped_logits)))["ece"]
        print(f"| {run.name} | {metrics.get('n_train', '?'):,} | {t:.3f} ({on}) | {100 * accuracy:.2f}% "
              f"| {100 * ece(test, logits, 1.0):.2f}% | {100 * shipped:.2f}% "
              f"| {nll(logits, test.labels):.4f} / {nll(shipped_logits, test.labels):.4f} "
              f"| {t_own:.3f}, {100 * ece(test, logits, t_own):.2f}% | {t_test:.3f}, {100 * ece(test, logits, t_test):.2f}% |")


if __name__ == "__main__":
    main()
