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


# What reading a photo leaves on the 28x28 digit (outputs/images.py), drawn for a damaged image:
# each kind with its own chance, so an image can get several.
DAMAGE_CHANCE = {"line": 0.4, "cut": 0.3, "specks": 0.4, "thickness": 0.5}


def _segments(n: int, size: int, generator: torch.Generator, width: tuple[float, float],
              length: tuple[float, float]) -> torch.Tensor:
    """(n, size, size) coverage in [0, 1] of one straight segment per image: within 20 degrees of
    horizontal (a third of them of vertical), through a point of the digit's 20 px box, anti-aliased."""

    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-20, 20) * (math.pi / 180) + (torch.rand(n, generator=generator) < 1 / 3) * (math.pi / 2)
    cx, cy = uniform(4, size - 4), uniform(4, size - 4)
    half_width, half_length = uniform(*width) / 2, uniform(*length) / 2
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    px, py = coords.view(1, 1, size) - cx.view(n, 1, 1), coords.view(1, size, 1) - cy.view(n, 1, 1)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    across, along = (px * sin - py * cos).abs(), (px * cos + py * sin).abs()
    return ((half_width.view(n, 1, 1) + 0.5 - across).clamp(0, 1)
            * (half_length.view(n, 1, 1) + 0.5 - along).clamp(0, 1))


def sample_photo_damage(n: int, share: float, generator: torch.Generator, size: int = 28) -> torch.Tensor:
    """(n, 3, size, size): what `share` of n images get of the debris a photo's preprocessing leaves
    behind, as apply_transforms uses it. Channel 0 is ink to add (a line left in place, full width
    or a stub along a removed one; 1-4 specks), channel 1 what is kept of the ink (0 across a band
    where line removal cut a stroke), channel 2 a thickness change in [-1, 1] (one 3x3 dilation,
    positive, or erosion, negative, blended by its size). Undamaged images: add 0, keep 1, thickness 0."""
    damaged = torch.rand(n, generator=generator) < share
    chance = {kind: damaged & (torch.rand(n, generator=generator) < p) for kind, p in DAMAGE_CHANCE.items()}
    line_ink = 0.3 + 0.7 * torch.rand(n, 1, 1, generator=generator)
    add = chance["line"].view(n, 1, 1) * line_ink * _segments(n, size, generator, (0.8, 2.0), (4.0, 2.0 * size))
    specks = torch.zeros(n, size, size)
    for count in range(4):  # 1 to 4 specks, 0.5-1.5 px in radius
        dots = chance["specks"] & (torch.rand(n, generator=generator) < 1 / (count + 1))
        dot = _segments(n, size, generator, (1.0, 3.0), (0.0, 1.0)) * (0.4 + 0.6 * torch.rand(n, 1, 1, generator=generator))
        specks = torch.maximum(specks, dots.view(n, 1, 1) * dot)
    add = torch.maximum(add, specks)
    keep = 1 - chance["cut"].view(n, 1, 1) * _segments(n, size, generator, (1.0, 2.5), (2.0 * size, 2.0 * size))
    thickness = chance["thickness"] * (torch.rand(n, generator=generator) * 2 - 1)
    return torch.stack([add, keep, thickness.view(n, 1, 1).expand(n, size, size)], dim=1)


def apply_photo_damage(x: torch.Tensor, damage: torch.Tensor) -> torch.Tensor:
    """A float batch (B, 1, H, W) with the drawn damage (B, 3, H, W) of sample_photo_damage."""
    damage = damage.to(x.device, x.dtype)
    add, keep, thickness = damage[:, 0:1], damage[:, 1:2], damage[:, 2:3, :1, :1]  # thickness (B, 1, 1, 1)
    thicker = F.max_pool2d(x, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-x, 3, stride=1, padding=1)
    x = x + thickness.clamp(min=0) * (thicker - x) + (-thickness).clamp(min=0) * (thinner - x)
    return torch.maximum(x * keep, add)


def sample_transforms(n: int, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Draw n augmentations from `generator` (on the CPU, so a seed draws the same on any device):
    affine matrices (n, 2, 3); with elastic_alpha > 0, displacements (n, H, W, 2); with photo_augment
    > 0, the photo damage (n, 3, H, W) of sample_photo_damage. What is off is None and draws nothing."""
    theta = affine_matrices(sample_affine_params(n, cfg, generator))
    displacement = damage = None
    if cfg.elastic_alpha > 0:
        displacement = elastic_displacement(n, 28, 28, cfg.elastic_alpha, cfg.elastic_sigma, generator)
    if cfg.photo_augment > 0:
        damage = sample_photo_damage(n, cfg.photo_augment, generator)
    return theta, displacement, damage


def apply_transforms(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None,
                     damage: torch.Tensor | None = None) -> torch.Tensor:
    """Resample a float batch (B, 1, H, W) through B drawn transforms, then add any photo damage;
    returns a new batch."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    if displacement is not None:
        grid = grid + displacement.to(x.device, x.dtype)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x if damage is None else apply_photo_damage(x, damage)


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
