"""A torchrun worker for tests/training/test_distributed.py: one epoch of the real training loop
(train.train_one_epoch) on a DistributedDataParallel model, then each rank saves its weights.

    torchrun --nproc-per-node W tests/ddp_worker.py MODEL OUT_DIR

MODEL "plain" is the seed network without dropout (no BatchNorm, no per-rank randomness: any W
must match W=1), "fast" the BatchNorm net of preset fast (ranks must match each other).
Augmentation is off here; test_distributed.py checks apart that ranks augment as one process.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from digitrec.core.config import make_config
from digitrec.core.data import load_mnist
from digitrec.training.distributed import DistEnv, barrier, broadcast_buffers, init, shutdown
from digitrec.nets.model import ByteMaskDropout
from digitrec.core.config import RuntimeConfig
from digitrec.training.runtime import resolve, setup_process
from digitrec.training.checkpoint import TrainState
from digitrec.training.optim import steps_per_epoch
from digitrec.training.train import train_one_epoch

model_name, out_dir = sys.argv[1], Path(sys.argv[2])
env = DistEnv.from_environ()
rt = resolve(RuntimeConfig(device="cpu"), env.rank, env.world_size, env.local_rank, env.local_world_size,
             setup_process(RuntimeConfig(threads=1)))
init(rt.device, env)
cfg = make_config("fast" if model_name == "fast" else "seed", width=8, epochs=1, batch_size=64, optimizer="sgd", lr=0.02, momentum=0.0,
                  schedule="constant", val_fraction=0.0, augment=False)
digits = load_mnist("train").subset(np.arange(512), "mnist:train[:512]")
state = TrainState.start(cfg, rt, steps_per_epoch(len(digits), cfg))
model = state.model
for name, module in list(model.named_modules()):
    if isinstance(module, ByteMaskDropout):  # "plain": no per-rank randomness left
        parent = model.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], torch.nn.Identity())
ddp = torch.nn.parallel.DistributedDataParallel(model)
stats = train_one_epoch(ddp, state, torch.from_numpy(digits.images), torch.from_numpy(digits.labels), cfg, rt)
broadcast_buffers(rt, model)  # as fit does after each epoch
del ddp  # before the group goes, as fit's return does
out_dir.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"rank{env.rank}.safetensors"),
          metadata={"images": str(stats["images"]), "loss": repr(stats["loss"])})
barrier(rt)  # as the CLI does: all ranks leave together (a gloo peer gone mid-exchange aborts the exit)
shutdown()
