"""Per-image random affine augmentation, batched: one affine_grid + grid_sample per batch.

Matches Keras ImageDataGenerator(rotation_range, zoom_range, width/height_shift_range,
fill_mode='nearest'): a fresh draw per image, one transform about the image centre,
bilinear sampling, edge pixels repeated outside the image, no flips.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import TrainConfig


def sample_affine_params(n: int, cfg: TrainConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw n independent transforms; each entry is (n,)."""

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    return {
        "angle_deg": uniform(-cfg.rotation_deg, cfg.rotation_deg),
        "zoom_x": uniform(1 - cfg.zoom, 1 + cfg.zoom),
        "zoom_y": uniform(1 - cfg.zoom, 1 + cfg.zoom),
        "shift_x": uniform(-cfg.shift, cfg.shift),  # fraction of the width
        "shift_y": uniform(-cfg.shift, cfg.shift),  # fraction of the height
    }


def affine_matrices(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, 2, 3) matrices for affine_grid: output coords -> input coords, in [-1, 1] units.

    The image spans 2 units, so a shift of a fraction f of the width is 2f units.
    """
    angle = params["angle_deg"] * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zx, zy = params["zoom_x"], params["zoom_y"]
    theta = torch.stack([
        torch.stack([cos * zx, -sin * zy, 2 * params["shift_x"]], dim=1),
        torch.stack([sin * zx, cos * zy, 2 * params["shift_y"]], dim=1),
    ], dim=1)
    return theta  # (n, 2, 3)


def random_affine(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, 1, H, W); returns a new batch of the same shape."""
    theta = affine_matrices(sample_affine_params(len(x), cfg, generator)).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
