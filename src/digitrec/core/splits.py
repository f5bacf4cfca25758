"""Which images a run trains on, validates on and fits its temperature on: index splits, numpy only."""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig


def split_validation(labels: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each sorted: a random `val_fraction` held out with `val_seed`.

    Unstratified with val_split "sklearn", the held-out images are exactly those of scikit-learn's
    train_test_split(test_size=val_fraction, random_state=val_seed): numpy's legacy RandomState
    permutation, the first ceil(n * val_fraction) of it (tests/training/test_distributed.py checks it against sklearn).
    """
    n = len(labels)
    if cfg.val_fraction == 0:
        return np.arange(n), np.arange(0)
    if not cfg.stratify:
        rng = np.random.RandomState(cfg.val_seed) if cfg.val_split == "sklearn" else np.random.default_rng(cfg.val_seed)
        order = rng.permutation(n)
        n_val = int(math.ceil(n * cfg.val_fraction))  # sklearn's train_test_split rounds the test part up
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    rng = np.random.default_rng(cfg.val_seed)
    val = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        val.append(members[:int(round(len(members) * cfg.val_fraction))])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(n), val), val


def split_calibration(train_idx: np.ndarray, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, calibration), each sorted: a random `calibration_fraction` of the training
    indices, drawn with `calibration_seed`, left out of training to fit the temperature on."""
    if cfg.calibration_fraction == 0:
        return train_idx, train_idx[:0]
    order = np.random.default_rng(cfg.calibration_seed).permutation(len(train_idx))
    n_calibration = int(math.ceil(len(train_idx) * cfg.calibration_fraction))
    return np.sort(train_idx[order[n_calibration:]]), np.sort(train_idx[order[:n_calibration]])
