"""Real-looking test images built from MNIST test digits: what people feed a digit reader.

Each builder turns one MNIST digit (28x28 uint8, white on black) into a PIL image the way a photo,
scan or drawing app would present it. Deterministic given the rng.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

PAPER = (250, 247, 235)  # off-white paper


def _big(digit: np.ndarray, scale: int = 4) -> Image.Image:
    """The digit enlarged (smoothly, like a real stroke), white on black, mode L."""
    return Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)


def _on_paper(ink: Image.Image, ink_rgb=(20, 20, 30), paper_rgb=PAPER, canvas=None, offset=(0, 0)) -> Image.Image:
    """Composite ink (mode L, 255 = full ink) onto a paper-coloured RGB canvas at offset."""
    size = canvas or ink.size
    mask = Image.new("L", size, 0)
    mask.paste(ink, offset)
    return Image.composite(Image.new("RGB", size, ink_rgb), Image.new("RGB", size, paper_rgb), mask)


def inverted(digit, rng):
    return Image.fromarray(255 - digit)  # dark ink on white, MNIST size


def coloured(digit, rng):
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    paper = tuple(int(v) for v in rng.integers(190, 256, 3))
    return _on_paper(_big(digit), ink, paper)


def off_centre(digit, rng):
    ink = _big(digit, 3)  # 84 px digit somewhere on a 240 x 180 page
    offset = (int(rng.integers(0, 240 - 84)), int(rng.integers(0, 180 - 84)))
    return _on_paper(ink, canvas=(240, 180), offset=offset)


def rotated(digit, rng):
    angle = float(rng.uniform(-12, 12))
    return _on_paper(_big(digit).rotate(angle, Image.Resampling.BILINEAR, expand=True))


def jpeg(digit, rng):
    page = _on_paper(_big(digit), paper_rgb=(235, 235, 225))
    noisy = np.asarray(page, dtype=np.float32) + rng.normal(0, 8, (page.height, page.width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=25)
    return Image.open(io.BytesIO(buffer.getvalue()))


def transparent(digit, rng):
    """A drawing-app PNG: black ink whose alpha is the stroke, fully transparent elsewhere."""
    image = Image.new("RGBA", (112, 112), (0, 0, 0, 0))
    image.putalpha(_big(digit))
    return image


def thick(digit, rng):
    return _on_paper(_big(digit).filter(ImageFilter.MaxFilter(7)))


def thin(digit, rng):
    return _on_paper(_big(digit).filter(ImageFilter.MinFilter(5)))


VARIANTS = {f.__name__: f for f in (inverted, coloured, off_centre, rotated, jpeg, transparent, thick, thin)}


def strip(digits: list[np.ndarray], rng) -> Image.Image:
    """A handwritten number: the digits side by side with uneven gaps and baselines, dark on paper."""
    gaps = [int(rng.integers(0, 8)) for _ in digits]
    lifts = [int(rng.integers(0, 6)) for _ in digits]
    width = sum(28 + g for g in gaps) + 8
    canvas = np.zeros((40, width), dtype=np.uint8)
    x = 4
    for digit, gap, lift in zip(digits, gaps, lifts):
        # trim MNIST's empty margin so neighbours sit as close as handwriting does
        cols = np.flatnonzero(digit.any(0))
        part = digit[:, cols[0]:cols[-1] + 1]
        canvas[lift + 4:lift + 32, x:x + part.shape[1]] = np.maximum(canvas[lift + 4:lift + 32, x:x + part.shape[1]], part)
        x += part.shape[1] + gap + 2
    canvas = canvas[:, :x + 4]
    return _on_paper(Image.fromarray(canvas).resize((canvas.shape[1] * 3, 120), Image.Resampling.BICUBIC))
