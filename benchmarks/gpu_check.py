"""The GPU figures of the "train anywhere" issue, on whatever CUDA GPU is at hand (run by gpu_check.sh).

`fast` on the official 60,000 images with the data on the GPU: fp32, bf16 and bf16 + torch.compile,
training seconds and images/s without the first (warm-up) epoch; the median over 3 seeds of the
time to reach 99.5% on the official test set (bf16); and the seed recipe's epoch time.
    python benchmarks/gpu_check.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import time_to_accuracy  # noqa: E402  (the CPU benchmark's loop, on any device)

from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve

TARGET = 0.995


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here")
    train, test = load_mnist("train"), load_mnist("test")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
    print("| preset | precision | compile | epochs | training s (epochs 2..) | images/s | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for preset, precision, compiled in (("fast", "fp32", False), ("fast", "bf16", False), ("fast", "bf16", True),
                                        ("seed", "fp32", False)):
        cfg = make_config(preset, epochs=3) if preset == "seed" else make_config(preset)  # seed: its epoch time
        rt = resolve(RuntimeConfig(device="cuda", precision=precision, compile=compiled))
        points = time_to_accuracy(cfg, train, test, rt, quiet=True)
        seconds = points[-1][1] - points[0][1]
        rate = (len(points) - 1) * len(train) / seconds
        print(f"| {preset} | {precision} | {'yes' if compiled else 'no'} | {cfg.epochs} | {seconds:.1f} | {rate:,.0f} | "
              f"{100 * points[-1][2]:.2f}% |", flush=True)
    reached = []
    for seed in range(args.seeds):
        points = time_to_accuracy(make_config("fast", seed=seed), train, test,
                                  resolve(RuntimeConfig(device="cuda", precision="bf16")), quiet=True)
        first = next((t for _, t, acc in points if acc >= TARGET), None)
        reached.append(first)
        print(f"seed {seed}: " + ", ".join(f"epoch {e} {t:.1f} s {100 * a:.2f}%" for e, t, a in points))
    done = [t for t in reached if t is not None]
    median = (f"{statistics.median(done):.1f} s" if len(done) == len(reached)
              else f"not reached by {len(reached) - len(done)} of the seeds")
    print(f"\n`fast` (bf16) to {100 * TARGET:.1f}% on the official test set: median over {args.seeds} seeds {median}")


if __name__ == "__main__":
    main()
