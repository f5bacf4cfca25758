"""Bitwise reproducibility across code changes: each preset trained 2 epochs on the first 1,500
MNIST training images, in one process at a fixed thread count; prints a SHA-256 of its weights.

Run it in two checkouts (say, a `git worktree` of the last release beside your change) and compare
the digests: equal digests mean the change left the arithmetic of training untouched.

    python benchmarks/bitwise.py            # from the checkout to test (its src/ is imported)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

try:
    from digitrec.core.config import make_config
    from digitrec.core.data import load_mnist
    from digitrec.training.train import fit
except ImportError:  # a checkout from before the layered layout (a worktree of an older release)
    from digitrec.core.config import make_config
    from digitrec.core.data import load_mnist
    from digitrec.training.train import fit


def weights_digest(path: Path) -> str:
    """SHA-256 over the tensors (names, dtypes, shapes, bytes) in key order: file metadata
    (the environment, the time) does not count."""
    tensors = load_file(str(path))
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        digest.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed", "fast", "best"])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist("train")
    data = data.subset(np.arange(args.images), f"mnist:train[:{args.images}]")
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            fit(make_config(preset, epochs=args.epochs), data, Path(tmp) / preset, quiet=True)
            print(f"{preset:5} {weights_digest(Path(tmp) / preset / 'model.safetensors')}", flush=True)


if __name__ == "__main__":
    main()
