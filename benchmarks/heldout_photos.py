"""Held-out photos of handwritten digits: an honest measure of the photo reader.

Each picture is an official MNIST *test* digit (the networks train on the training images) shown as
a person would photograph or scan it: ballpoint, gel pen, felt tip, marker or pencil on white,
cream, grey, tinted or recycled paper, ruled or squared or inside a printed form box, under room
light with its gradients and shadows, through a phone camera (a small tilt, a little perspective,
blur, sensor noise, JPEG), then cropped as people crop. The pictures were designed from how people
photograph and scan digits, not from how digitrec's reader works, and nothing is tuned on them.

    from heldout_photos import CONDITIONS, cases, number_cases
    for case in cases("tight_crop", strength=2, n=100):   # case.encoded is the file the reader gets
        ...
    python benchmarks/heldout_photos.py --out runs/heldout --n 20   # sample files and labels.csv

A condition's strength goes from 1 (mild) to 3 (hard). Every case has its own generator, seeded by
(seed, condition, strength, index), so a case does not depend on n: cases(c, s, 50) begins with
cases(c, s, 20). Single-digit labels cycle through 0..9, so every condition holds every digit.
A crop never cuts the digit's ink: a margin of 0 puts the picture's edge on the ink's bounding box.
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from digitrec.core.data import load_mnist

CONDITIONS: tuple[str, ...] = ("tight_crop", "ruled", "grid", "form_box", "marks", "lighting", "pencil",
                               "loose_crop")
NUMBERS = "numbers_ruled"
STRENGTHS = (1, 2, 3)
INK_LEVEL = 0.1  # coverage from which a pixel counts as the digit's ink: the crop keeps all of it


@dataclass(frozen=True)
class Case:
    condition: str        # e.g. "tight_crop", or "numbers_ruled"
    strength: int         # 1 (mild) .. 3 (hard)
    label: str            # "7", or "12258" for a number
    image: np.ndarray     # (H, W, 3) uint8 RGB: what the file holds once decoded
    encoded: bytes        # the picture as a file's bytes, what the reader is given
    suffix: str           # ".png" or ".jpg"


# ---------------------------------------------------------------------------------------------
# The digits

@functools.cache
def _mnist_test() -> tuple[np.ndarray, list[np.ndarray]]:
    """The 10,000 official test images and, per label, the indices holding it."""
    test = load_mnist("test")
    labels = np.asarray(test.labels)
    return np.asarray(test.images), [np.flatnonzero(labels == d) for d in range(10)]


def pick_digit(rng: np.random.Generator, label: int) -> np.ndarray:
    images, by_label = _mnist_test()
    return images[rng.choice(by_label[label])]  # (28, 28) uint8, white ink on black


# ---------------------------------------------------------------------------------------------
# Pens: what a stroke looks like

@dataclass(frozen=True)
class Pen:
    kind: str
    color: tuple[float, float, float]  # RGB reflectance of a fully inked spot, 0..1 (ink absorbs light)
    width: float      # stroke width as a fraction of the digit's height; 0 keeps MNIST's own strokes
    threshold: float  # for width 0: level of the smoothed MNIST intensity where the ink's edge lies
    opacity: float    # how much light a full stroke absorbs
    pressure: float   # how much the darkness wanders along the stroke (hand pressure, a drying pen)
    grain: float      # how much the paper's tooth breaks the stroke up (pencil)


INKS = {  # reflectance of a full stroke, as a phone sees it
    "black": (0.13, 0.13, 0.16),
    "blue": (0.17, 0.24, 0.58),
    "bright_blue": (0.12, 0.30, 0.78),
    "red": (0.74, 0.16, 0.18),
    "green": (0.18, 0.45, 0.25),
}


def _jitter_color(rng, color, amount=0.04):
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0.02, 0.95)) for c in color)


def draw_pen(rng: np.random.Generator, kind: str, faint: float = 0.0) -> Pen:
    """A pen of that kind with its own colour, width and pressure; `faint` (0..1) lightens it."""
    ink = rng.choice(["black", "blue", "blue", "bright_blue", "red", "green"], p=[.38, .25, .12, .1, .1, .05])
    if kind == "ballpoint":  # thin, and never quite black: the paste skips and pales with pressure
        pen = Pen(kind, _jitter_color(rng, INKS[ink]), rng.uniform(0.025, 0.05), 0, rng.uniform(0.7, 0.95),
                  rng.uniform(0.15, 0.45), 0.0)
    elif kind == "gel":
        pen = Pen(kind, _jitter_color(rng, INKS[ink]), rng.uniform(0.045, 0.075), 0, rng.uniform(0.85, 1.0),
                  rng.uniform(0.0, 0.15), 0.0)
    elif kind == "felt":  # a felt tip follows the hand closely: MNIST's own, uneven strokes
        pen = Pen(kind, _jitter_color(rng, INKS[ink]), 0.0, rng.uniform(0.45, 0.6), rng.uniform(0.85, 1.0),
                  rng.uniform(0.0, 0.2), 0.0)
    elif kind == "marker":  # thick and dark
        color = INKS[rng.choice(["black", "black", "blue", "red"])]
        pen = Pen(kind, _jitter_color(rng, color, 0.03), rng.uniform(0.08, 0.12), 0, rng.uniform(0.9, 1.0),
                  rng.uniform(0.0, 0.1), 0.0)
    elif kind == "pencil":  # grey graphite, broken up by the paper's tooth
        grey = rng.uniform(0.25, 0.4)
        pen = Pen(kind, (grey, grey, grey + 0.03), rng.uniform(0.03, 0.06), 0, rng.uniform(0.55, 0.85),
                  rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.6))
    else:
        raise ValueError(f"unknown pen {kind!r}")
    if faint:
        pen = Pen(pen.kind, pen.color, pen.width, pen.threshold, pen.opacity * (1 - faint), pen.pressure, pen.grain)
    return pen


def everyday_pen(rng: np.random.Generator) -> Pen:
    """What people write with, roughly as often as they do."""
    return draw_pen(rng, rng.choice(["ballpoint", "gel", "felt", "marker", "pencil"], p=[.35, .2, .2, .15, .1]))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Noise in 0..1 that varies over about `cell` pixels (uneven paper, pressure, light)."""
    h, w = shape
    cell = max(cell, 1.0)
    small = rng.random((int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
    big = cv2.resize(small, (int(small.shape[1] * cell), int(small.shape[0] * cell)), interpolation=cv2.INTER_LINEAR)
    return np.clip(big[:h, :w], 0, 1)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel centre line of a binary shape (where a pen tip went)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            p2, p3, p4, p5 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:]
            p6, p7, p8, p9 = img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            neighbours = sum(ring[:8])
            transitions = sum((ring[k] == 0) & (ring[k + 1] == 1) for k in range(8))
            if step == 0:
                side = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                side = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (c == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & side
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


UP = 4  # a digit's topology and centre line are worked out at 4x MNIST (about 110 px), then scaled up


def _pieces_and_holes(binary: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The binary digit without specks (pieces under 3% of its ink), its number of pieces and of holes."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= 0.03 * areas[1:].sum()
    keep[0] = False
    kept = keep[labels]
    h, w = binary.shape
    n, _, stats, _ = cv2.connectedComponentsWithStats((~kept).astype(np.uint8), connectivity=4)
    x, y, bw, bh, area = stats[1:].T
    holes = (area >= 8) & (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)  # background the border cannot reach
    return kept, int(keep.sum()), int(holes.sum())


def digit_outline(patch4: np.ndarray, pen_threshold: float) -> tuple[float, float, np.ndarray]:
    """Where the ink is, in the 4x digit: (smoothing sigma, threshold, binary mask without specks).

    A person reads MNIST's faint grey joins as ink and its small open loops as loops, so the
    outline keeps the digit in as few pieces as it can (smoothing more and going down to 0.2 if it
    must) and, among those, opens the most loops (from 0.35 up: lower ones close gaps meant to stay
    open); a felt tip keeps its own threshold unless that breaks the digit up.
    """
    best = None
    for sigma in (1.2, 2.4):
        v = cv2.GaussianBlur(patch4, (0, 0), sigma)
        for t in ((pen_threshold,) if pen_threshold else (0.4, 0.5, 0.6, 0.3)) + (0.2, 0.3):
            kept, pieces, holes = _pieces_and_holes(v > t)
            own = t == pen_threshold or (not pen_threshold and t >= 0.35)
            score = (-pieces, sigma == 1.2, own, holes, -abs(t - 0.4))
            if best is None or score > best[0]:
                best = (score, sigma, t, kept)
    return best[1:]


def render_digit(rng: np.random.Generator, image28: np.ndarray, height: float, pen: Pen
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The digit written `height` pixels tall: (shape, ink), both (h, w) float32 in 0..1.

    `shape` is where the stroke is (what a crop must keep); `ink` is how much light it absorbs there,
    with the pen's opacity, pressure and grain. Smooth upscaling then a soft threshold gives pen-like
    edges instead of MNIST's 28-pixel blur.
    """
    ys, xs = np.nonzero(image28 > 30)
    patch = np.pad(image28[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255, 3)
    scale = height / (ys.max() - ys.min() + 1)
    out_w, out_h = max(int(round(patch.shape[1] * scale)), 3), max(int(round(patch.shape[0] * scale)), 3)
    sigma, threshold, outline = digit_outline(cv2.resize(patch, None, fx=UP, fy=UP, interpolation=cv2.INTER_CUBIC),
                                              pen.threshold if pen.width == 0 else 0.0)
    # stray MNIST pixels left out of the outline are left off the page too
    keep = cv2.dilate(outline.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
    keep = np.clip(cv2.resize(keep, (out_w, out_h), interpolation=cv2.INTER_LINEAR) * 2 - 0.5, 0, 1)
    if pen.width == 0:  # the writer's own stroke widths
        v = cv2.resize(patch, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
        v = cv2.GaussianBlur(v, (0, 0), 0.35 * scale * sigma / 1.2)
        edge = max(0.9 / scale, 0.03)  # about one pixel of soft edge
        shape = np.clip((v - threshold) / edge + 0.5, 0, 1) * keep
    else:  # a pen of even width along the centre line of the MNIST stroke
        centre = thin(outline)
        distance = cv2.distanceTransform((~centre).astype(np.uint8), cv2.DIST_L2, 5)
        distance = cv2.resize(distance, (out_w, out_h), interpolation=cv2.INTER_LINEAR) * (scale / UP)
        half_width = max(pen.width * height / 2, 0.45)
        shape = np.clip(half_width + 0.5 - distance, 0, 1)
        # a loop written so small that MNIST shows it filled is a filled blob, not a line
        inside = cv2.distanceTransform(outline.astype(np.uint8), cv2.DIST_L2, 5)
        typical = float(np.median(inside[centre])) if centre.any() else 1.0
        radius = int(np.ceil(2.2 * typical))
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
        blob = cv2.morphologyEx(outline.astype(np.uint8), cv2.MORPH_OPEN, disk)
        if blob.any():
            blob = cv2.resize(cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 1.0), (out_w, out_h),
                              interpolation=cv2.INTER_LINEAR)
            shape = np.maximum(shape, np.clip((blob - 0.5) * max(scale / UP, 1) * 2 + 0.5, 0, 1))
    ink = shape * pen.opacity
    if pen.pressure:
        ink = ink * (1 - pen.pressure * smooth_noise(rng, shape.shape, height / 4))
    if pen.grain:
        tooth = cv2.GaussianBlur(rng.random(shape.shape, dtype=np.float32), (0, 0), 0.7)
        tooth = np.clip((tooth - 0.5) * 6 + 0.5, 0, 1)  # graphite catches on the paper's ridges only
        ink = ink * (1 - pen.grain * tooth)
    return shape.astype(np.float32), ink.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Paper and what is printed on it

PAPERS = {  # RGB reflectance under white light
    "white": (0.92, 0.92, 0.90),
    "bright": (0.97, 0.97, 0.97),
    "cream": (0.95, 0.91, 0.79),
    "grey": (0.76, 0.76, 0.74),
    "yellow_note": (0.98, 0.92, 0.50),
    "blue": (0.79, 0.87, 0.95),
    "pink": (0.96, 0.83, 0.87),
    "green": (0.83, 0.94, 0.80),
    "recycled": (0.82, 0.79, 0.70),
}


def everyday_paper(rng: np.random.Generator) -> str:
    return str(rng.choice(list(PAPERS), p=[.3, .15, .12, .08, .08, .06, .05, .05, .11]))


def make_paper(rng: np.random.Generator, shape: tuple[int, int], kind: str, texture: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32 paper: its colour, a gentle unevenness, fine grain, and for recycled paper
    fibres and flecks. `texture` scales the grain (pencil on rough paper shows it more)."""
    h, w = shape
    color = np.array(_jitter_color(rng, PAPERS[kind], 0.02), np.float32)
    uneven = 1 + 0.03 * (smooth_noise(rng, shape, max(h, w) / 3) - 0.5)
    grain = 1 + texture * rng.uniform(0.01, 0.035) * cv2.GaussianBlur(
        rng.random(shape, dtype=np.float32) - np.float32(0.5), (0, 0), 0.6)
    page = color * (uneven * grain)[..., None]
    if kind == "recycled" or (texture > 1.5 and rng.random() < 0.5):
        page = add_fibres(rng, page)
    return page


def add_fibres(rng: np.random.Generator, page: np.ndarray) -> np.ndarray:
    """Short dark and light fibres and coloured flecks, as in recycled paper."""
    h, w = page.shape[:2]
    layer = np.zeros((h, w), np.float32)
    for _ in range(int(h * w / 2500)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length, angle = rng.uniform(4, 25), rng.uniform(0, np.pi)
        bend = rng.uniform(-4, 4)
        points = np.array([[x, y], [x + length / 2 * np.cos(angle) + bend, y + length / 2 * np.sin(angle) - bend],
                           [x + length * np.cos(angle), y + length * np.sin(angle)]])
        cv2.polylines(layer, [np.round(points * 16).astype(np.int32)], False, float(rng.uniform(-1, 1)), 1,
                      cv2.LINE_AA, shift=4)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.5)
    page = page * (1 - 0.12 * layer[..., None])
    for _ in range(int(h * w / 20000)):  # flecks of coloured or dark pulp
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        tint = 1 - rng.uniform(0.05, 0.3) * (1 - np.array(_jitter_color(rng, (0.5, 0.5, 0.5), 0.3)))
        cv2.circle(page, (x, y), int(rng.integers(0, 2)), tuple(float(c) for c in page[y, x] * tint), -1, cv2.LINE_AA)
    return page


def print_on(page: np.ndarray, coverage: np.ndarray, color, contrast: float) -> None:
    """Print or write `coverage` (H, W) onto the page in place: ink multiplies the light the paper returns."""
    absorb = contrast * coverage[..., None] * (1 - np.asarray(color, np.float32))
    page *= 1 - absorb


def _coords(shape, step: int = 1):
    """Pixel coordinates (y column, x row), every `step` pixels."""
    h, w = shape
    return np.arange(0, h, step, dtype=np.float32)[:, None], np.arange(0, w, step, dtype=np.float32)[None, :]


def parallel_lines(shape, angle_deg: float, spacing: float, offset: float, width: float) -> np.ndarray:
    """(H, W) coverage of evenly spaced printed lines, anti-aliased; angle 0 = horizontal, a line at y = offset."""
    yy, xx = _coords(shape)
    a = np.deg2rad(angle_deg)
    u = yy * np.cos(a) - xx * np.sin(a)  # distance across the lines
    d = np.abs((u - offset + spacing / 2) % spacing - spacing / 2)
    return np.clip(width / 2 + 0.5 - d, 0, 1)


def one_line(shape, x0, y0, x1, y1, width: float) -> np.ndarray:
    """(H, W) coverage of a printed segment, anti-aliased, square ends."""
    yy, xx = _coords(shape)
    length = max(np.hypot(x1 - x0, y1 - y0), 1e-6)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    along = (xx - x0) * ux + (yy - y0) * uy
    across = np.abs(-(xx - x0) * uy + (yy - y0) * ux)
    inside = np.clip(np.minimum(along + width / 2, length + width / 2 - along) + 0.5, 0, 1)
    return np.clip(width / 2 + 0.5 - across, 0, 1) * inside


# ---------------------------------------------------------------------------------------------
# A scene: a page with the digit on it, and how it will be cropped

@dataclass
class Scene:
    page: np.ndarray          # (H, W, 3) float32 reflectance, with everything printed and written
    shape: np.ndarray         # (H, W) float32: the digit's (or number's) strokes, for the crop
    height: float             # the digit's height in pixels (the unit of margins)
    crop: list                # per side (top, bottom, left, right): ("ink", margin_px) or ("frame", offset_px)
    frame: tuple | None = None  # (x0, y0, x1, y1): a printed box the crop may follow instead of the ink
    plan: tuple = (0, 0, 0, 0)  # (x0, y0, x1, y1): roughly where the crop will fall, to turn the camera about
    baseline: tuple = (0, 0)  # (x, y): where the (first) digit's bottom meets the line it was written on


def blank_scene(rng, label_images, height, pen, paper_kind, margins, texture=1.0, gap=(0.0, 0.0),
                jitter=0.0, size_jitter=0.0, slope=0.0):
    """A page holding one digit, or a number written left to right, with room for the crop.

    margins: (top, bottom, left, right) in pixels around the ink; gap: the range of spaces between
    digits as fractions of their height; jitter and size_jitter: vertical wander and size change of
    each digit; slope: the baseline's rise per pixel.
    """
    renders = []
    for image28 in label_images:
        h = height * (1 + rng.uniform(-size_jitter, size_jitter))
        renders.append(render_digit(rng, image28, h, pen))
    # lay the digits out along a baseline, in page pixels relative to the first digit's corner
    placed, x = [], 0.0
    for shape, ink in renders:
        ys, xs = np.nonzero(shape > INK_LEVEL)
        top = -ys.max() + rng.uniform(-jitter, jitter) * height - x * slope  # bottoms on the baseline
        placed.append((shape, ink, top, x - xs.min()))
        x += (xs.max() - xs.min() + 1) + rng.uniform(*gap) * height
    # ink bounding box of the whole thing
    boxes = []
    for shape, ink, top, left in placed:
        ys, xs = np.nonzero(shape > INK_LEVEL)
        boxes.append((top + ys.min(), top + ys.max() + 1, left + xs.min(), left + xs.max() + 1))
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    mt, mb, ml, mr = margins
    crop_h, crop_w = (y1 - y0) + mt + mb, (x1 - x0) + ml + mr
    slack = int(0.15 * max(crop_h, crop_w)) + 12  # room for the camera's tilt and perspective
    page_h, page_w = int(crop_h + 2 * slack), int(crop_w + 2 * slack)
    dy, dx = slack + mt - y0, slack + ml - x0  # page = layout + (dy, dx)
    page = make_paper(rng, (page_h, page_w), paper_kind, texture)
    shape_layer = np.zeros((page_h, page_w), np.float32)
    ink_layer = np.zeros((page_h, page_w), np.float32)
    for shape, ink, top, left in placed:
        paste_max(shape_layer, shape, int(round(top + dy)), int(round(left + dx)))
        paste_max(ink_layer, ink, int(round(top + dy)), int(round(left + dx)))
    box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    plan = (slack, slack, slack + crop_w, slack + crop_h)
    scene = Scene(page, shape_layer, height, [("ink", m) for m in margins], plan=plan, baseline=(dx, dy))
    return scene, ink_layer, box


def paste_max(layer: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """layer = max(layer, patch placed at (top, left)), clipped to the layer."""
    h, w = patch.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, layer.shape[0]), min(left + w, layer.shape[1])
    if y1 > y0 and x1 > x0:
        region = layer[y0:y1, x0:x1]
        np.maximum(region, patch[y0 - top:y1 - top, x0 - left:x1 - left], out=region)


def margins(rng, height, lo, hi, zero_p=0.0):
    """(top, bottom, left, right) crop margins in pixels, each drawn on its own (people crop unevenly)."""
    out = []
    for _ in range(4):
        m = 0.0 if rng.random() < zero_p else rng.uniform(lo, hi) * height
        out.append(m)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Light

def gradient(rng, shape, low: float, step: int = 1) -> np.ndarray:
    """Light falling off linearly across the page in a random direction, from 1 down to `low`."""
    yy, xx = _coords(shape, step)
    a = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(a) + yy * np.sin(a)
    u = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    return (1 - (1 - low) * u)[..., None]


def vignette(shape, amount: float, centre=(0.5, 0.5), step: int = 1) -> np.ndarray:
    """A lens and a lamp both light the middle of the frame more than its corners."""
    h, w = shape
    yy, xx = _coords(shape, step)
    r2 = ((yy / h - centre[1]) ** 2 + (xx / w - centre[0]) ** 2) / 0.5
    return (1 - amount * np.clip(r2, 0, 1.5))[..., None]


def shadow(rng, shape, through: tuple[float, float], darkness: float, softness: float, step: int = 1
           ) -> np.ndarray:
    """The soft shadow of a hand or a phone over part of the page: darker and a little bluer (lit by
    the sky or the room, not the lamp); its wavy edge passes through the point `through` (x, y)."""
    yy, xx = _coords(shape, step)
    a = rng.uniform(0, 2 * np.pi)
    s = (xx - through[0]) * np.cos(a) + (yy - through[1]) * np.sin(a)
    along = -(xx - through[0]) * np.sin(a) + (yy - through[1]) * np.cos(a)
    s = s + softness * 1.5 * np.sin(along / (softness * rng.uniform(4, 10) + 1) + rng.uniform(0, 6))
    inside = 1 / (1 + np.exp(-np.clip(s / max(softness, 0.5), -30, 30)))  # 1 in the shadow
    tint = np.array([1.0, 1.0, 1.08], np.float32)
    return 1 - inside[..., None] * darkness * (2 - tint)


def light(rng, scene: Scene, level: str) -> None:
    """Room light on the page, in place: `everyday`, or the `uneven`, `shadow`, `dim` and `flat` troubles."""
    shape = scene.page.shape[:2]
    step = 4  # light varies slowly: work it out on every 4th pixel, then interpolate
    field_ = gradient(rng, shape, rng.uniform(0.82, 1.0), step) * vignette(shape, rng.uniform(0, 0.12), step=step)
    cast = np.array([1 + rng.uniform(-0.04, 0.06), 1.0, 1 + rng.uniform(-0.08, 0.04)], np.float32)  # lamp colour
    if level == "uneven":
        field_ = gradient(rng, shape, rng.uniform(0.4, 0.65), step) * vignette(
            shape, rng.uniform(0.2, 0.4), tuple(rng.uniform(0.2, 0.8, 2)), step)
        cast = np.array([1.1, 1.0, 0.78], np.float32) if rng.random() < 0.5 else cast  # a warm desk lamp
    elif level.startswith("shadow"):
        x0, y0, x1, y1 = scene.plan
        reach = {"shadow1": 0.9, "shadow2": 0.5, "shadow3": 0.2}[level]  # how near the digit its edge falls
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        through = (cx + rng.uniform(-reach, reach) * (x1 - x0), cy + rng.uniform(-reach, reach) * (y1 - y0))
        darkness = {"shadow1": (0.25, 0.4), "shadow2": (0.35, 0.5), "shadow3": (0.45, 0.62)}[level]
        softness = rng.uniform(0.03, 0.25) * scene.height
        step = int(np.clip(softness / 2, 1, 4))  # a sharp shadow edge needs the full resolution
        field_ = gradient(rng, shape, rng.uniform(0.82, 1.0), step) * vignette(shape, rng.uniform(0, 0.12), step=step)
        field_ = field_ * shadow(rng, shape, through, rng.uniform(*darkness), softness, step)
    field_ = np.broadcast_to(field_ * cast, field_.shape[:2] + (3,)).astype(np.float32)
    field_ = cv2.resize(field_, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    scene.page *= field_


# ---------------------------------------------------------------------------------------------
# The camera

@dataclass(frozen=True)
class Camera:
    tilt: float        # the most the picture turns, in degrees
    perspective: float  # corner shift as a fraction of the crop's size (the phone not held flat)
    blur: tuple        # defocus sigma range, in pixels per sqrt(digit height / 100 px)
    noise: tuple       # sensor noise sd range at mid grey, 0..1 scale
    exposure: tuple    # light reaching the sensor (below 1: a dim room, more noise once brightened)
    jpeg_p: float      # how often the file is a JPEG
    quality: tuple     # JPEG quality range
    flat: float = 0.0  # most veiling glare (washes the contrast out)


CAMERAS = {
    1: Camera(4, 0.01, (0.0, 0.6), (0.004, 0.012), (0.9, 1.05), 0.6, (80, 96)),
    2: Camera(7, 0.025, (0.2, 1.0), (0.008, 0.022), (0.75, 1.05), 0.7, (60, 92)),
    3: Camera(10, 0.04, (0.5, 1.5), (0.015, 0.035), (0.6, 1.05), 0.8, (35, 80)),
}


def camera_warp(rng, scene: Scene, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The picture turned by up to `tilt` degrees and slightly out of square, about the planned crop.
    Returns the warped page, the warped strokes and the homography."""
    x0, y0, x1, y1 = scene.plan
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = max(x1 - x0, y1 - y0)
    src = np.float32([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    a = np.deg2rad(rng.uniform(-camera.tilt, camera.tilt))
    rot = np.float32([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = (src - [cx, cy]) @ rot.T + [cx, cy]
    dst = dst + rng.uniform(-camera.perspective, camera.perspective, (4, 2)) * size
    homography = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    h, w = scene.shape.shape
    page = cv2.warpPerspective(scene.page, homography, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT101)
    shape = cv2.warpPerspective(scene.shape, homography, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT)
    return page, shape, homography


def crop_box(scene: Scene, shape: np.ndarray, homography: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the crop in the warped picture: each side follows the ink's
    bounding box or the printed frame, and never cuts into the ink."""
    ys, xs = np.nonzero(shape > INK_LEVEL)
    ink = (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)
    frame_sides = None
    if scene.frame is not None:
        fx0, fy0, fx1, fy1 = scene.frame
        corners = cv2.perspectiveTransform(np.float32([[[fx0, fy0], [fx1, fy0], [fx1, fy1], [fx0, fy1]]]),
                                           homography)[0]
        frame_sides = ((corners[0, 1] + corners[1, 1]) / 2, (corners[2, 1] + corners[3, 1]) / 2,
                       (corners[0, 0] + corners[3, 0]) / 2, (corners[1, 0] + corners[2, 0]) / 2)
    sides = []
    for i, (how, amount) in enumerate(scene.crop):
        outward = -1 if i in (0, 2) else 1  # top and left grow towards 0
        base = ink[i] if how == "ink" else frame_sides[i]
        sides.append(base + outward * amount)
    top, bottom, left, right = (int(np.floor(min(sides[0], ink[0]))), int(np.ceil(max(sides[1], ink[1]))),
                                int(np.floor(min(sides[2], ink[2]))), int(np.ceil(max(sides[3], ink[3]))))
    h, w = shape.shape
    return max(top, 0), min(bottom, h), max(left, 0), min(right, w)


def defocus(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0.15 else image


def motion_blur(rng, image: np.ndarray, length: float) -> np.ndarray:
    """A hand moving while the shutter is open: a short line kernel."""
    if length < 1.5:
        return image
    k = int(np.ceil(length)) | 1
    kernel = np.zeros((k, k), np.float32)
    a = rng.uniform(0, np.pi)
    c = k // 2
    cv2.line(kernel, (int(round(c - np.cos(a) * length / 2)), int(round(c - np.sin(a) * length / 2))),
             (int(round(c + np.cos(a) * length / 2)), int(round(c + np.sin(a) * length / 2))), 1.0, 1, cv2.LINE_AA)
    return cv2.filter2D(image, -1, kernel / kernel.sum())


def sensor(rng, image: np.ndarray, exposure: float, noise_sd: float, flat: float) -> np.ndarray:
    """What the sensor and the phone's processing make of the light: too little light gives a dark
    picture the phone brightens only partly, with the noise brightened too; shot noise grows with
    the signal; glare lifts the blacks; a tone curve and a little sharpening, as phones apply."""
    signal = image * np.float32(exposure)
    level = signal.mean(axis=2, keepdims=True)  # (H, W, 1): shot noise follows the brightness
    sd = np.float32(noise_sd / np.sqrt(max(exposure, 0.2))) * np.sqrt(level * 2 + np.float32(0.15))
    # mostly luminance noise, with some blotchier colour noise; uniform noise of sd 1 (its shape does
    # not show once blurred and compressed, and it is quicker to draw)
    h, w = level.shape[:2]
    grain = (rng.random(level.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(np.sqrt(12))
    chroma = (rng.random(((h + 1) // 2, (w + 1) // 2, 3), dtype=np.float32) - np.float32(0.5)) * np.float32(0.7 * np.sqrt(12))
    grain = grain + cv2.resize(chroma, (w, h), interpolation=cv2.INTER_LINEAR)
    gain = np.float32(1 + (1 / exposure - 1) * rng.uniform(0.2, 0.7))
    out = np.clip((signal + sd * grain) * gain, 0, 1)
    if flat:
        out = out * np.float32(1 - flat) + np.float32(flat * float(out.mean()))
    out = cv2.pow(out, rng.uniform(0.85, 1.1))
    if rng.random() < 0.5:  # unsharp mask
        amount = np.float32(rng.uniform(0.2, 0.8))
        out = out + amount * (out - cv2.GaussianBlur(out, (0, 0), rng.uniform(0.8, 2.0)))
    return np.clip(out, 0, 1)


def encode(rng, image: np.ndarray, camera: Camera) -> tuple[np.ndarray, bytes, str]:
    """The float picture as a file: a JPEG at a random quality or a PNG; and the file decoded again."""
    rgb = np.round(image * 255).astype(np.uint8)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if rng.random() < camera.jpeg_p:
        quality = int(rng.integers(camera.quality[0], camera.quality[1] + 1))
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        suffix = ".jpg"
    else:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        suffix = ".png"
    assert ok
    decoded = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return decoded, data.tobytes(), suffix


def photograph(rng, scene: Scene, camera: Camera, light_level: str = "everyday") -> tuple[np.ndarray, bytes, str]:
    """Light the page, take the picture, crop it, save it."""
    light(rng, scene, light_level)
    page, shape, homography = camera_warp(rng, scene, camera)
    top, bottom, left, right = crop_box(scene, shape, homography)
    image = page[top:bottom, left:right]
    size = np.sqrt(scene.height / 100)
    image = defocus(image, rng.uniform(*camera.blur) * size)
    if rng.random() < 0.15:
        image = motion_blur(rng, image, rng.uniform(0, 2.5) * size)
    image = sensor(rng, image, rng.uniform(*camera.exposure), rng.uniform(*camera.noise),
                   rng.uniform(0, camera.flat))
    return encode(rng, image, camera)


# ---------------------------------------------------------------------------------------------
# Conditions: each builds a scene and chooses the light and the camera

def loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def write(scene: Scene, ink_layer: np.ndarray, pen: Pen) -> None:
    """The pen's ink on the page, where there is some."""
    x, y, w, h = cv2.boundingRect((ink_layer > 0).astype(np.uint8))
    print_on(scene.page[y:y + h, x:x + w], ink_layer[y:y + h, x:x + w], pen.color, 1.0)


def tight_crop(rng, strength, image28):
    """Cropped close to the digit, as most people crop: 0-10% margins, each side its own; digits
    40 to 300 px tall; the camera's blur, noise and JPEG grow with the strength."""
    height = loguniform(rng, 40, 300)
    lo, hi, zero_p = {1: (0.03, 0.10, 0.0), 2: (0.01, 0.10, 0.1), 3: (0.0, 0.06, 0.35)}[strength]
    pen = everyday_pen(rng)
    scene, ink, _ = blank_scene(rng, [image28], height, pen, everyday_paper(rng), margins(rng, height, lo, hi, zero_p))
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[strength])


def ruled(rng, strength, image28):
    """On notebook paper: the digit sits on a printed line, its strokes may cross the next ones.
    Stronger: closer, darker, wider lines, tilted further from the writing, a red margin line."""
    height = rng.uniform(60, 220)
    pen = everyday_pen(rng)
    paper = rng.choice(["white", "bright", "cream", "yellow_note", "recycled"], p=[.4, .2, .15, .15, .1])
    scene, ink, box = blank_scene(rng, [image28], height, pen, paper, margins(rng, height, 0.05, 0.3))
    rule_ruled_page(rng, scene, strength, box)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


RULE_COLORS = {"blue": (0.45, 0.62, 0.88), "grey": (0.55, 0.55, 0.55), "dark_blue": (0.3, 0.4, 0.7),
               "green": (0.5, 0.75, 0.55), "purple": (0.6, 0.5, 0.8)}


def rule_ruled_page(rng, scene: Scene, strength: int, box, slope: float | None = None) -> None:
    """Print the rulings of a notebook page. A line runs near the bottom of the ink (people write
    on the line); given the writing's `slope`, the lines follow it, give or take a degree or two."""
    x0, y0, x1, y1 = box
    spacing = scene.height / {1: rng.uniform(0.7, 1.0), 2: rng.uniform(0.9, 1.5), 3: rng.uniform(1.3, 2.6)}[strength]
    width = max(scene.height * {1: rng.uniform(0.006, 0.015), 2: rng.uniform(0.01, 0.025),
                                3: rng.uniform(0.015, 0.04)}[strength], 0.7)
    contrast = {1: rng.uniform(0.2, 0.45), 2: rng.uniform(0.35, 0.7), 3: rng.uniform(0.55, 0.95)}[strength]
    if slope is None:
        tilt = rng.uniform(-1, 1) * {1: 2, 2: 5, 3: 10}[strength]
    else:
        tilt = float(np.rad2deg(np.arctan(-slope))) + rng.uniform(-2, 2)
    color = RULE_COLORS[rng.choice(list(RULE_COLORS), p=[.5, .25, .1, .1, .05])]
    bx, by = scene.baseline if slope is not None else ((x0 + x1) / 2, y1)
    by += rng.uniform(-0.12, 0.1) * scene.height
    a = np.deg2rad(tilt)
    offset = by * np.cos(a) - bx * np.sin(a)
    print_on(scene.page, parallel_lines(scene.shape.shape, tilt, spacing, offset, width), color, contrast)
    if strength >= 2 and rng.random() < 0.5:  # the red margin line, left of the writing
        mx = x0 - rng.uniform(0.05, 0.4) * scene.height
        h = scene.shape.shape[0]
        margin_width = width * rng.uniform(1, 1.8)
        for k in range(1 + (rng.random() < 0.3)):  # sometimes doubled
            line = one_line(scene.shape.shape, mx - k * 3 * margin_width, -10, mx - k * 3 * margin_width + h * np.tan(a),
                            h + 10, margin_width)
            print_on(scene.page, line, (0.9, 0.45, 0.5), rng.uniform(0.4, 0.8))


def grid(rng, strength, image28):
    """On squared or graph paper: the digit spans one to three squares; stronger: finer, darker grids."""
    height = rng.uniform(60, 220)
    pen = everyday_pen(rng)
    paper = rng.choice(["white", "bright", "cream", "recycled"], p=[.45, .3, .15, .1])
    scene, ink, box = blank_scene(rng, [image28], height, pen, paper, margins(rng, height, 0.05, 0.3))
    squares = {1: rng.uniform(0.8, 1.3), 2: rng.uniform(1.2, 2.0), 3: rng.uniform(1.8, 3.2)}[strength]
    spacing = height / squares
    width = max(height * {1: rng.uniform(0.004, 0.01), 2: rng.uniform(0.006, 0.015),
                          3: rng.uniform(0.01, 0.03)}[strength], 0.6)
    contrast = {1: rng.uniform(0.2, 0.4), 2: rng.uniform(0.3, 0.6), 3: rng.uniform(0.5, 0.9)}[strength]
    color = [(0.45, 0.62, 0.88), (0.55, 0.55, 0.55), (0.45, 0.72, 0.5), (0.95, 0.6, 0.4)][rng.integers(4)]
    tilt = rng.uniform(-1, 1) * {1: 2, 2: 4, 3: 8}[strength]
    shape = scene.shape.shape
    lines = np.maximum(parallel_lines(shape, tilt, spacing, rng.uniform(0, spacing), width),
                       parallel_lines(shape, tilt + 90, spacing, rng.uniform(0, spacing), width))
    if rng.random() < 0.35:  # graph paper: every fifth line heavier
        major = 5 * spacing
        lines = np.maximum(lines, np.maximum(
            parallel_lines(shape, tilt, major, rng.uniform(0, major), width * 2),
            parallel_lines(shape, tilt + 90, major, rng.uniform(0, major), width * 2)))
    print_on(scene.page, lines, color, contrast)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


def form_box(rng, strength, image28):
    """In a printed box, a row of boxes, or a comb field of a form. Stronger: the box hugs the
    digit (strokes touch or cross it) and the crop falls on or just inside the box's lines."""
    height = rng.uniform(60, 200)
    pen = draw_pen(rng, rng.choice(["ballpoint", "gel", "felt", "marker"], p=[.45, .25, .2, .1]))
    paper = rng.choice(["white", "bright", "cream", "blue", "pink", "green"], p=[.45, .25, .1, .07, .07, .06])
    pads = {1: (0.12, 0.3), 2: (0.03, 0.15), 3: (-0.03, 0.05)}[strength]
    pad = [rng.uniform(*pads) * height for _ in range(4)]  # ink to box line, per side (top, bottom, left, right)
    # plan the crop wide enough to hold the box; the real crop sides are chosen below
    room = tuple(max(p, 0) + 0.3 * height for p in pad)
    scene, ink, (x0, y0, x1, y1) = blank_scene(rng, [image28], height, pen, paper, room)
    bx0, by0, bx1, by1 = x0 - pad[2], y0 - pad[0], x1 + pad[3], y1 + pad[1]
    line_w = max(height * rng.uniform(0.008, 0.03), 0.8)
    color, contrast = [((0.1, 0.1, 0.1), rng.uniform(0.6, 0.95)), ((0.9, 0.4, 0.4), rng.uniform(0.5, 0.9)),
                       ((0.4, 0.55, 0.9), rng.uniform(0.5, 0.9)), ((0.45, 0.7, 0.5), rng.uniform(0.5, 0.9))
                       ][rng.choice(4, p=[.55, .2, .15, .1])]
    style = rng.choice(["box", "row", "comb"], p=[.5, .25, .25])
    shape = scene.shape.shape
    cell = bx1 - bx0
    segments = []
    if style in ("box", "row"):
        n_left, n_right = (0, 0) if style == "box" else (int(rng.integers(0, 3)), int(rng.integers(1, 3)))
        left, right = bx0 - n_left * cell, bx1 + n_right * cell
        segments += [(left, by0, right, by0), (left, by1, right, by1)]
        segments += [(bx0 + k * cell, by0, bx0 + k * cell, by1) for k in range(-n_left, n_right + 2)]
    else:  # comb: a baseline with ticks between the cells, nothing above
        tick = rng.uniform(0.25, 0.6) * (by1 - by0)
        segments.append((bx0 - 2 * cell, by1, bx1 + 2 * cell, by1))
        segments += [(bx0 + k * cell, by1 - tick, bx0 + k * cell, by1) for k in range(-2, 4)]
    lines = np.zeros(shape, np.float32)
    for seg in segments:
        lines = np.maximum(lines, one_line(shape, *seg, line_w))
    print_on(scene.page, lines, color, contrast)
    write(scene, ink, pen)
    # per side: just outside the box, on its line, or just inside it (never into the ink)
    modes = {1: [.8, .15, .05], 2: [.4, .3, .3], 3: [.15, .35, .5]}[strength]
    crop = []
    for i in range(4):
        if style == "comb" and i == 0:  # a comb has no line above the digit
            crop.append(("ink", rng.uniform(0.02, 0.15) * height))
            continue
        mode = rng.choice(["outside", "line", "inside"], p=modes)
        if mode == "outside":
            crop.append(("frame", line_w / 2 + rng.uniform(0.02, 0.15) * height))
        elif mode == "line":
            crop.append(("frame", rng.uniform(-0.5, 0.5) * line_w))
        else:
            crop.append(("frame", -(line_w / 2 + 1 + rng.uniform(0, 0.8) * max(pad[i] - line_w / 2 - 1, 0))))
    scene.crop, scene.frame = crop, (bx0, by0, bx1, by1)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


def marks(rng, strength, image28):
    """Stray marks around the digit, none on it: specks, a pen tick, a smudge, and part of a
    neighbouring character cut by the crop's edge. Stronger: more of them, closer, larger."""
    height = rng.uniform(60, 200)
    pen = everyday_pen(rng)
    m = list(margins(rng, height, 0.08, 0.3))
    neighbours = {1: 0, 2: 1, 3: 2}[strength] if rng.random() < 0.8 else 0
    sides = list(rng.choice([2, 3], size=neighbours, replace=False)) if neighbours else []
    pieces = {}
    for side in sides:  # a neighbour shows a sliver of itself, never enough to be read
        other = pick_digit(rng, int(rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 9])))  # not a 1: too thin to cut
        other_shape, other_ink = render_digit(rng, other, height * rng.uniform(0.85, 1.1), pen)
        xs = np.nonzero((other_shape > INK_LEVEL).any(axis=0))[0]
        visible = rng.uniform(0.08, 0.22) * (xs.max() - xs.min() + 1)
        gap = rng.uniform(0.06, 0.15) * height
        m[side] = visible + gap
        pieces[side] = (other_shape, other_ink, gap)
    scene, ink, (x0, y0, x1, y1) = blank_scene(rng, [image28], height, pen, everyday_paper(rng), tuple(m))
    keep_clear = cv2.dilate((scene.shape > INK_LEVEL).astype(np.uint8),
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(0.08 * height) | 1,) * 2))
    crop_region = (x0 - m[2], y0 - m[0], x1 + m[3], y1 + m[1])
    for side, (other_shape, other_ink, gap) in pieces.items():
        neighbour_piece(rng, scene, pen, side, (x0, y0, x1, y1), other_shape, other_ink, gap)
    n_specks = int(rng.integers(*{1: (1, 4), 2: (3, 8), 3: (6, 14)}[strength]))
    for _ in range(n_specks):
        speck(rng, scene, keep_clear, crop_region, pen)
    if rng.random() < {1: 0.4, 2: 0.7, 3: 0.9}[strength]:
        tick(rng, scene, keep_clear, crop_region, pen)
    if rng.random() < {1: 0.3, 2: 0.5, 3: 0.8}[strength]:
        smudge(rng, scene, crop_region, pen, strength)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


def _place_clear(rng, scene, keep_clear, crop_region, mark_mask_fn, tries=30):
    """A mark drawn somewhere inside the crop region where it does not touch the digit, or None."""
    cx0, cy0, cx1, cy1 = crop_region
    for _ in range(tries):
        x, y = rng.uniform(cx0, cx1), rng.uniform(cy0, cy1)
        mask = mark_mask_fn(x, y)
        if not (keep_clear & (mask > 0.05)).any():
            return mask
    return None


def speck(rng, scene, keep_clear, crop_region, pen):
    """A dot of dirt, a pen's touch or a pencil point: a small irregular blob."""
    r = max(rng.uniform(0.005, 0.02) * scene.height, 0.6)

    def draw(x, y):
        mask = np.zeros(scene.shape.shape, np.float32)
        cv2.ellipse(mask, (int(x * 16), int(y * 16)), (int(r * 16 * rng.uniform(0.6, 1.4)), int(r * 16)),
                    rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, shift=4)
        return mask

    mask = _place_clear(rng, scene, keep_clear, crop_region, draw)
    if mask is not None:
        dirt = (0.25, 0.23, 0.2) if rng.random() < 0.5 else pen.color
        print_on(scene.page, mask, dirt, rng.uniform(0.4, 0.9))


def tick(rng, scene, keep_clear, crop_region, pen):
    """A short pen stroke: a tick, a dash, a hook, as from a check mark or a slip of the pen."""
    length = rng.uniform(0.1, 0.3) * scene.height
    width = max(int(round(max(pen.width, 0.03) * scene.height)), 1)
    a = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.4, 0.4) * length

    def draw(x, y):
        t = np.linspace(0, 1, 12)[:, None]
        p0 = np.array([x, y])
        p2 = p0 + length * np.array([np.cos(a), np.sin(a)])
        p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(a), np.cos(a)])
        points = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2
        mask = np.zeros(scene.shape.shape, np.float32)
        cv2.polylines(mask, [np.round(points * 16).astype(np.int32)], False, 1.0, width, cv2.LINE_AA, shift=4)
        return mask

    mask = _place_clear(rng, scene, keep_clear, crop_region, draw)
    if mask is not None:
        print_on(scene.page, mask, pen.color, pen.opacity)


def smudge(rng, scene, crop_region, pen, strength):
    """A faint smear of ink or graphite from a hand; it may brush the digit, but stays light."""
    cx0, cy0, cx1, cy1 = crop_region
    x, y = rng.uniform(cx0, cx1), rng.uniform(cy0, cy1)
    sx, sy = rng.uniform(0.05, 0.2) * scene.height, rng.uniform(0.03, 0.1) * scene.height
    yy, xx = _coords(scene.shape.shape)
    a = rng.uniform(0, np.pi)
    u = (xx - x) * np.cos(a) + (yy - y) * np.sin(a)
    v = -(xx - x) * np.sin(a) + (yy - y) * np.cos(a)
    blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)).astype(np.float32)
    color = pen.color if rng.random() < 0.5 else (0.35, 0.35, 0.37)
    print_on(scene.page, blob, color, rng.uniform(0.1, 0.2) + 0.05 * strength)


def neighbour_piece(rng, scene, pen, side, box, shape, ink, gap):
    """Part of a neighbouring digit, written `gap` pixels beside this one, that the crop's edge cuts through."""
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(shape > INK_LEVEL)
    top = int(round(y1 - ys.max() + rng.uniform(-0.08, 0.08) * scene.height))
    if side == 2:  # on the left: its right edge is `gap` left of the digit
        left = int(round(x0 - gap - xs.max() - 1))
    else:
        left = int(round(x1 + gap - xs.min()))
    layer = np.zeros(scene.shape.shape, np.float32)
    paste_max(layer, ink, top, left)
    print_on(scene.page, layer, pen.color, 1.0)


def lighting(rng, strength, image28):
    """Troubled light: a hand's or phone's shadow across the page, light falling off to one side,
    a dim room, or glare washing out the contrast. Stronger: darker, harder, right over the digit."""
    height = rng.uniform(60, 220)
    pen = everyday_pen(rng)
    scene, ink, _ = blank_scene(rng, [image28], height, pen, everyday_paper(rng), margins(rng, height, 0.05, 0.25))
    write(scene, ink, pen)
    trouble = rng.choice(["shadow", "uneven", "dim", "flat"], p=[.4, .25, .2, .15])
    camera = CAMERAS[strength]
    level = "everyday"
    if trouble == "shadow":
        level = f"shadow{strength}"
    elif trouble == "uneven":
        level = "uneven" if strength > 1 else "shadow1"
    elif trouble == "dim":
        exposure = {1: (0.5, 0.7), 2: (0.35, 0.5), 3: (0.22, 0.35)}[strength]
        camera = Camera(camera.tilt, camera.perspective, camera.blur, camera.noise, exposure, camera.jpeg_p,
                        camera.quality)
    else:
        flat = {1: 0.25, 2: 0.45, 3: 0.6}[strength]
        camera = Camera(camera.tilt, camera.perspective, camera.blur, camera.noise, camera.exposure, camera.jpeg_p,
                        camera.quality, flat)
    return photograph(rng, scene, camera, level)


def pencil(rng, strength, image28):
    """Grey pencil on textured paper; stronger: fainter, lighter pressure, rougher paper."""
    height = rng.uniform(60, 220)
    pen = draw_pen(rng, "pencil", faint={1: 0.0, 2: rng.uniform(0.2, 0.35), 3: rng.uniform(0.4, 0.55)}[strength])
    paper = rng.choice(["white", "cream", "recycled", "grey", "bright"], p=[.35, .2, .25, .1, .1])
    texture = {1: 1.0, 2: 1.8, 3: 2.5}[strength]
    scene, ink, _ = blank_scene(rng, [image28], height, pen, paper, margins(rng, height, 0.03, 0.25), texture=texture)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


def loose_crop(rng, strength, image28):
    """The digit small in a large picture with plenty of paper around it, anywhere in the frame.
    Stronger: smaller against the picture."""
    height = rng.uniform(40, 140)
    fraction = {1: (0.3, 0.5), 2: (0.15, 0.3), 3: (0.08, 0.15)}[strength]
    pic_h = min(height / rng.uniform(*fraction), 800)  # a phone's photo, as a reader would shrink it
    pic_w = min(pic_h * rng.choice([0.75, 1.0, 4 / 3, 16 / 9]), 1100)
    pen = everyday_pen(rng)
    # where the digit's ink box falls in the picture (its width is not known yet: reserve its height)
    free_y, free_x = pic_h - height, max(pic_w - height, 0.0)
    top = rng.uniform(0.05, 0.95) * free_y
    left = rng.uniform(0.05, 0.95) * free_x
    m = (top, free_y - top, left, max(free_x - left, 0.05 * pic_w))
    scene, ink, _ = blank_scene(rng, [image28], height, pen, everyday_paper(rng), m)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


BUILDERS = {"tight_crop": tight_crop, "ruled": ruled, "grid": grid, "form_box": form_box, "marks": marks,
            "lighting": lighting, "pencil": pencil, "loose_crop": loose_crop}


def numbers_ruled(rng, strength, images28):
    """A number written along a line of ruled paper: digits side by side with natural spacing,
    a little vertical wander and size change, the baseline following the rulings."""
    height = rng.uniform(50, 160)
    pen = everyday_pen(rng)
    paper = rng.choice(["white", "bright", "cream", "yellow_note", "recycled"], p=[.4, .2, .15, .15, .1])
    gap = {1: (0.1, 0.35), 2: (0.05, 0.3), 3: (0.03, 0.25)}[strength]
    slope = np.tan(np.deg2rad(rng.uniform(-3, 3)))
    scene, ink, box = blank_scene(rng, images28, height, pen, paper, margins(rng, height, 0.05, 0.3), gap=gap,
                                  jitter=0.06, size_jitter=0.08, slope=slope)
    rule_ruled_page(rng, scene, strength, box, slope)
    write(scene, ink, pen)
    return photograph(rng, scene, CAMERAS[max(1, strength - 1)])


# ---------------------------------------------------------------------------------------------
# The API

def _rng(seed: int, condition: str, strength: int, index: int) -> np.random.Generator:
    code = (CONDITIONS + (NUMBERS,)).index(condition)
    return np.random.default_rng([seed, code, strength, index])


def cases(condition: str, strength: int, n: int, seed: int = 0) -> list[Case]:
    """n pictures of single digits under `condition` at `strength` (1..3); labels cycle 0..9."""
    if condition not in BUILDERS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, not {condition!r}")
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be 1, 2 or 3, not {strength!r}")
    out = []
    for i in range(n):
        rng = _rng(seed, condition, strength, i)
        label = i % 10
        image, encoded, suffix = BUILDERS[condition](rng, strength, pick_digit(rng, label))
        out.append(Case(condition, strength, str(label), image, encoded, suffix))
    return out


def number_cases(n: int, seed: int = 0, min_digits: int = 2, max_digits: int = 6) -> list[Case]:
    """n pictures of numbers of min_digits..max_digits digits on ruled paper; strengths cycle 1..3."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits} and {max_digits}")
    out = []
    for i in range(n):
        strength = STRENGTHS[i % 3]
        rng = _rng(seed, NUMBERS, strength, i)
        digits = rng.integers(0, 10, int(rng.integers(min_digits, max_digits + 1)))
        image, encoded, suffix = numbers_ruled(rng, strength, [pick_digit(rng, int(d)) for d in digits])
        out.append(Case(NUMBERS, strength, "".join(map(str, digits)), image, encoded, suffix))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the pictures and labels.csv")
    parser.add_argument("--n", type=int, default=20, help="pictures per condition and strength, and numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="+", default=[*CONDITIONS, NUMBERS], choices=[*CONDITIONS, NUMBERS])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, start = [], time.perf_counter()
    for condition in args.conditions:
        if condition == NUMBERS:
            batch = number_cases(args.n, args.seed)
        else:
            batch = [c for s in STRENGTHS for c in cases(condition, s, args.n, args.seed)]
        for i, case in enumerate(batch):
            name = f"{case.condition}-{case.strength}-{i % args.n if condition != NUMBERS else i:03d}-label{case.label}{case.suffix}"
            (args.out / name).write_bytes(case.encoded)
            rows.append((name, case.condition, case.strength, case.label))
    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "condition", "strength", "label"])
        writer.writerows(rows)
    print(f"{len(rows)} pictures in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
