"""Knowledge distillation: a run learns from a finished run's (or ensemble's) probabilities as well as its labels.

The recipe names the teacher (`distill_from`: a run folder, an ensemble's included) and how much its
probabilities count (`distill_weight`) at which temperature (`distill_temperature`). The teacher
predicts every training image once, before the first step, as it predicts anything (its views, its
members, its fitted temperature), and the loss of each augmented batch takes the teacher's
probabilities of the images the batch was drawn from. Once, not online on each augmented batch:
online, the teacher would predict every image again each epoch. Once is costly enough: a teacher of
3 `fast` runs, 7 views each, took about 125 s for 54,000 images on one busy thread, where the
student's 4 epochs took 69 s (docs/records.md); online it would take that every epoch.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.config import TrainConfig
from ..core.files import InputError
from ..core.rundir import WEIGHTS, Run
from ..nets.predict import predict_logits
from ..nets.weights import weights_from_bytes
from .runtime import Runtime


def check_teacher(cfg: TrainConfig, out_dir: str | os.PathLike | None = None) -> None:
    """InputError unless `cfg.distill_from` (if set) is a finished run (other than `out_dir`). Read-only."""
    if not cfg.distill_from:
        return
    teacher = Run(cfg.distill_from)
    if not teacher.path.is_dir():
        raise InputError(f"{cfg.distill_from}: no such run directory (distill_from names the teacher's run folder)")
    if out_dir is not None and teacher.path.resolve() == Path(out_dir).resolve():
        raise InputError(f"{cfg.distill_from}: a run cannot be its own teacher (distill_from is --out)")
    if not teacher.has(WEIGHTS):
        raise InputError(f"{cfg.distill_from}: no {WEIGHTS}; distill_from needs a finished run or ensemble")


def teacher_log_probs(cfg: TrainConfig, images: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, dict]:
    """The teacher's log-probabilities (N, 10) float32 of uint8 `images` (N, 28, 28) on rt.device,
    and what to record of it: its folder, its weights' SHA-256 and the seconds it took."""
    check_teacher(cfg)
    start = time.perf_counter()
    blob = Run(cfg.distill_from).read_bytes(WEIGHTS)  # checked against the teacher's manifest
    teacher, _, _ = weights_from_bytes(blob, Path(cfg.distill_from) / WEIGHTS)
    teacher.to(rt.device)
    log_probs = predict_logits(teacher, images, rt.eval_batch_size, rt.channels_last, rt.autocast).log_softmax(1)
    record = {"teacher": str(Path(cfg.distill_from).resolve()), "teacher_sha256": hashlib.sha256(blob).hexdigest(),
              "teacher_seconds": round(time.perf_counter() - start, 2)}
    return log_probs.to(rt.device), record


def distillation_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                      teacher: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of a batch: cross-entropy with the labels (label-smoothed as the recipe says),
    mixed with the cross-entropy against the teacher's probabilities when `teacher` (log-probabilities
    (B, 10)) is given: (1 - w) * hard + w * T^2 * soft, both softened by T (Hinton et al., 2015; T^2
    keeps the soft gradients' scale as T changes)."""
    hard = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if teacher is None:
        return hard
    t, w = cfg.distill_temperature, cfg.distill_weight
    soft = F.cross_entropy(logits / t, (teacher.float() / t).softmax(1)) * (t * t)
    return (1 - w) * hard + w * soft
