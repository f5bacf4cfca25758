"""Speed on a plain CPU, every figure measured in one run (issue 3). `make bench` runs it.

1. roofline: fp32 matrix-multiply GFLOP/s with the training thread count
2. training throughput (images/s, augmentation included) and the GFLOP/s it implies, per preset
3. time to accuracy: official-test accuracy after each epoch against wall time, per preset
4. inference on the 28,000-image Kaggle-like test set, per engine (PyTorch eager, onnxruntime
   float32, onnxruntime int8): images/s at the best batch size, and batch-1 latency
5. peak resident memory of a real `digitrec train` process
6. where `seed`'s training step goes: each convolution pass timed alone in the step's shapes, and
   the real step's operators under torch.profiler

Medians over repeats; the machine is noisy. Usage:
    python benchmarks/speed.py [--quick] [--seed-epochs N] [--skip train,infer,time,memory,profile]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch.utils.flop_counter import FlopCounterMode

from digitrec.nets.weights import save_weights
from digitrec.core.config import make_config
from digitrec.core.data import kaggle_like_split, load_mnist
from digitrec.nets.augment import to_float
from digitrec.nets.predict import predict_logits
from digitrec.outputs.export import INPUT_NAME, OnnxClassifier, QUANTISATION_IMAGES as CALIBRATION_IMAGES, export_onnx
from digitrec.nets.model import build_model, count_parameters
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve, setup_process
from digitrec.training.optim import Schedule, build_optimizer, steps_per_epoch
from digitrec.training.train import train_one_epoch, validate as evaluate

RUNTIME = RuntimeConfig(device="cpu")  # what `digitrec train` uses here: channels-last, fp32


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


def forward_flops_per_image(cfg) -> float:
    model = build_model(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
    return counter.get_total_flops() / 8


def setup(cfg, n_train: int):
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    schedule = Schedule(optimizer, cfg, steps_per_epoch(n_train, cfg))
    return model, optimizer, schedule, torch.Generator().manual_seed(cfg.seed + 1)


def first_batches(cfg, train, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `steps` batches of training images and labels: one short epoch."""
    n = steps * cfg.batch_size
    return torch.from_numpy(train.images[:n]), torch.from_numpy(train.labels[:n])


def train_throughput(cfg, train, steps: int, repeats: int) -> float:
    """Images/s of the real training step (slice, augment, forward, backward, update)."""
    x, y = first_batches(cfg, train, steps)
    model, optimizer, schedule, generator = setup(cfg, len(x))
    rt = resolve(RUNTIME)
    seconds = median_time(lambda: train_one_epoch(model, x, y, optimizer, schedule, cfg, generator, rt), repeats)
    return len(x) / seconds


def time_to_accuracy(cfg, train, test, rt=None, quiet: bool = False) -> list[tuple[int, float, float]]:
    """(epoch, cumulative training seconds, official-test accuracy) after every epoch, on `rt`'s
    device (default: this CPU). The test set is only read here, for this curve: no choice is made from it.
    """
    rt = rt or resolve(RUNTIME)
    x, y = torch.from_numpy(train.images).to(rt.device), torch.from_numpy(train.labels).to(rt.device)
    x_test, y_test = torch.from_numpy(test.images).to(rt.device), torch.from_numpy(test.labels).to(rt.device)
    model, optimizer, schedule, generator = setup(cfg, len(x))
    model = model.to(rt.device)
    forward = torch.compile(model) if rt.compile else model  # as fit does
    scaler = rt.grad_scaler()
    points, elapsed = [], 0.0
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_one_epoch(forward, x, y, optimizer, schedule, cfg, generator, rt, scaler)  # ends in a device sync
        elapsed += time.perf_counter() - start
        accuracy = evaluate(model, x_test, y_test, rt)["acc"]
        points.append((epoch, elapsed, accuracy))
        if not quiet:
            print(f"  {cfg.preset}: epoch {epoch}  {elapsed:7.1f} s  test {100 * accuracy:.2f}%", flush=True)
    return points


def conv_passes(cfg, repeats: int) -> list[tuple[str, str, float, float]]:
    """(layer, pass, seconds, FLOPs) for each convolution pass of a training step, timed alone.

    The first convolution's input gradient is left out: training never computes it.
    """
    model = build_model(cfg).to(memory_format=torch.channels_last)
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    seen = {}  # conv -> (its input, its output) in one forward pass

    def keep(conv, inputs, output):
        seen[conv] = (inputs[0].detach(), output.detach())

    hooks = [m.register_forward_hook(keep) for _, m in convs]
    model(torch.rand(cfg.batch_size, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    rows = []
    for index, (name, conv) in enumerate(convs):
        x, out = seen[conv]
        w, g = conv.weight.detach(), torch.randn_like(out)
        geometry = (conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups)
        flops = 2 * out.numel() * w[0].numel()
        passes = {"forward": lambda: torch.ops.aten.convolution(x, w, None, *geometry),
                  "input gradient": lambda: torch.ops.aten.convolution_backward(
                      g, x, w, None, *geometry, [True, False, False]),
                  "weight gradient": lambda: torch.ops.aten.convolution_backward(
                      g, x, w, [w.shape[0]], *geometry, [False, True, True])}
        label = f"{name} {w.shape[1]}->{w.shape[0]} {w.shape[2]}x{w.shape[3]} at {x.shape[2]}x{x.shape[3]}"
        for kind, fn in passes.items():
            if not (index == 0 and kind == "input gradient"):
                rows.append((label, kind, median_time(fn, repeats), flops))
    return rows


def step_profile(cfg, train, steps: int, top: int = 10) -> list[tuple[str, float]]:
    """The real training step's operators by their own CPU time: (name, ms per step), largest first."""
    x, y = first_batches(cfg, train, steps)
    model, optimizer, schedule, generator = setup(cfg, len(x))
    rt = resolve(RUNTIME)
    train_one_epoch(model, x, y, optimizer, schedule, cfg, generator, rt)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        train_one_epoch(model, x, y, optimizer, schedule, cfg, generator, rt)
    ops = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in ops[:top]] + [("all operators", total / 1e3 / steps)]


INFER_BATCHES = (250, 1000, 4000)  # candidate batch sizes; each engine gets its best


def best_batch_rate(predict, images: np.ndarray, repeats: int) -> tuple[float, int]:
    """(images/s over all of `images`, batch size): the batch is chosen on the first 4,000 images."""
    batch = min(INFER_BATCHES, key=lambda b: median_time(lambda: predict(images[:4000], b), 1))
    return len(images) / median_time(lambda: predict(images, batch), repeats), batch


def inference(cfg, images: np.ndarray, calibration, threads: int, repeats: int) -> dict[str, dict]:
    """Per engine: images/s on `images` at its best batch size, and batch-1 latency.

    Untrained weights: the time does not depend on their values. The int8 model is calibrated
    on `calibration` (training images), as `digitrec export --int8` does.
    """
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(Path(tmp) / "model.safetensors", model, cfg)
        sessions = {"onnxruntime float32": OnnxClassifier(export_onnx(tmp, Path(tmp) / "fp32.onnx"), threads),
                    "onnxruntime int8": OnnxClassifier(export_onnx(tmp, Path(tmp) / "int8.onnx", int8=True,
                                                                   calibration=calibration), threads)}
    model = model.to(memory_format=torch.channels_last)
    one = images[:1]
    results = {}
    rate, batch = best_batch_rate(lambda x, b: predict_logits(model, x, b, channels_last=True), images, repeats)
    with torch.inference_mode():
        x = to_float(one)
        results["pytorch eager"] = {"images_per_s": rate, "batch": batch,
                                    "latency_ms": 1000 * median_time(lambda: model(x), 50)}
    x = x.numpy()
    for name, session in sessions.items():
        rate, batch = best_batch_rate(session.predict_probs, images, repeats)
        latency = median_time(lambda: session.session.run(["probs"], {INPUT_NAME: x}), 50)
        results[name] = {"images_per_s": rate, "batch": batch, "latency_ms": 1000 * latency}
    return results


# Runs `digitrec train` and writes the process's VmHWM (peak RSS of its own address space) at exit.
# Not ru_maxrss: Linux seeds that at exec with the parent's peak when the child is forked or
# vforked from this (multi-GiB, after the inference runs) process.
PEAK_RSS_CHILD = """
import atexit, sys
from digitrec.cli import main
def report():
    with open("/proc/self/status") as f:
        peak = next(line for line in f if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as f:
        f.write(peak.split()[1])  # kB
atexit.register(report)
sys.exit(main(sys.argv[2:]))
"""


def peak_rss_mib(preset: str, epochs: int) -> float:
    """Peak resident memory of a real training process on the full 60k MNIST."""
    with tempfile.TemporaryDirectory() as out:
        peak_file = Path(out) / "peak_kb"
        child = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD, str(peak_file), "train", "--preset", preset,
                                "--epochs", str(epochs), "--out", f"{out}/run", "--quiet"], stdout=subprocess.DEVNULL)
        if child.returncode != 0:
            raise SystemExit(f"digitrec train exited with {child.returncode}")
        return int(peak_file.read_text()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    parser.add_argument("--seed-epochs", type=int, default=2, choices=[1, 2, 3],
                        help="epochs of the seed preset in the time-to-accuracy run")
    parser.add_argument("--skip", default="", help="comma-separated: train, infer, time, memory, profile")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    repeats = 3 if args.quick else 7

    train, test = load_mnist("train"), load_mnist("test")
    kaggle_test = kaggle_like_split()[1].images
    presets = {"seed": make_config("seed"), "fast": make_config("fast")}
    threads = setup_process(RUNTIME)
    roof = roofline_gflops(repeats)
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"\n| roofline: fp32 2048x2048 matmul | {roof:.1f} GFLOP/s ({threads} threads) |\n")

    if "train" not in skip:
        print("| preset | parameters | train MFLOP/image | train images/s | implied GFLOP/s | of roofline | "
              "s/epoch (60k) |")
        print("|---|---|---|---|---|---|---|")
        for name, cfg in presets.items():
            flops = train_flops_per_image(cfg)
            rate = train_throughput(cfg, train, steps=20 if args.quick else 60, repeats=max(1, repeats // 2))
            print(f"| {name} | {count_parameters(build_model(cfg)):,} | {flops / 1e6:.1f} | {rate:.0f} | "
                  f"{rate * flops / 1e9:.1f} | {100 * rate * flops / 1e9 / roof:.0f}% | {60_000 / rate:.0f} |",
                  flush=True)

    if "infer" not in skip:
        calibration = train.subset(slice(0, CALIBRATION_IMAGES), f"mnist:train[:{CALIBRATION_IMAGES}]")
        print(f"\ninference on the {len(kaggle_test):,}-image Kaggle-like test set, {threads} threads per engine, "
              f"onnxruntime {onnxruntime.__version__}:")
        print("\n| preset | forward MFLOP/image | engine | images/s (best batch) | vs PyTorch | batch-1 latency |")
        print("|---|---|---|---|---|---|")
        for name, cfg in presets.items():
            flops = forward_flops_per_image(cfg)
            engines = inference(cfg, kaggle_test, calibration, threads, 3)
            base = engines["pytorch eager"]["images_per_s"]
            for engine, r in engines.items():
                print(f"| {name} | {flops / 1e6:.1f} | {engine} | {r['images_per_s']:.0f} ({r['batch']}) | "
                      f"{r['images_per_s'] / base:.2f}x | {r['latency_ms']:.2f} ms |", flush=True)

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

    if "profile" not in skip:
        seed_cfg = presets["seed"]
        print(f"\nwhere the seed step goes: each convolution pass alone, batch {seed_cfg.batch_size}, channels-last\n")
        print("| convolution | pass | ms | GFLOP/s | of roofline |\n|---|---|---|---|---|")
        for label, kind, seconds, flops in conv_passes(seed_cfg, repeats):
            print(f"| {label} | {kind} | {1e3 * seconds:.1f} | {flops / seconds / 1e9:.0f} | "
                  f"{100 * flops / seconds / 1e9 / roof:.0f}% |")
        steps = 10 if args.quick else 30
        print(f"\nthe real step under torch.profiler ({steps} steps; self CPU time):\n")
        print("| operator | ms per step |\n|---|---|")
        for name, ms in step_profile(seed_cfg, train, steps):
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
