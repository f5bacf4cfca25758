"""Several processes and machines through torch.distributed, launched by torchrun.

A worker reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, ...); `digitrec train
--nproc N` starts the same workers on this machine through torch's own elastic launcher. Only
rank 0 writes files and prints (runtime.Runtime.is_main); the helpers here are the few collective
steps the training loop and the ensemble need: sums, a broadcast, a barrier, and gathering the
files of ensemble members trained on other machines. Every helper is a no-op in one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..core.files import LOCK_FILE, InputError, atomic_write
from .runtime import Runtime, default_threads

# How long a rank waits for the others at a collective step. Ensemble members are whole runs, so a
# rank that finished its members waits at the final barrier for the others' (best: ~10 min each).
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (all defaults: a single process)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    restart_count: int = 0  # torchrun --max-restarts: how often the group was restarted

    @classmethod
    def from_environ(cls, environ=os.environ) -> "DistEnv":
        def number(name, default):
            return int(environ.get(name, default))

        return cls(rank=number("RANK", 0), world_size=number("WORLD_SIZE", 1), local_rank=number("LOCAL_RANK", 0),
                   local_world_size=number("LOCAL_WORLD_SIZE", 1),
                   restart_count=number("TORCHELASTIC_RESTART_COUNT", 0))

    @property
    def under_launcher(self) -> bool:
        return self.world_size > 1


def init(device: torch.device, env: DistEnv) -> None:
    """Join the process group torchrun set up: NCCL for CUDA, gloo otherwise.

    torchrun keeps one key-value store across the restarts of --max-restarts, so a restarted group
    could read the addresses its dead predecessor left there and fail to connect; each attempt's
    keys get a prefix of their own.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    rendezvous = dist.rendezvous("env://", timeout=TIMEOUT)
    store, rank, world_size = next(rendezvous)
    rendezvous.close()
    store = dist.PrefixStore(f"digitrec/attempt-{env.restart_count}/", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=TIMEOUT, **kwargs)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# The collective steps below take the process's Runtime: they are no-ops where it is a single
# process, also inside a torchrun job whose ranks train ensemble members of their own.


def all_reduce_sum(rt: Runtime, tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, in place."""
    if rt.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(rt: Runtime, tensor: torch.Tensor, async_op: bool = False):
    """The maximum over ranks, in place; with `async_op`, the work to wait() for (None in one process)."""
    if not rt.distributed:
        return None if async_op else tensor
    work = dist.all_reduce(tensor, op=dist.ReduceOp.MAX, async_op=async_op)
    return work if async_op else tensor


def rng_states(rt: Runtime) -> dict[str, torch.Tensor]:
    """Every rank's default generators (the CPU's, the device's), gathered on every rank as checkpoint
    tensors `rng.rank<r>.cpu` / `rng.rank<r>.<device>`: ranks above 0 draw their own dropout, and an
    epoch stopped midway continues them. Empty in one process (the checkpoint holds its generators)."""
    if not rt.distributed:
        return {}
    states: list = [None] * rt.world_size
    device_rng = rt.device_rng_state()
    dist.all_gather_object(states, (torch.get_rng_state(), device_rng and (device_rng[0], device_rng[1].cpu())))
    out = {}
    for rank, (cpu, device) in enumerate(states):
        out[f"rng.rank{rank}.cpu"] = cpu
        if device is not None:
            out[f"rng.rank{rank}.{device[0][4:]}"] = device[1]
    return out


def broadcast_from_main(rt: Runtime, tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's value on every rank, in place."""
    if rt.distributed:
        dist.broadcast(tensor, src=0)
    return tensor


def broadcast_buffers(rt: Runtime, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. DDP sends them before each
    forward pass, so after the last step each rank holds its own: this makes the ranks equal again."""
    if rt.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def check_on_main(rt: Runtime, check: Callable[[], None]) -> None:
    """Run `check` on rank 0 and raise its InputError on every rank, so no rank is left waiting for
    one that stopped. Doubles as a barrier: nothing is written before every rank gets here."""
    if not rt.distributed:
        check()
        return
    message = [""]
    if rt.is_main:
        try:
            check()
        except InputError as e:
            message = [str(e)]
    dist.broadcast_object_list(message, src=0)
    if message[0]:
        raise InputError(message[0])


def same_on_every_rank(rt: Runtime, value: int, what: str) -> None:
    """Raise on every rank if the ranks disagree on `value` (rather than hang in a later collective)."""
    if not rt.distributed:
        return
    values = torch.tensor([value, -value], dtype=torch.int64, device=rt.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    if values[0] != -values[1]:
        raise InputError(f"the ranks disagree on {what} ({-int(values[1])} to {int(values[0])}): "
                         "every rank needs the same run folder (a shared filesystem) to resume")


def gather_files(rt: Runtime, root: Path, relative_paths: list[str]) -> list[str]:
    """Send files under `root` from every rank to rank 0's `root` (whether or not the machines share
    a filesystem); returns the paths rank 0 wrote. Contents travel as uint8 tensors, names as objects."""
    if not rt.distributed:
        return []
    device = rt.device if dist.get_backend() == "nccl" else torch.device("cpu")
    manifests: list = [None] * dist.get_world_size()
    sizes = [(name, (root / name).stat().st_size) for name in relative_paths if Path(name).name != LOCK_FILE]
    dist.all_gather_object(manifests, sizes)
    written = []
    for sender, manifest in enumerate(manifests):
        if sender == 0:
            continue
        for name, size in manifest:
            if dist.get_rank() == sender:
                dist.send(torch.frombuffer(bytearray((root / name).read_bytes()), dtype=torch.uint8).to(device), 0)
            elif dist.get_rank() == 0:
                buffer = torch.empty(size, dtype=torch.uint8, device=device)
                dist.recv(buffer, sender)
                blob = buffer.cpu().numpy().tobytes()
                path = root / name
                if not (path.is_file() and path.read_bytes() == blob):  # a shared filesystem has it already
                    with atomic_write(path, "wb") as f:
                        f.write(blob)
                    written.append(name)
    return written


LAUNCHED_BY_NPROC = "DIGITREC_NPROC"


def launch_local(nproc: int, argv: list[str]) -> None:
    """Run `digitrec <argv>` in `nproc` workers on this machine through torchrun's elastic launcher."""
    from torch.distributed.run import main as torchrun  # torchrun's launcher: only for --nproc

    # the workers set their own threads (runtime.setup_process); this only spares torchrun's warning
    os.environ.setdefault("OMP_NUM_THREADS", str(default_threads(nproc)))
    os.environ[LAUNCHED_BY_NPROC] = str(nproc)  # an interrupted worker then says how to resume: with --nproc
    torchrun(["--standalone", f"--nproc-per-node={nproc}", "--module", "digitrec", *argv])


def strip_option(argv: list[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE` (the launcher's own flag, not the workers')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
