"""Numbers written in a form's comb field (a printed box a digit), read by a git revision's
preprocessing and by this tree's.

A check written from the form use case, apart from both photo generators and never tuned on but
for seed 900: numbers of 2-6 MNIST *test* digits, 28-70 px tall, each in its own box (1.1-1.5 digit
heights tall, 0.8-1.2 as wide), written anywhere inside it (a wide digit may touch a side), the
print 1-3 px thick, grey, blue, red or black at 50-100%, either a closed comb (every box closed) or
an open one (a base line with upright ticks from half to four fifths of a box up); tinted paper, a
blue, black or grey pen, blur, noise, JPEG. A number counts as read when every digit is found and
read right.

    python benchmarks/comb_fields.py RUN [--rev 67c073e] [--seeds 901] [--n 100]
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_numbers import PENS, drawn, side_by_side  # noqa: E402

from digitrec.core.data import Digits  # noqa: E402

PRINT = ((40, 40, 45), (110, 150, 220), (200, 110, 110), (140, 140, 140))


def comb_number(test: Digits, picks: np.ndarray, rng: np.random.Generator, open_top: bool) -> bytes:
    """The digits `picks` of `test` written in a comb field, a box each, as a JPEG."""
    height = int(rng.integers(28, 70))
    box = int(height * rng.uniform(1.1, 1.5))
    box_w = int(box * rng.uniform(0.8, 1.2))
    thick = rng.uniform(1.0, 3.0)
    pad = int(rng.uniform(0.2, 0.8) * box) + 4
    rows, width = box + 2 * pad, box_w * len(picks) + 2 * pad
    cover = np.zeros((rows, width), np.float32)
    for j, i in enumerate(picks):
        piece = drawn(test.images[i], min(box - 4, int(round(height * rng.uniform(0.8, 1.0)))), box_w - 4)
        tall, wide = piece.shape
        top = pad + int(rng.integers(1, max(2, box - tall - 1)))
        left = pad + j * box_w + int(rng.integers(1, max(2, box_w - wide - 1)))
        cover[top:top + tall, left:left + wide] = np.maximum(cover[top:top + tall, left:left + wide], piece)
    gy, gx = np.mgrid[0:rows, 0:width].astype(np.float32)

    def line(distance: np.ndarray) -> np.ndarray:
        return np.clip(thick / 2 + 0.5 - np.abs(distance), 0, 1)
    along = (gx >= pad - thick) & (gx <= pad + box_w * len(picks) + thick)
    lines = line(gy - (pad + box)) * along
    if not open_top:
        lines = np.maximum(lines, line(gy - pad) * along)
    low = pad if not open_top else pad + box * rng.uniform(0.2, 0.5)
    upright = (gy >= low - thick) & (gy <= pad + box + thick)
    for j in range(len(picks) + 1):
        lines = np.maximum(lines, line(gx - (pad + j * box_w)) * upright)
    paper = np.array([rng.uniform(225, 250), rng.uniform(220, 248), rng.uniform(200, 240)], np.float32)
    colour = np.array(PRINT[int(rng.integers(len(PRINT)))], np.float32)
    page = np.ones((rows, width, 3), np.float32) * paper
    page *= 1 - lines[..., None] * rng.uniform(0.5, 1.0) * (1 - colour / 255)
    pen = np.array(PENS[int(rng.integers(len(PENS)))], np.float32)
    cover = cv2.GaussianBlur(cover, (0, 0), rng.uniform(0.4, 1.0))
    page = page * (1 - cover[..., None]) + pen * cover[..., None] + rng.normal(0, rng.uniform(1, 4), (rows, width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(70, 96)))
    return buffer.getvalue()


if __name__ == "__main__":
    side_by_side(__doc__.split("\n\n")[0], {"closed": lambda test, picks, rng: comb_number(test, picks, rng, False),
                                             "open (ticks)": lambda test, picks, rng: comb_number(test, picks, rng, True)},
                 [901], 100)
