"""Per-image random affine augmentation, batched: one affine_grid + grid_sample per batch.

Matches Keras ImageDataGenerator(rotation_range, zoom_range, width/height_shift_range,
fill_mode='nearest'): a fresh draw per image, one transform about the image centre,
bilinear sampling, edge pixels repeated outside the image, no flips. With `elastic_alpha` > 0, a
smooth random displacement field (Simard et al. 2003) is added to the same sampling grid.
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


def elastic_displacement(n: int, height: int, width: int, alpha: float, sigma: float,
                         generator: torch.Generator) -> torch.Tensor:
    """(n, H, W, 2) displacements in affine_grid's [-1, 1] units: uniform(-1, 1) noise per pixel and
    axis, smoothed by a Gaussian of `sigma` pixels (zero beyond the border), times `alpha` pixels."""
    noise = torch.rand(n * 2, 1, height, width, generator=generator) * 2 - 1
    radius = int(math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=noise.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    smooth = F.conv2d(noise, kernel.view(1, 1, -1, 1), padding=(radius, 0))  # separable: rows, then columns
    smooth = F.conv2d(smooth, kernel.view(1, 1, 1, -1), padding=(0, radius))
    pixels = alpha * smooth.view(n, 2, height, width).permute(0, 2, 3, 1)  # (n, H, W, (dx, dy))
    return pixels * torch.tensor([2 / width, 2 / height], dtype=noise.dtype)


def sample_transforms(n: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw n augmentations from `generator` (on the CPU, so a seed draws the same on any device):
    affine matrices (n, 2, 3) and, with elastic_alpha > 0, displacements (n, H, W, 2)."""
    theta = affine_matrices(sample_affine_params(n, cfg, generator))
    if cfg.elastic_alpha == 0:
        return theta, None
    return theta, elastic_displacement(n, 28, 28, cfg.elastic_alpha, cfg.elastic_sigma, generator)


def apply_transforms(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None) -> torch.Tensor:
    """Resample a float batch (B, 1, H, W) through B drawn transforms; returns a new batch."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    if displacement is not None:
        grid = grid + displacement.to(x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_affine(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch (B, 1, 28, 28); returns a new batch of the same shape."""
    return apply_transforms(x, *sample_transforms(len(x), cfg, generator))
