"""Augmentation (nets/augment.py): the reference's ranges, the geometry, elastic distortion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from digitrec.nets.augment import affine_matrices, elastic_displacement, random_affine, sample_affine_params
from digitrec.core.config import make_config


def test_augmentation_samples_the_spec_ranges():
    params = sample_affine_params(20_000, make_config(), torch.Generator().manual_seed(0))
    for key, (low, high) in {"angle_deg": (-10, 10), "zoom_x": (0.9, 1.1), "zoom_y": (0.9, 1.1),
                             "shift_x": (-0.1, 0.1), "shift_y": (-0.1, 0.1)}.items():
        values = params[key]
        assert low <= values.min() and values.max() <= high, key
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low), key
        assert abs(values.mean().item() - (low + high) / 2) < 0.02 * (high - low), key
    # a fresh, independent draw per image
    assert abs(np.corrcoef(params["zoom_x"], params["zoom_y"])[0, 1]) < 0.05


def test_affine_geometry_shift_fill_and_no_flip():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:18, 4:8] = 1.0  # a bar on the left
    identity = {"angle_deg": torch.zeros(1), "zoom_x": torch.ones(1), "zoom_y": torch.ones(1),
                "shift_x": torch.zeros(1), "shift_y": torch.zeros(1)}
    grid = torch.nn.functional.affine_grid(affine_matrices(identity), [1, 1, 28, 28], align_corners=False)
    assert torch.allclose(torch.nn.functional.grid_sample(x, grid, align_corners=False), x, atol=1e-6)

    # a shift of 0.1 of the width moves content by 2.8 px (sign: output samples from x + shift)
    shifted = dict(identity, shift_x=torch.tensor([-0.1]))
    grid = torch.nn.functional.affine_grid(affine_matrices(shifted), [1, 1, 28, 28], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    cols = torch.arange(28.0)
    centre = lambda img: (img[0, 0].sum(0) * cols).sum() / img.sum()  # noqa: E731
    assert centre(out) - centre(x) == pytest.approx(2.8, abs=0.05)

    # edge pixels repeat ("nearest" fill): a constant image stays constant under any transform
    flat = torch.full((64, 1, 28, 28), 0.7)
    assert torch.allclose(random_affine(flat, make_config(), torch.Generator().manual_seed(1)), flat, atol=1e-5)

    # no flips: every augmented copy stays closer to the original than to its mirror image
    xs = x.repeat(200, 1, 1, 1)
    aug = random_affine(xs, make_config(), torch.Generator().manual_seed(2))
    to_orig = ((aug - x) ** 2).flatten(1).sum(1)
    to_mirror = ((aug - x.flip(-1)) ** 2).flatten(1).sum(1)
    assert bool((to_orig < to_mirror).all())


def test_elastic_distortion_is_smooth_sized_by_alpha_and_off_by_default():
    disp = elastic_displacement(500, 28, 28, alpha=34.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    assert disp.shape == (500, 28, 28, 2)
    pixels = disp * 14  # [-1, 1] units -> pixels
    assert 0.8 < pixels.std().item() < 1.8  # uniform(-1, 1) * 34 smoothed by sigma 4: ~1.3 px (Simard's setting)
    neighbours = torch.corrcoef(torch.stack([pixels[:, :, :-1].flatten(), pixels[:, :, 1:].flatten()]))[0, 1]
    assert neighbours > 0.9  # a smooth field, not per-pixel noise
    doubled = elastic_displacement(500, 28, 28, alpha=68.0, sigma=4.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(doubled, 2 * disp)

    x = torch.rand(16, 1, 28, 28)
    plain = random_affine(x, make_config(), torch.Generator().manual_seed(3))
    elastic = random_affine(x, make_config(elastic_alpha=34.0), torch.Generator().manual_seed(3))
    assert not torch.allclose(plain, elastic)
    torch.testing.assert_close(random_affine(x, make_config(elastic_alpha=34.0), torch.Generator().manual_seed(3)),
                               elastic)
    flat = torch.full((8, 1, 28, 28), 0.7)  # edge pixels still repeat
    torch.testing.assert_close(random_affine(flat, make_config(elastic_alpha=34.0), torch.Generator()), flat)
    with pytest.raises(ValueError, match="elastic_alpha must be >= 0 and elastic_sigma > 0"):
        make_config(elastic_sigma=0.0)
