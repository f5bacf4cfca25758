"""The network's input, and the geometry applied to it: scaling, random augmentation, TTA views.

`to_float` turns uint8 digits into what every network takes. Training augments each batch with
per-image random affine transforms, batched: one affine_grid + grid_sample per batch, matching Keras ImageDataGenerator(rotation_range, zoom_range, width/height_shift_range,
fill_mode='nearest'): a fresh draw per image, one transform about the image centre,
bilinear sampling, edge pixels repeated outside the image, no flips. With `elastic_alpha` > 0, a
smooth random displacement field (Simard et al. 2003) is added to the same sampling grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import numpy as np

from ..core.config import TrainConfig, make_config
from ..core.data import as_digits

# Test-time augmentation views: (shift right, shift down) in pixels, rotation in degrees. Small
# enough that every view is still the same digit; the identity view comes first.
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0, 0, 0),
    (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0),
    (0, 0, 5), (0, 0, -5),
)


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] (the reference divides by 255)."""
    x = torch.as_tensor(images)
    return x.unsqueeze(1).float().div_(255.0)


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


def view_grid(view: tuple[float, float, float], shape: list[int]) -> torch.Tensor:
    """Where `view` = (dx, dy, degrees) samples each output pixel of a batch of `shape` (B, 1, H, W):
    an affine_grid (B, H, W, 2), drawn as the training transforms are."""
    dx, dy, degrees = view
    n, _, height, width = shape
    full = torch.full((n,), 1.0)
    # affine_matrices maps output to input coordinates: moving the digit right samples from the left
    params = {"angle_deg": full * degrees, "zoom_x": full, "zoom_y": full,
              "shift_x": full * (-dx / width), "shift_y": full * (-dy / height)}
    return F.affine_grid(affine_matrices(params), list(shape), align_corners=False)


# ---------------------------------------------------------------------------------------------
# what the augmentation does, as a picture (the report; notebooks)

AUGMENTED_ROWS, AUGMENTED_COPIES = 4, 7  # each row: an original and 7 augmented draws
AUGMENT_SEED = 0  # the augmented grid is a fixed rendering, the same every time


def augmented_grid(images: np.ndarray, cfg, copies: int = AUGMENTED_COPIES,
                   seed: int = AUGMENT_SEED) -> np.ndarray:
    """Each uint8 image (R, 28, 28) followed by `copies` draws of `cfg`'s augmentation: float (R * (copies + 1), 28, 28)."""
    originals = to_float(images)  # (R, 1, 28, 28)
    x = originals.repeat_interleave(copies, dim=0)  # (R * C, 1, 28, 28)
    augmented = random_affine(x, cfg, torch.Generator().manual_seed(seed)).squeeze(1).numpy()
    augmented = augmented.reshape(len(images), copies, 28, 28)
    return np.concatenate([originals.numpy(), augmented], axis=1).reshape(-1, 28, 28)



def plot_augmentations(data, preset: str = "seed", rows: int = AUGMENTED_ROWS, copies: int = AUGMENTED_COPIES,
                       seed: int = AUGMENT_SEED, **overrides):
    """The first `rows` images of `data`, each followed by `copies` draws of the preset's augmentation
    (config fields as keyword overrides, e.g. rotation_deg=20).

    >>> dr.plot_augmentations(dr.load_mnist("train"), "seed", rows=2)  # doctest: +SKIP
    """
    from ..core.figures import augmentation_figure  # matplotlib: only when a picture is asked for

    cfg = make_config(preset, **overrides)
    return augmentation_figure(augmented_grid(as_digits(data).images[:rows], cfg, copies, seed), cfg, copies)
