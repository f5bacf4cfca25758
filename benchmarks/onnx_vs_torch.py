"""ONNX Runtime against PyTorch for inference on the CPU: latency at batch 1, throughput at the best batch.

    python benchmarks/onnx_vs_torch.py [--run RUN] [--batches 1,8,32,128,512,2000] [--repeats 7]

Both sides go through the functions a deployment calls: `evaluate.predict_probs` (PyTorch) and
`export.OnnxClassifier.predict_probs` (onnxruntime), uint8 (N, 28, 28) in, probabilities out,
with the same number of threads. For each batch size, each repeat times enough calls to cover
about `--images` images; the table shows the median over repeats (and the spread, min-max, of
images per second). Without --run the model has untrained weights of preset `seed`: the time does
not depend on the weight values. Timings on a shared machine are noisy: read the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from digitrec.nets.weights import load_run_model, save_weights
from digitrec.core.config import make_config
from digitrec.nets.predict import predict_probs
from digitrec.outputs.export import OnnxClassifier, export_onnx
from digitrec.nets.model import build_model


def untrained_run(run_dir: Path) -> Path:
    cfg = make_config("seed")
    save_weights(run_dir / "model.safetensors", build_model(cfg), cfg)
    return run_dir


def images_per_second(predict, images: np.ndarray, batch: int, n_images: int, repeats: int) -> list[float]:
    """Throughput of `predict` on batches of `batch`, one figure per repeat."""
    x = images[:batch]
    calls = max(1, n_images // batch)
    predict(x)  # warm-up: first-call allocations and graph set-up are not what we measure
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            predict(x)
        rates.append(calls * batch / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: untrained seed weights)")
    parser.add_argument("--batches", default="1,8,32,128,512,2000")
    parser.add_argument("--images", type=int, default=2000, help="images per repeat and batch size (about)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or untrained_run(Path(tmp))
        onnx_path = export_onnx(run_dir, Path(tmp) / "model.onnx")
        torch.set_num_threads(args.threads)
        model, _, _ = load_run_model(run_dir)
        session = OnnxClassifier(onnx_path, threads=args.threads)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(max(batches), 28, 28), dtype=np.uint8)
        sides = {"pytorch": lambda x: predict_probs(model, x, batch_size=len(x)),
                 "onnxruntime": lambda x: session.predict_probs(x, batch_size=len(x))}

        print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
              f"{args.threads} threads, median of {args.repeats} repeats of ~{args.images} images")
        print(f"{'batch':>6} {'engine':>12} {'ms/batch':>10} {'images/s':>10} {'(min-max)':>17} {'ort/torch':>10}")
        best = {}
        for batch in batches:
            medians = {}
            for name, predict in sides.items():
                rates = images_per_second(predict, images, batch, args.images, args.repeats)
                median = statistics.median(rates)
                medians[name] = median
                if median > best.get(name, (0, 0))[1]:
                    best[name] = (batch, median)
                ratio = f"{medians['onnxruntime'] / medians['pytorch']:>9.2f}x" if name == "onnxruntime" else ""
                print(f"{batch:>6} {name:>12} {1000 * batch / median:>10.3f} {median:>10.0f} "
                      f"{f'({min(rates):.0f}-{max(rates):.0f})':>17} {ratio:>10}")
            if batch == 1:
                latency = {name: 1000 / rate for name, rate in medians.items()}
        print()
        if 1 in batches:
            print(f"batch 1 latency: pytorch {latency['pytorch']:.3f} ms, onnxruntime {latency['onnxruntime']:.3f} ms "
                  f"({latency['pytorch'] / latency['onnxruntime']:.2f}x faster)")
        for name, (batch, rate) in best.items():
            print(f"best batch for {name}: {batch} ({rate:.0f} images/s)")
        print(f"onnxruntime / pytorch at their best batches: {best['onnxruntime'][1] / best['pytorch'][1]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
