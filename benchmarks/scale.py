"""Scaling on this machine: one process against two (DDP and parallel ensembles), then on paper.

Side by side in one run, through the real CLI (`digitrec train`, `--nproc` = torchrun's launcher):
1. `fast`, the same global batch: one process x 2 threads against two processes x 1 thread
   (images/s, wall time, and the share of a step an all-reduce of the gradients takes);
2. a 4-member `fast` ensemble: one member after another (one process, 2 threads) against two
   members at a time (two processes, 1 thread each): wall time, members/hour, test accuracy;
3. on paper, from the measured step times and the bytes all-reduced per step (parameters x 4 B):
   seed, fast and best on 8, 64 and 512 workers over 10 and 100 Gb/s links, DDP and ensembles.
    python benchmarks/scale.py [--epochs 2] [--members 4] [--out runs/scale] [--skip ddp,ensemble,paper]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from speed import train_throughput  # noqa: E402  (the same timed training step as `make bench`)

from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.core.metrics import summarize
from digitrec.nets.predict import evaluate_run
from digitrec.nets.model import build_model, count_parameters
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import setup_process

DIGITREC = [sys.executable, "-m", "digitrec", "train", "--quiet"]
ALLREDUCE_WORKER = """
import os, statistics, sys, time, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
grads = torch.zeros(int(sys.argv[1]))
times = []
for _ in range(60):
    start = time.perf_counter(); dist.all_reduce(grads); times.append(time.perf_counter() - start)
if dist.get_rank() == 0:
    print(statistics.median(times[10:]))
dist.destroy_process_group()
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def allreduce_seconds(numel: int) -> float:
    """Median time of one gloo all-reduce of `numel` floats between two local processes (torchrun)."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "--no-python", sys.executable, "-c", ALLREDUCE_WORKER, str(numel)],
                          capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(done.stdout.split()[-1])


def ddp(args, out: Path) -> None:
    cfg = make_config("fast", epochs=args.epochs)
    rows = []
    for label, flags in (("1 process x 2 threads", ["--threads", "2"]),
                         ("2 processes x 1 thread", ["--threads", "1", "--nproc", "2"])):
        run = out / label.replace(" ", "")
        wall = timed(DIGITREC + ["--preset", "fast", "--epochs", str(args.epochs), "--out", str(run), *flags])
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append((label, metrics["images_per_second"], wall))
    grads = count_parameters(build_model(cfg))
    reduce_s = allreduce_seconds(grads)
    step_s = cfg.batch_size / rows[1][1]  # one global step of the 2-process run
    print(f"\n`fast`, global batch {cfg.batch_size}, {args.epochs} epochs on 60,000 images:\n")
    print("| processes x threads | images/s | wall time (start to end) | all-reduce per step |")
    print("|---|---|---|---|")
    for i, (label, rate, wall) in enumerate(rows):
        share = f"{1000 * reduce_s:.2f} ms = {100 * reduce_s / step_s:.0f}% of the step" if i else "none"
        print(f"| {label} | {rate:,.0f} | {wall:.1f} s | {share} |")
    print(f"\nratio (2 processes / 1): images/s {rows[1][1] / rows[0][1]:.2f}x, wall time {rows[1][2] / rows[0][2]:.2f}x")


def ensemble(args, out: Path, test) -> None:
    rows = []
    for label, flags in (("one after another: 1 process x 2 threads", ["--threads", "2"]),
                         ("in parallel: 2 processes x 1 thread", ["--threads", "1", "--nproc", "2"])):
        run = out / ("sequential" if "after" in label else "parallel")
        wall = timed(DIGITREC + ["--preset", "fast", "--epochs", str(args.epochs), "--ensemble", str(args.members),
                                 "--out", str(run), *flags])
        accuracy = summarize(evaluate_run(run, test, "test"))["accuracy"]
        rows.append((label, wall, accuracy))
    print(f"\n{args.members}-member `fast` ensemble, {args.epochs} epochs per member, official test set:\n")
    print("| members trained | wall time | members/hour | ensemble test accuracy |")
    print("|---|---|---|---|")
    for label, wall, accuracy in rows:
        print(f"| {label} | {wall / 60:.1f} min | {3600 * args.members / wall:.0f} | {100 * accuracy:.2f}% |")
    print(f"\nparallel / sequential wall time: {rows[1][1] / rows[0][1]:.2f}")


def paper(args, train) -> None:
    """Ring all-reduce of B bytes over W workers: each sends and receives 2 (W-1)/W B, in 2 (W-1)
    latency-bound messages. Weak scaling: each worker keeps the preset's batch, as ensemble members do."""
    latency_s = 10e-6  # one message on a datacenter link
    print("\nOn paper: each worker keeps the preset's batch (global batch = workers x batch); step time from "
          f"this machine at {torch.get_num_threads()} threads; ring all-reduce 2(W-1)/W x bytes / bandwidth + "
          f"2(W-1) x {latency_s * 1e6:.0f} us; no overlap of communication with the backward pass (a bound).\n")
    print("| preset | parameters | bytes per all-reduce | step (measured) | workers | link | all-reduce | "
          "DDP efficiency | DDP images/s | ensemble images/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset in ("seed", "fast", "best"):
        cfg = make_config(preset)
        rate = train_throughput(cfg, train, steps=10, repeats=1)
        step = cfg.batch_size / rate
        params = count_parameters(build_model(cfg))
        nbytes = 4 * params
        for workers in (8, 64, 512):
            for gbps in (10, 100):
                comm = 2 * (workers - 1) / workers * nbytes / (gbps * 1e9 / 8) + 2 * (workers - 1) * latency_s
                print(f"| {preset} | {params:,} | {nbytes / 1e6:.2f} MB | {1000 * step:.1f} ms | {workers} | "
                      f"{gbps} Gb/s | {1000 * comm:.2f} ms | {100 * step / (step + comm):.0f}% | "
                      f"{workers * cfg.batch_size / (step + comm):,.0f} | {workers * rate:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each fast run (the preset's 6: slower)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--out", default="runs/scale")
    parser.add_argument("--skip", default="", help="comma-separated: ddp, ensemble, paper")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    setup_process(RuntimeConfig())
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    if "ddp" not in skip:
        ddp(args, out / "ddp")
    if "ensemble" not in skip:
        ensemble(args, out / "ensemble", load_mnist("test"))
    if "paper" not in skip:
        paper(args, load_mnist("train"))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
