"""SIGKILL a real `digitrec train` at many random moments, resume after each, compare the end with an
uninterrupted run: the long version of tests/e2e/test_faults.py's kill test.

    python benchmarks/kills.py --kills 50 --seed 1

Each kill lands at a random moment after the process took the run's lock (start-up, loading, any
step, validation, any write) or, one time in four, the moment a checkpoint or weights temp file
appears (in the middle of writing it). After every kill the run folder must hold a loadable
checkpoint (once one was written); the last resume must end with the uninterrupted run's weights
and history, no temp file and no lock file left. Prints one line per kill and a summary.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from digitrec.core.rundir import Run
from digitrec.training.checkpoint import TrainState
from digitrec.training.runtime import resolve
from digitrec.core.config import RuntimeConfig
from digitrec.core.config import config_from_dict
from digitrec.core.data import make_digits, write_kaggle_csv
from digitrec.core.files import read_json

DIGITREC = [sys.executable, "-m", "digitrec", "train"]


def loadable(run: Path) -> None:
    cfg = config_from_dict(read_json(run / "config.json"))
    TrainState.start(cfg, resolve(RuntimeConfig(device="cpu")), 1000).load(Run(run))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images", type=int, default=1200)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import numpy as np

        data_rng = np.random.default_rng(3)
        digits = make_digits(data_rng.integers(0, 256, (args.images, 28, 28), dtype=np.uint8),
                             data_rng.integers(0, 10, args.images), "synthetic")
        write_kaggle_csv(tmp / "train.csv", digits, with_labels=True)
        flags = ["--train", str(tmp / "train.csv"), "--epochs", str(args.epochs), "--batch-size", "32",
                 "--threads", "1", "--seed", "11", "--quiet"]
        start = time.time()
        subprocess.run(DIGITREC + flags + ["--out", str(tmp / "whole")], env=env, check=True, capture_output=True)
        whole_s = time.time() - start
        run = tmp / "killed"
        mid_write = finished_early = 0
        for kill in range(args.kills):
            resume = ["--resume"] if (run / "config.json").exists() else []
            proc = subprocess.Popen(DIGITREC + flags + ["--out", str(run), *resume], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            at_write = rng.random() < 0.25
            delay = rng.uniform(0, whole_s / 3)
            locked_at = None
            while proc.poll() is None:
                try:
                    locked = (run / ".lock").read_text().split()[:1] == [str(proc.pid)]
                except (FileNotFoundError, IndexError):
                    locked = False
                if locked and locked_at is None:
                    locked_at = time.time()
                if at_write and any(p.name.startswith((".checkpoint.", ".model.")) for p in run.glob(".*.tmp")):
                    break
                if not at_write and locked_at is not None and time.time() - locked_at >= delay:
                    break
                time.sleep(0.0005)
            proc.kill()
            proc.wait()
            temps = sorted(p.name for p in run.glob(".*.tmp"))
            mid_write += bool(temps)
            if (run / "checkpoint.safetensors").exists():
                loadable(run)
            done = max(len((run / "history.csv").read_text().splitlines()) - 1, 0) if (run / "history.csv").exists() else 0
            print(f"kill {kill + 1}: {'at a write' if at_write else f'{delay:.2f} s after the lock'}, "
                  f"epochs done {done}, temp files left {temps}", flush=True)
            if (run / "metrics.json").exists():  # finished: check it, then start again for the remaining kills
                finished_early += 1
                a, b = load_file(str(tmp / "whole" / "model.safetensors")), load_file(str(run / "model.safetensors"))
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "a finished run differs"
                subprocess.run(["rm", "-r", str(run)], check=True)
        done = subprocess.run(DIGITREC + flags + ["--out", str(run)] + (["--resume"] if (run / "config.json").exists() else []),
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        a, b = load_file(str(tmp / "whole" / "model.safetensors")), load_file(str(run / "model.safetensors"))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        strip = lambda p: [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]  # noqa: E731
        same_history = strip(tmp / "whole" / "history.csv") == strip(run / "history.csv")
        leftovers = sorted(p.name for p in run.glob(".*"))
        print(f"{args.kills} kills ({mid_write} in the middle of a write, {finished_early} runs finished, checked and "
              f"restarted); weights bit-identical: {same}; history identical: {same_history}; "
              f"left behind: {leftovers or 'nothing'}")
        assert same and same_history and not leftovers


if __name__ == "__main__":
    main()
