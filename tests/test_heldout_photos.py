"""The held-out photo generator (benchmarks/heldout_photos.py): deterministic, well-formed pictures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("benchmarks_heldout_photos", ROOT / "benchmarks" / "heldout_photos.py")
heldout = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = heldout  # dataclasses look their module up there
spec.loader.exec_module(heldout)


def check(case, condition: str, strength: int) -> None:
    assert case.condition == condition and case.strength == strength
    assert case.image.dtype == np.uint8 and case.image.ndim == 3 and case.image.shape[2] == 3
    assert min(case.image.shape[:2]) >= 8
    assert case.suffix in (".png", ".jpg")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(case.encoded, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, case.image)  # image is what the file holds
    assert case.encoded.startswith(b"\x89PNG" if case.suffix == ".png" else b"\xff\xd8")


@pytest.mark.parametrize("condition", heldout.CONDITIONS)
def test_every_condition_and_strength_gives_rgb_files(condition):
    for strength in heldout.STRENGTHS:
        batch = heldout.cases(condition, strength, 3, seed=1)
        assert [c.label for c in batch] == ["0", "1", "2"]
        for case in batch:
            check(case, condition, strength)


def test_same_seed_same_pictures_and_n_only_extends():
    a = heldout.cases("tight_crop", 2, 4, seed=5)
    b = heldout.cases("tight_crop", 2, 2, seed=5)
    assert [c.encoded for c in a[:2]] == [c.encoded for c in b]
    assert heldout.cases("tight_crop", 2, 1, seed=6)[0].encoded != a[0].encoded


def test_numbers():
    batch = heldout.number_cases(3, seed=2, min_digits=2, max_digits=4)
    assert batch[0].encoded == heldout.number_cases(1, seed=2, min_digits=2, max_digits=4)[0].encoded
    for case in batch:
        check(case, "numbers_ruled", case.strength)
        assert 2 <= len(case.label) <= 4 and case.label.isdigit()
        assert case.image.shape[1] > case.image.shape[0]  # a number is wider than tall


def test_bad_arguments():
    with pytest.raises(ValueError, match="condition must be one of"):
        heldout.cases("blurry", 1, 1)
    with pytest.raises(ValueError, match="strength must be 1, 2 or 3"):
        heldout.cases("ruled", 4, 1)
