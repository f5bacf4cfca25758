"""Real images: read them safely and preprocess them the way MNIST was made.

MNIST digits are white ink on black, the ink's bounding box scaled (anti-aliased, aspect ratio
kept) so its longer side is 20 px, pasted into 28x28 and shifted so the ink's centre of mass is at
the centre. A photo of a digit on paper is none of that, and a model fed a plain "resize to 28x28"
of it reads nonsense. `to_mnist` redoes MNIST's preprocessing on any image; `split_digits` does it
for each digit of a handwritten number.

Nothing here imports torch: the classifier is passed in as a function (see `read_images`), so
onnxruntime-only deployments use this module too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import InputError, atomic_write

# Only these Pillow decoders are ever tried: fewer parsers, less attack surface.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")
# Largest image we decode (width * height). 40 megapixels is more than any phone photo; a
# "decompression bomb" (a tiny file claiming a huge canvas) is refused before it is decoded.
MAX_PIXELS = 40_000_000

WORK_SIDE = 1024  # larger images are shrunk (anti-aliased) to this longer side first: the digit ends up 20 px anyway

# MNIST's geometry.
SIZE = 28  # output side, px
BOX = 20  # the ink's longer side after scaling, px
CENTRE = 14.0  # where MNIST puts the ink's centre of mass (row, col); measured on the test set: 13.99, 14.01

# Preprocessing thresholds, on ink intensity in [0, 1] after background removal.
MIN_CONTRAST = 0.25  # ink must differ from the paper by this much (of full scale), else "no digit"
INK_THRESHOLD = 0.2  # pixels fainter than this are paper texture, JPEG noise or shadow
MIN_PART = 0.08  # a blob smaller than this fraction of the largest one is a speck, not a stroke
FRAGMENT_HEIGHT = 0.6  # in a number, a piece shorter than this fraction of the median digit is part of a neighbour
FRAGMENT_GAP = 0.1  # ... if it is no further from it than this fraction of the median digit height
MIN_DIGIT_AREA = 0.15  # ... and an isolated piece with less ink than this fraction of the biggest digit is a speck
MIN_INK_PIXELS = 12  # a biggest blob smaller than this (in the working image) is not a digit


# ---------------------------------------------------------------------------------------------
# reading


def open_image(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """Decode an image file (path or bytes) fully, or raise InputError with one clear line.

    Only FORMATS are decoded; images over MAX_PIXELS, truncated or corrupt files, empty files
    and non-images are refused. `name` is what the message calls the input.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{name}: no such file")
        if not path.is_file():
            raise InputError(f"{name}: not a file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{name}: cannot read ({e.strerror or e})") from None
    if not data:
        raise InputError(f"{name}: file is empty")
    image = None
    try:
        with warnings.catch_warnings():
            # we enforce our own, lower pixel limit below, and corrupt metadata that Pillow skips
            # with a warning is no concern of the user's: the pixels are what we read
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            pixels = image.width * image.height
            if pixels <= MAX_PIXELS:
                image.load()
    except Image.DecompressionBombError as e:
        # over twice Pillow's own limit: Pillow refuses in open(); its message has the pixel count
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else MAX_PIXELS + 1
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as e:
        # Pillow reports truncated and corrupt data as OSError, SyntaxError, ValueError, struct.error...
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        kind = f"{image.format} image" if image is not None else "image"
        raise InputError(f"{name}: truncated or corrupt {kind} ({detail})") from None
    if pixels > MAX_PIXELS:
        raise InputError(f"{name}: image too large ({pixels:,} pixels; the limit is {MAX_PIXELS:,})")
    return image


def to_grey(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 1 = white; EXIF rotation applied, transparency composited on white."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt EXIF: Pillow warns and we keep the image as stored
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:
            pass
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit and float scans
        x = np.asarray(image, dtype=np.float32)
        low, high = float(x.min()), float(x.max())
        return _shrink((x - low) / (high - low) if high > low else np.zeros_like(x))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return _shrink(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)


def _shrink(grey: np.ndarray) -> np.ndarray:
    height, width = grey.shape
    scale = WORK_SIDE / max(height, width)
    if scale >= 1:
        return grey
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# preprocessing


def ink_map(grey: np.ndarray) -> np.ndarray | None:
    """Ink intensity (H, W) float32 in [0, 1], bright ink on a zero background; None if blank.

    Polarity is read from the border: MNIST-style images have dark borders, paper has light ones.
    The paper's level (the border's median) is subtracted and the contrast stretched so the
    stroke cores are 1, which handles coloured paper, grey scans and faint pencil alike.
    """
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = (1.0 - grey) if background > 0.5 else grey
    background = 1.0 - background if background > 0.5 else background
    peak = _stroke_peak(ink)
    if peak - background < MIN_CONTRAST:
        return None
    # full white = the typical stroke core (the median of the strong ink), as in MNIST where a
    # stroke's middle is saturated and only its edges are grey
    core = float(np.median(ink[ink >= (background + peak) / 2]))
    ink = np.clip((ink - background) / (core - background), 0.0, 1.0)
    ink[ink < INK_THRESHOLD] = 0.0
    return ink


def _stroke_peak(ink: np.ndarray) -> float:
    """The strongest ink that has a neighbour at least as strong: a stroke, not a hot pixel."""
    pairs = [np.minimum(ink[:, :-1], ink[:, 1:]), np.minimum(ink[:-1], ink[1:]),
             np.minimum(ink[:-1, :-1], ink[1:, 1:]), np.minimum(ink[:-1, 1:], ink[1:, :-1])]
    return max((float(p.max()) for p in pairs if p.size), default=float(ink.max()))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels (H, W) int32, 0 = background, n).

    Runs of True in each row are joined to the overlapping runs of the row above (union-find on
    runs), so the work grows with the number of runs, not pixels.
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
    run_rows, run_starts = np.nonzero(edges == 1)
    run_ends = np.nonzero(edges == -1)[1]  # exclusive; same order as the starts
    parent = list(range(len(run_rows)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_rows, np.arange(height + 1))  # runs of row r: [first[r], first[r+1])
    for r in range(1, height):
        above = range(row_first[r - 1], row_first[r])
        j0 = above.start
        for i in range(row_first[r], row_first[r + 1]):
            # 8-connectivity: runs touch if they overlap with one column of slack
            for j in range(j0, above.stop):
                if run_ends[j] < run_starts[i]:
                    j0 = j + 1
                    continue
                if run_starts[j] > run_ends[i]:
                    break
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = np.array([find(i) for i in range(len(parent))], dtype=np.int64)
    _, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros((height, width), dtype=np.int32)
    for r, s, e, lab in zip(run_rows, run_starts, run_ends, run_label + 1):
        labels[r, s:e] = lab
    return labels, int(roots.size and run_label.max() + 1)


def _parts(ink: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Components of the ink and the labels of those big enough to be strokes (not specks)."""
    labels, n = label_components(ink > 0)
    if n == 0:
        return labels, []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    min_area = max(MIN_PART * areas.max(), 4.0)
    if areas.max() < MIN_INK_PIXELS:
        return labels, []
    return labels, [k + 1 for k in np.flatnonzero(areas >= min_area)]


def center_digit(ink: np.ndarray) -> np.ndarray:
    """MNIST's geometry for one digit's ink map: crop, scale to 20 px, paste at the centre of mass."""
    rows = np.flatnonzero(ink.any(1))
    cols = np.flatnonzero(ink.any(0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    # Pillow's resampling filters average over the source footprint when shrinking (anti-aliasing)
    small = Image.fromarray(crop.astype(np.float32), mode="F").resize((new_w, new_h), Image.Resampling.LANCZOS)
    patch = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    if patch.max() > 0:
        patch /= patch.max()  # thin strokes shrink to faint lines; MNIST's ink peaks at full white
    ys, xs = np.mgrid[:new_h, :new_w]
    mass = patch.sum()
    com_y, com_x = (ys * patch).sum() / mass, (xs * patch).sum() / mass
    top, left = int(round(CENTRE - com_y)), int(round(CENTRE - com_x))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    # paste, clipping whatever the shift pushes past the edge
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + new_h, SIZE), min(left + new_w, SIZE)
    out[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.round(out * 255.0).astype(np.uint8)


def to_mnist(image: Image.Image) -> np.ndarray | None:
    """(28, 28) uint8, white on black, preprocessed like MNIST; None when there is no digit."""
    ink = ink_map(to_grey(image))
    if ink is None:
        return None
    labels, keep = _parts(ink)
    if not keep:
        return None
    return center_digit(np.where(np.isin(labels, keep), ink, 0.0))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """Each digit of a handwritten number, left to right, as (28, 28) uint8 MNIST images.

    Digits are the ink's connected components, regrouped: components whose column spans overlap
    by half the narrower one are one digit (a 4 written in two strokes), and a group much shorter
    than the others (a 5's flag, a broken stroke) joins its neighbour if it (almost) touches it.
    Touching digits are read as one.
    """
    ink = ink_map(to_grey(image))
    if ink is None:
        return []
    labels, keep = _parts(ink)
    groups = []  # [first col, last col, first row, last row, [labels]], left to right
    for k in keep:
        rows, cols = np.flatnonzero((labels == k).any(1)), np.flatnonzero((labels == k).any(0))
        groups.append([int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1]), [k]])
    groups.sort()
    i = 1
    while i < len(groups):
        left, right = groups[i - 1], groups[i]
        overlap = min(left[1], right[1]) - max(left[0], right[0]) + 1
        if overlap >= 0.5 * (min(left[1] - left[0], right[1] - right[0]) + 1):
            groups[i - 1:i + 1] = [_merge(left, right)]
        else:
            i += 1
    merged = True
    while merged and len(groups) > 1:
        merged = False
        heights = np.array([g[3] - g[2] + 1 for g in groups])
        tall = float(np.median(heights))
        for i in np.argsort(heights, kind="stable"):
            if heights[i] >= FRAGMENT_HEIGHT * tall:
                break
            # its nearest neighbour, if that one is (almost) touching it horizontally
            gaps = {j: (groups[j][0] - groups[i][1] if j > i else groups[i][0] - groups[j][1])
                    for j in (i - 1, i + 1) if 0 <= j < len(groups)}
            j = min(gaps, key=gaps.get)
            if gaps[j] <= FRAGMENT_GAP * tall:
                a, b = sorted((int(i), j))
                groups[a:b + 1] = [_merge(groups[a], groups[b])]
                merged = True
                break
    # what is left that is tiny next to the digits is a speck between them, not a digit
    areas = np.bincount(labels.ravel())
    group_areas = np.array([areas[g[4]].sum() for g in groups])
    groups = [g for g, area in zip(groups, group_areas) if area >= MIN_DIGIT_AREA * group_areas.max()]
    return [center_digit(np.where(np.isin(labels, g[4]), ink, 0.0)) for g in groups]


def _merge(a: list, b: list) -> list:
    return [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]), a[4] + b[4]]


def naive_resize(image: Image.Image) -> np.ndarray:
    """The baseline people try first: greyscale, resize to 28x28, nothing else. For comparison only."""
    return np.asarray(image.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# reading a batch of files with a classifier


@dataclass(frozen=True)
class Reading:
    """What was read from one image: its digits left to right (none: no digit found), or an error."""

    name: str
    probs: np.ndarray  # (K, 10) float32, one row per digit found
    images: np.ndarray  # (K, 28, 28) uint8, what the model saw
    error: str | None = None

    @property
    def digits(self) -> list[int]:
        return self.probs.argmax(1).tolist()

    @property
    def number(self) -> str:
        return "".join(map(str, self.digits))

    def top(self, k: int = 3) -> list[list[tuple[int, float]]]:
        """Per digit, the k most probable classes with their probabilities."""
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, self.probs)]


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The given files, and the image files (by suffix) directly inside each given directory."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # missing or odd files are reported by open_image
    return files


def read_images(paths: Iterable[str | os.PathLike], classify: Callable[[np.ndarray], np.ndarray],
                multi: bool = False) -> list[Reading]:
    """Read every file; `classify` maps uint8 (N, 28, 28) to probabilities (N, 10) (torch or ONNX).

    A file that cannot be read gets a Reading with `error` set; the others are still read.
    With `multi`, each image is a number and every digit in it is read.
    """
    found: list[tuple[str, list[np.ndarray] | None, str | None]] = []
    for path in image_files(paths):
        try:
            image = open_image(path, str(path))
        except InputError as e:
            found.append((str(path), None, str(e)))
            continue
        if multi:
            digits = split_digits(image)
        else:
            digit = to_mnist(image)
            digits = [] if digit is None else [digit]
        found.append((str(path), digits, None))
    stack = [d for _, digits, _ in found for d in digits or []]
    all_probs = classify(np.stack(stack)) if stack else np.empty((0, 10), np.float32)
    readings, start = [], 0
    for name, digits, error in found:
        k = len(digits or [])
        images = np.stack(digits) if k else np.empty((0, SIZE, SIZE), np.uint8)
        readings.append(Reading(name, np.asarray(all_probs[start:start + k], np.float32), images, error))
        start += k
    return readings


NO_DIGIT = "no digit found"


def readings_to_json(readings: list[Reading]) -> str:
    rows = [{"file": r.name, "number": None if r.error or not r.digits else r.number,
             "digits": [{"digit": top[0][0], "confidence": round(top[0][1], 6),
                         "top3": [{"class": c, "probability": round(p, 6)} for c, p in top]}
                        for top in r.top(3)],
             "error": r.error or (NO_DIGIT if not r.digits else None)} for r in readings]
    return json.dumps(rows, indent=2)


CSV_COLUMNS = ["file", "number", "position", "digit", "confidence", "top2", "p2", "top3", "p3", "error"]


def readings_to_csv(readings: list[Reading]) -> str:
    """One row per digit (position 1 = leftmost); a file with no digit or an error has one row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in readings:
        if r.error or not r.digits:
            writer.writerow([r.name, "", "", "", "", "", "", "", "", r.error or NO_DIGIT])
        for position, top in enumerate(r.top(3), 1):
            (d, p), (c2, p2), (c3, p3) = top
            writer.writerow([r.name, r.number, position, d, f"{p:.6f}", c2, f"{p2:.6f}", c3, f"{p3:.6f}", ""])
    return buffer.getvalue()


def readings_to_table(readings: list[Reading]) -> str:
    """Aligned text: file, number, then each digit with its confidence and top-3."""
    width = max([len("file"), *(len(r.name) for r in readings)])
    number_width = max([len("number"), *(len(r.number) for r in readings)])
    lines = [f"{'file':<{width}}  {'number':<{number_width}}  digit  confidence  top-3"]
    for r in readings:
        if r.error or not r.digits:
            # the error itself goes to stderr (see cli.cmd_predict); json and csv carry it in full
            lines.append(f"{r.name:<{width}}  {'-':<{number_width}}  {'could not be read' if r.error else NO_DIGIT}")
            continue
        for position, top in enumerate(r.top(3)):
            head = f"{r.name:<{width}}  {r.number:<{number_width}}" if position == 0 else " " * (width + 2 + number_width)
            alternatives = ", ".join(f"{c} {p:.3f}" for c, p in top)
            lines.append(f"{head}  {top[0][0]:>5}  {top[0][1]:>10.4f}  {alternatives}")
    return "\n".join(lines)


def format_readings(readings: list[Reading], fmt: str = "table") -> str:
    formats = {"table": readings_to_table, "json": readings_to_json, "csv": readings_to_csv}
    if fmt not in formats:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(formats)})")
    return formats[fmt](readings).rstrip("\n")


def save_preprocessed(readings: list[Reading], out_dir: str | os.PathLike) -> list[Path]:
    """Each 28x28 image the model saw, as PNG: `<n>-<file stem>[-<digit position>].png`."""
    out_dir = Path(out_dir)
    written = []
    for n, r in enumerate(readings, 1):
        for k, digit in enumerate(r.images, 1):
            suffix = f"-{k}" if len(r.images) > 1 else ""
            path = out_dir / f"{n:03d}-{Path(r.name).stem}{suffix}.png"
            with atomic_write(path, "wb") as f:
                Image.fromarray(digit).save(f, "PNG")
            written.append(path)
    return written
