"""The optimiser and the learning-rate schedule a recipe names, and when the schedule steps."""

from __future__ import annotations

import math

import torch

from ..core.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, alpha=cfg.rho, eps=cfg.eps,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "plateau":
        # Keras reduces once `wait >= patience` (3 bad epochs); PyTorch once `num_bad_epochs >
        # patience`. So Keras patience 3 is PyTorch patience 2 (tests/training/test_train.py checks it).
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience - 1,
            threshold=cfg.plateau_min_delta, threshold_mode="abs", min_lr=cfg.min_lr)
    if cfg.schedule == "onecycle":
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.onecycle_warmup
        if math.isclose(warmup * total, 1.0):
            # OneCycleLR's warm-up would end on step 0, where it starts, and it divides by its length
            # (4 steps at 0.25: one epoch of a 600-row CSV); one and a half steps instead
            warmup = 1.5 / total
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total,
            pct_start=warmup, cycle_momentum=cfg.cycle_momentum and cfg.optimizer == "sgd")
    return None


class Schedule:
    """The learning-rate schedule and when it steps, decided here only: a one-cycle rate after every
    batch, the plateau rate after every epoch on the validation accuracy, a constant rate never."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
        self.per_batch = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)

    def after_step(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_acc: float) -> None:
        if self.scheduler is not None and not self.per_batch:
            self.scheduler.step(val_acc)


def steps_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    return n_train // cfg.batch_size if cfg.drop_last else math.ceil(n_train / cfg.batch_size)
