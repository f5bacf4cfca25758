"""Speed on a plain CPU, every figure measured in one run (issue 3). `make bench` runs it.

1. roofline: fp32 matrix-multiply GFLOP/s with the training thread count
2. training throughput (images/s, augmentation included) and the GFLOP/s it implies, per preset
3. time to accuracy: official-test accuracy after each epoch against wall time, per preset
4. inference on the 28,000-image Kaggle-like test set: best batch size, and batch-1 latency
5. peak resident memory of a real `digitrec train` process

Medians over repeats; the machine is noisy. Usage:
    python benchmarks/speed.py [--quick] [--seed-epochs N] [--skip time,memory]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from digitrec.config import make_config
from digitrec.data import kaggle_like_split, load_mnist
from digitrec.evaluate import predict, predict_logits, summarize, to_float
from digitrec.model import build_model, count_parameters
from digitrec.train import build_optimizer, build_scheduler, set_threads, steps_per_epoch, train_one_epoch


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def roofline_gflops(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: a @ b, repeats) / 1e9


def train_flops_per_image(cfg) -> float:
    """Forward + backward FLOPs of one training step, per image (augmentation not counted)."""
    model = build_model(cfg).train()
    x, y = torch.rand(cfg.batch_size, 1, 28, 28), torch.randint(0, 10, (cfg.batch_size,))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / cfg.batch_size


def setup(cfg, n_train: int):
    set_threads(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch(n_train, cfg))
    return model, optimizer, scheduler, torch.Generator().manual_seed(cfg.seed + 1)


def train_throughput(cfg, train, steps: int, repeats: int) -> float:
    """Images/s of the real training step (slice, augment, forward, backward, update)."""
    n = steps * cfg.batch_size
    x, y = torch.from_numpy(train.images[:n]), torch.from_numpy(train.labels[:n])
    model, optimizer, scheduler, generator = setup(cfg, n)
    seconds = median_time(lambda: train_one_epoch(model, x, y, optimizer, scheduler, cfg, generator), repeats)
    return n / seconds


def time_to_accuracy(cfg, train, test) -> list[tuple[int, float, float]]:
    """(epoch, cumulative training seconds, official-test accuracy) after every epoch.

    The test set is only read here, for this curve: no choice is made from it.
    """
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model, optimizer, scheduler, generator = setup(cfg, len(x))
    points, elapsed = [], 0.0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_one_epoch(model, x, y, optimizer, scheduler, cfg, generator)
        elapsed += time.perf_counter() - start
        accuracy = summarize(predict(model, test, "test", cfg.eval_batch_size, cfg.channels_last))["accuracy"]
        points.append((epoch, elapsed, accuracy))
        print(f"  {cfg.preset}: epoch {epoch}  {elapsed:7.1f} s  test {100 * accuracy:.2f}%", flush=True)
    return points


def inference(cfg, images: np.ndarray, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    best = (0.0, 0)
    for batch in (1000, 4000):
        rate = len(images) / median_time(lambda: predict_logits(model, images, batch, cfg.channels_last), repeats)
        best = max(best, (rate, batch))
    one = images[:1]
    with torch.inference_mode():
        x = to_float(one)
        latency = median_time(lambda: model(x), 50)
    return {"images_per_s": best[0], "batch": best[1], "latency_ms": 1000 * latency}


def peak_rss_mib(preset: str, epochs: int) -> float:
    """Peak resident memory of a real training process on the full 60k MNIST."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "digitrec.cli", "train", "--preset", preset, "--epochs", str(epochs),
                        "--out", f"{out}/run", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    parser.add_argument("--seed-epochs", type=int, default=2, choices=[1, 2, 3],
                        help="epochs of the seed preset in the time-to-accuracy run")
    parser.add_argument("--skip", default="", help="comma-separated: time, memory")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    repeats = 3 if args.quick else 7

    train, test = load_mnist("train"), load_mnist("test")
    kaggle_test = kaggle_like_split()[1].images
    presets = {"seed": make_config("seed"), "fast": make_config("fast")}
    threads = set_threads(presets["seed"])
    roof = roofline_gflops(repeats)
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"\n| roofline: fp32 2048x2048 matmul | {roof:.1f} GFLOP/s ({threads} threads) |\n")

    print("| preset | parameters | train MFLOP/image | train images/s | implied GFLOP/s | of roofline | "
          "s/epoch (60k) | infer images/s (batch) | batch-1 latency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg in presets.items():
        flops = train_flops_per_image(cfg)
        rate = train_throughput(cfg, train, steps=20 if args.quick else 60, repeats=max(1, repeats // 2))
        infer = inference(cfg, kaggle_test, 3)
        print(f"| {name} | {count_parameters(build_model(cfg)):,} | {flops / 1e6:.1f} | {rate:.0f} | "
              f"{rate * flops / 1e9:.1f} | {100 * rate * flops / 1e9 / roof:.0f}% | {60_000 / rate:.0f} | "
              f"{infer['images_per_s']:.0f} ({infer['batch']}) | {infer['latency_ms']:.2f} ms |", flush=True)

    if "time" not in skip:
        print("\ntime to accuracy (official MNIST test set, trained on the official 60k):")
        # The seed recipe's plateau schedule cannot cut the rate before epoch 4, so over its first
        # epochs a constant rate is the recipe exactly (and needs no validation split here).
        seed_cfg = make_config("seed", epochs=args.seed_epochs, schedule="constant")
        curves = {"seed": time_to_accuracy(seed_cfg, train, test), "fast": time_to_accuracy(presets["fast"], train, test)}
        print("\n| preset | epoch | training s | test accuracy |\n|---|---|---|---|")
        for name, points in curves.items():
            for epoch, seconds, accuracy in points:
                print(f"| {name} | {epoch} | {seconds:.0f} | {100 * accuracy:.2f}% |")
    if "memory" not in skip:
        print(f"\npeak resident memory of `digitrec train --preset fast --epochs 1`: {peak_rss_mib('fast', 1):.0f} MiB")


if __name__ == "__main__":
    main()
