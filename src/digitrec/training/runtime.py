"""Where and how a run computes: device, precision, threads, rank. Nothing here decides the weights.

`RuntimeConfig` (core/config.py) holds the runtime settings a user picks (CLI flags map onto its
fields, as they do onto TrainConfig's); `resolve` turns them into a `Runtime`, the decided facts that the training
loop reads: a torch.device, the autocast dtype, whether a grad scaler runs, the rank and world size.
`setup_process` is the process set-up (threads, glibc's malloc) that only an entry point does,
once: the CLI or a torchrun worker. Library calls never change process-wide state.
RuntimeConfig itself lives in core/config.py beside the recipe, so the CLI reads its fields for its
flags without loading torch (the `--onnx` commands never do).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass

import torch

from ..core.config import PREDICT_BATCH, RuntimeConfig

@dataclass(frozen=True)
class Runtime:
    """The decided runtime of one process. `rank`/`world_size` > 1 only under torch.distributed."""
    device: torch.device
    precision: str  # fp32, bf16 or fp16, never auto
    threads: int  # what torch uses in this process (set by setup_process, or the caller's own)
    eval_batch_size: int = PREDICT_BATCH
    channels_last: bool = True
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sync_batchnorm(self) -> bool:
        """NCCL has SyncBatchNorm; gloo on a CPU does not, so there each rank keeps its own statistics."""
        return self.distributed and self.device.type == "cuda"

    def ddp_device_ids(self) -> list[int] | None:
        return [self.device.index] if self.device.type == "cuda" else None

    def fork_rng(self):
        """The default generators of the CPU and of this device, restored as they were on exit."""
        if self.device.type == "cpu":
            return torch.random.fork_rng(devices=[])
        return torch.random.fork_rng(devices=[self.device], device_type=self.device.type)

    def device_rng_state(self) -> tuple[str, torch.Tensor] | None:
        """(checkpoint key, state) of this device's default generator; None on the CPU."""
        if self.device.type == "cpu":
            return None
        return f"rng.{self.device.type}", torch.get_device_module(self.device.type).get_rng_state(self.device)

    def set_device_rng_state(self, tensors: dict) -> None:
        """Restore this device's generator from a checkpoint's tensors, if that device type saved one."""
        key = f"rng.{self.device.type}"
        if self.device.type != "cpu" and key in tensors:
            torch.get_device_module(self.device.type).set_rng_state(tensors[key], self.device)

    def autocast(self):
        """The forward pass's precision context (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision, "threads": self.threads,
                "world_size": self.world_size, "channels_last": self.channels_last, "compile": self.compile}


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch.device for `name`; a device that is not here is an error naming those that are.

    Never a silent fall-back to the CPU. Under torchrun, "auto" and "cuda" mean this process's GPU.
    """
    here = available_devices()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps" if "mps" in here else "cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name in here:
        return torch.device(name)
    raise ValueError(f"device {name!r} is not available here (available: {', '.join(here)})")


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (its grad scaler); use bf16 or fp32 on {device.type}")
    return name


def physical_cores() -> int:
    """Physical cores (hyper-threads share the FPU, so more threads than this only adds contention)."""
    try:
        with open("/proc/cpuinfo") as f:
            cores = set()
            physical = core = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((physical, core))
        if cores:
            return min(len(cores), len(os.sched_getaffinity(0)))
    except OSError:
        pass
    return os.cpu_count() or 1


def default_threads(local_world_size: int = 1) -> int:
    """Threads per process: the physical cores shared among this machine's processes."""
    return max(1, physical_cores() // max(local_world_size, 1))


def resolve(cfg: RuntimeConfig = RuntimeConfig(), rank: int = 0, world_size: int = 1, local_rank: int = 0,
            local_world_size: int = 1, threads: int | None = None) -> Runtime:
    """Decide the runtime of this process; changes nothing. `threads`: what the process uses (default:
    torch's current setting, which setup_process made cfg.threads)."""
    device = resolve_device(cfg.device, local_rank)
    return Runtime(device=device, precision=resolve_precision(cfg.precision, device),
                   threads=threads if threads is not None else torch.get_num_threads(),
                   eval_batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last, compile=cfg.compile,
                   rank=rank, world_size=world_size, local_world_size=local_world_size)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def setup_process(cfg: RuntimeConfig, local_world_size: int = 1) -> int:
    """Process set-up for a training entry point, done once: threads, and freed memory kept for reuse.

    Threads: `cfg.threads`, or the physical cores shared among this machine's processes.
    glibc's malloc hands large freed blocks back to the OS, so every training step maps its
    activations and gradients afresh: `digitrec train --preset fast` took 3.0-3.5 million page
    faults per epoch and ran at ~3,000 images/s; with the mmap and trim thresholds raised, 98
    thousand and ~4,100 images/s (seed: +2.5%). The peak resident memory stays what a step needs.
    Process-wide and permanent, so only the CLI and torchrun workers call it. Returns the threads.
    """
    threads = cfg.threads or default_threads(local_world_size)
    torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return threads
    libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest; bigger blocks are still mapped apart
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return threads
