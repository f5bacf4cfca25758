"""Real images: read them safely and preprocess them the way MNIST was made.

MNIST digits are white ink on black, the ink's bounding box scaled (anti-aliased, aspect ratio
kept) so its longer side is 20 px, pasted into 28x28 and shifted so the ink's centre of mass is at
the centre. A photo of a digit on paper is none of that, and a model fed a plain "resize to 28x28"
of it reads nonsense. `to_mnist` redoes MNIST's preprocessing on any image; `split_digits` does it
for each digit of a handwritten number.

Photos of paper need more than that: the page's illumination is estimated and divided out (a
shadow, a gradient of light), long printed lines are removed (ruled paper, a form's box), and the
digit is the biggest stroke near the centre, specks and stray marks left out. The image work is
OpenCV's; everything happens at WORK_SIDE or less (JPEGs are decoded at a reduced size directly).

Nothing here imports torch: the classifier is passed in as a function (see `read_images`), so
onnxruntime-only deployments use this module too.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.data import IMAGE_SUFFIXES
from ..core.files import InputError, atomic_write, first_line

# Only these Pillow decoders are ever tried: fewer parsers, less attack surface.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # PPM: Pillow's Netpbm (a scanner's .pnm)
# Largest image we decode (width * height). 40 megapixels is more than any phone photo; a
# "decompression bomb" (a tiny file claiming a huge canvas) is refused before it is decoded.
MAX_PIXELS = 40_000_000

WORK_SIDE = 1024  # larger images are shrunk (anti-aliased; JPEGs while decoding) to this longer side first: the digit ends up 20 px anyway

# MNIST's geometry.
SIZE = 28  # output side, px
BOX = 20  # the ink's longer side after scaling, px
CENTRE = 14.0  # where MNIST puts the ink's centre of mass (row, col); measured on the test set: 13.99, 14.01

# Preprocessing thresholds, on the ink once the page's light is divided out: the share of the light
# around it that a pixel takes (0 = paper), then scaled so that a stroke's core is 1.
MIN_CONTRAST = 0.1  # the strongest stroke takes at least this share, else "no digit" (soft pencil: 0.15)
NOISE_FLOOR = 4.0  # a pixel is ink only if this many standard deviations of the page's noise darker than its paper
# ... and taken as at most this many times the spread of the page's fine grain: measured on the
# conditions of tests/image_variants.py, the page's spread is 1-2 times the grain's (3-7.5 after JPEG at quality 25)
NOISE_RESIDUAL = 4.0
INK_THRESHOLD = 0.2  # ... and this fraction of a stroke core's contrast: fainter is paper texture or JPEG noise
MIN_PART = 0.08  # a blob smaller than this fraction of the largest one is a speck, not a stroke
FRAGMENT_HEIGHT = 0.6  # in a number, a piece shorter than this fraction of the median digit is part of a neighbour
FRAGMENT_GAP = 0.1  # ... if it is no further from it than this fraction of the median digit height
MIN_DIGIT_AREA = 0.15  # ... and an isolated piece with less ink than this fraction of the biggest digit is a speck
THIN_ONE_SHORTEST, THIN_ONE_TALLEST = 0.8, 1.25  # ... unless it is at least the first of their median height, and
                                                 # at most the second of the tallest: a thin 1
STACKED_GAP = 0.2  # two pieces one above the other are one digit if this fraction of the taller's height apart at most
STACKED_FAR = 0.5  # ... and pieces whose columns overlap, or a fragment and its neighbour, only this close above or below (of the taller; the median digit)
MIN_INK_PIXELS = 12  # a biggest blob smaller than this (in the working image) is not a digit
NEAR = 0.35  # a stroke further from the main stroke than this fraction of its size is a stray mark
# A stroke near the digit but apart from it (further from the main stroke's box than DOUBT_GAP of its size)
# and under DOUBT_AREA of its ink may be a stray mark (a tick, a scribble's end, a neighbour's stroke) as
# well as the digit's own (a 5's flag, a broken pencil stroke): the digit is also read without such
# strokes, and the model's surest reading is taken (`pick`). At most DOUBT_MOST of them are tried.
# DOUBT_GAP 0 (wholly outside the box) against 0.05, 150 digits a strength of tests/image_variants.py's
# stray_marks: 100 / 99.3 / 100% against 100 / 99.3 / 99.3% (every stroke kept: 91.3 / 86.0 / 82.0%)
DOUBT_GAP = 0.0
DOUBT_AREA = 0.5
DOUBT_MOST = 4

# The page's illumination: a closing (max then min filter) this fraction of the image's shorter
# side wide, far wider than any stroke of a digit that fits in the picture, so it erases strokes
# and keeps the light's gradient, a shadow's edge and the paper's colour.
BACKGROUND_FRACTION = 0.3
BACKGROUND_LONG = 0.2  # ... and at least this fraction of the longer side: wider than a digit's strokes, under a fifth of its height
BACKGROUND_CELLS = 15  # ... computed on a copy shrunk so the filter is this many pixels wide: fast
BACKGROUND_PEN = 0.4  # strokes wider than this fraction of the closing: it did not erase them; the paper is then
PAPER_PERCENTILE = 95  # ... one level for the picture, this percentile of it (a digit covers under half its picture)
# Even light (see _even_light): a quadratic surface fitted to the paper on a copy shrunk to
# BACKGROUND_CELLS / EVEN_SAMPLE cells across (on up to EVEN_POINTS of its pixels), taken when the
# darkest EVEN_DARKEST percent of the paper lie within EVEN_LIGHT of the ink's contrast of it, lifted
# to the paper's EVEN_LIFT percentile. Not tried where over EVEN_MAX_INK of the picture is dark, or
# fewer than EVEN_MIN_PAPER paper pixels are left to fit.
EVEN_SAMPLE = 0.25
EVEN_POINTS = 4_000
EVEN_DARKEST = 1.0
EVEN_LIGHT = 0.15
EVEN_LIFT = 90
NOISE_TAIL = 2.33  # standard deviations of normal noise below its 1st percentile
EVEN_MAX_INK = 0.85
EVEN_MIN_PAPER = 12
EVEN_STRAY = 0.002  # ... and kept only if at most this share of the paper comes out as ink
EVEN_STRAY_HOLLOWED = 0.02  # ... or as one reading of two, where the closing hollowed the strokes (`_hollowed`)
EVEN_GROWTH = 4.0  # ... nor more than this many times the closing's ink in all
EVEN_KEEPS, EVEN_STEEP = 0.7, 2.0  # ... and where its light falls off steeply (its brightest percent this many times
                                  # its dimmest: a lamp's spot, which no quadratic follows, hides the strokes in its
                                  # dim corner), it finds at least this share as much ink as the closing
EVEN_BEYOND = 0.05  # ... and at most this share of the ink lies beyond the closing's strokes (_within_strokes)
EVEN_AS_DARK = 0.6  # ... unless that ink is this much as dark as what both found, in strokes too wide for it (_hollowed)
# A sheet on a desk (see _off_the_desk): its light region covers SHEET_MIN to SHEET_MAX of the
# picture and SHEET_FILL of its rotated bounding rectangle, the desk's median is at most SHEET_DARKER
# of the paper's, and SHEET_RIM of the sheet's shorter side round its edge goes with the desk
SHEET_MIN = 0.04
SHEET_MAX = 0.95
SHEET_FILL = 0.9
SHEET_DARKER = 0.6
SHEET_RIM = 0.02
SHEET_BORDER = 0.4  # ... and the desk runs along this share of the picture's border at least (not a tight crop's ink)
# Noise (see _grain): a page noisier than this (grey levels, a standard deviation) is smoothed first by
# a Gaussian as many px wide as the noise is times this level, at most DENOISE_WIDEST: in dim light a
# phone's sensor noise is 10-20 levels
DENOISE_ABOVE = 5.0
DENOISE_WIDEST = 2.0
DENOISE_SMALLEST = 12  # px
GRAIN_SIDE = 128  # ... on every n-th pixel, so that about this many are left across (px)
GRAIN_FLAT = 25  # the noise is measured on this percentile of the page with the least slope (_grain)
MEAN3_RESIDUAL = 0.943  # the share of white noise's spread that what a 3x3 mean takes away keeps
# Polarity (see _dark_ink): the paper is the median of a window this fraction of the shorter side
# wide. Measured on 300 digits per condition of tests/image_variants.py and 2,000 MNIST digits, no
# picture read the wrong way round at 0.6; at 0.3, 31 `thick` ones (the strokes of a digit cropped
# tight fill the window), at the whole side 4-12 `shadow_edge` ones (the window runs off the page).
POLARITY_FRACTION = 0.6
POLARITY_WIDER, POLARITY_DARKER, POLARITY_UNEVEN = 2.0, 0.03, 0.05

# Printed lines (see remove_lines): runs of ink LINE_RUN of the image long, horizontal or vertical
# within LINE_SLACK of the image across (a page shot at an angle), that cross LINE_SPAN of it. A
# digit's own strokes are shorter than the picture: MNIST's longest side is 20 of 28 px (71%).
LINE_RUN = 0.1
LINE_SLACK = 0.004
LINE_SPAN = 0.8
LINE_EDGE, LINE_EDGE_SPAN, LINE_THIN = 0.02, 0.3, 0.04  # or a thin one that runs off the edge, across 30%
LINE_PEN = 0.8  # ... and are at most this fraction of the pen's stroke width thick (see _pen_width)
EDGE_TO_EDGE_PEN = 0.5  # ... where one runs from edge to edge, at most this fraction of it: it need not run past the
                        # handwriting (a number cropped close at its sides); a stroke across a tight crop is thicker
                        # (a faint line's end may fade out twice its thickness and a px from the picture's top or bottom)
STUB_PEN = 0.5  # ... and take along each run of ink across them shorter than half their thickness plus the pen's width
STUB_MIN = 2  # ... or than their thickness plus this many px (a box's side may be as thick as the pen)
RULED_PEN = 1.6  # ... or, one of an even ruling's lines (see _ruling), at most this fraction of it (a fine pen)
RULED_THICK, RULED_EVEN = 1, 0.15  # a ruling's lines differ by at most 1 px in thickness, their gaps by 15% of a whole step
STROKE_DARKER = 1.3  # ... but keep what is this much darker than the line's core: a stroke along it
LINE_NOISE = 4  # ... and this many robust standard deviations of the line's core above its median
LINE_OUTLIER = 0.01  # ... and run past the handwriting's extent, leaving out this share of its ink at each end
LINE_GAP = 0.03  # a faint line binarises into dashes: gaps up to this fraction of the image are joined
BAND_THIN = 0.15  # ... and where two lines joined by strokes are told apart, each this thin next to the gap between them
LINE_TILT = 10.0  # degrees off horizontal (vertical) a printed line may run: a page shot askew
TILT_STEPS = ((1.0, 10), (0.2, 5))  # ... searched in steps of 1 degree either way, then of 0.2 round the best
TILT_POINTS = 2_000  # ... on at most about this many pixels of the long components' ink
TILT_GAIN = 1.1  # ... and taken only where it piles the ink up this much more than no tilt does
PIECE_THICK, PIECE_LONG = 4.0, 10.0  # ... or, where no ink runs that far, thin pieces of lines (see _tilt)
BOX_SIDE = 0.15  # a printed box's sides are at least this fraction of the image's shorter side long
BOX_TOLERANCE = 0.1  # ... meet within this fraction of its size at the corners
BOX_THIN = 0.1  # ... and are at most this fraction of its size thick (a digit's strokes are thicker)
BOX_ALIKE = 2.5  # ... or, one side along which a stroke lies, at most this many times as thick as the other three
BOX_ALIKE_PX = 2  # ... and no side thicker than BOX_ALIKE times the thinnest side and this many px: printed alike
BOX_SIDE_PERCENTILE = 10  # ... where they are thinnest: this percentile of the ink across them (a 0 may touch a side
                          # along most of its length)
BOX_LEVEL = 0.1  # ... and each runs within this slope (6 degrees) of the page's lines: two ruled lines, the margin
# and a 7's slanted stem between them are no box
DIVIDER_CLEAR = 0.25  # a box's divider has other ink beside it (on both sides, where it is the only one) this fraction of a box or more away


# ---------------------------------------------------------------------------------------------
# reading


def open_image(source: str | os.PathLike | bytes, name: str) -> Image.Image:
    """Decode an image file (path or bytes) fully, or raise InputError with one clear line.

    Only FORMATS are decoded; images over MAX_PIXELS, truncated or corrupt files, empty files
    and non-images are refused. `name` is what the message calls the input. A large JPEG comes
    back greyscale at 1/2, 1/4 or 1/8 of its size (no smaller than half WORK_SIDE): all that
    preprocessing reads, for a fraction of the decoding.
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
                if image.format == "JPEG":
                    # libjpeg decodes at 1/2, 1/4 or 1/8 size for a fraction of the work: a phone
                    # photo is read at 500-1000 px, never at 12 megapixels (and grey, if colour)
                    scale = 0.5 * WORK_SIDE / max(image.size)
                    image.draft("L", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
                image.load()
    except Image.DecompressionBombError as e:
        # over twice Pillow's own limit: Pillow refuses in open(); its message has the pixel count
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else MAX_PIXELS + 1
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image in a supported format ({', '.join(FORMATS)})") from None
    except Exception as e:
        # Pillow reports truncated and corrupt data as OSError, SyntaxError, ValueError, struct.error...
        detail = first_line(e)
        kind = f"{image.format} image" if image is not None else "image"
        raise InputError(f"{name}: truncated or corrupt {kind} ({detail})") from None
    if pixels > MAX_PIXELS:
        raise InputError(f"{name}: image too large ({pixels:,} pixels; the limit is {MAX_PIXELS:,})")
    return image


def to_grey(image: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1], 1 = white, at most WORK_SIDE on its longer side; EXIF rotation
    applied, transparency composited on white."""
    return _grey8(image).astype(np.float32) / 255.0


def _grey8(image: Image.Image) -> np.ndarray:
    """`to_grey` as uint8 (H, W), 255 = white: what preprocessing works on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # corrupt EXIF: Pillow warns and we keep the image as stored
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:
            pass
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit and float scans
        x = _shrink(np.asarray(image, dtype=np.float32))
        low, high = float(x.min()), float(x.max())
        return np.round((x - low) * (255.0 / (high - low))).astype(np.uint8) if high > low else np.zeros(x.shape, np.uint8)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return _shrink(np.asarray(image.convert("L")))


def _shrink(grey: np.ndarray) -> np.ndarray:
    """Shrunk (each output pixel the mean of its footprint) to WORK_SIDE on the longer side, if larger."""
    height, width = grey.shape
    scale = WORK_SIDE / max(height, width)
    if scale >= 1:
        return grey
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# preprocessing: page -> ink -> printed lines removed -> the digit's strokes -> MNIST's geometry
#
# Internally every step is uint8 (H, W) at working size, ink bright (255 = a stroke's core) on 0.


@dataclass(frozen=True)
class Preprocessed:
    """One image through preprocessing: the digits read, and what each step left (uint8 (H, W) at
    working size, ink white on black) to show a user why a reading went wrong."""

    digits: list[np.ndarray]  # (28, 28) uint8 each, left to right
    ink: np.ndarray | None = None  # the page's light divided out, binarised (None: a blank page)
    strokes: np.ndarray | None = None  # ... and printed lines removed
    chosen: np.ndarray | None = None  # ... and only the strokes read as the digit(s)
    lines: tuple[LineVerdict, ...] = ()  # what line removal decided of each long straight run, and why
    # one digit beside strokes that may be stray marks: (K, 28, 28) readings, the first digits[0] (every
    # stroke near the digit kept), the others without some of those strokes; where the page's light
    # was read two ways (`ink_maps`), the second's readings follow; `pick` chooses among them
    choices: np.ndarray | None = None
    choice_masks: tuple[np.ndarray, ...] = ()  # with keep_steps: `chosen` as each choice keeps it
    # where the page was read other ways too (`ink_maps`): those readings (their steps, with
    # keep_steps), one each, the last len(others) of `choices`
    others: tuple[Preprocessed, ...] = ()

    def step_images(self) -> dict[str, np.ndarray]:
        """Each step's image, named for the files `save_preprocessed` writes; where lines were
        looked at, "2-lines-found" too: the ink grey, what went as a line red, what stayed green."""
        steps = {"1-background-removed": self.ink, "2-lines-removed": self.strokes, "3-chosen": self.chosen}
        if self.lines and self.ink is not None and self.strokes is not None:
            grey = (self.ink // 2).astype(np.uint8)
            overlay = np.stack([grey, grey, grey], -1)
            overlay[(self.ink > 0) & (self.strokes == 0)] = (255, 40, 40)  # taken away as a printed line
            kept = np.zeros(self.ink.shape, bool)
            for verdict in self.lines:
                if not verdict.removed:
                    kept |= verdict.pixels
            overlay[kept & (self.strokes > 0)] = (60, 220, 60)  # looked at as a line, kept as a stroke
            steps["2-lines-found"] = overlay
        return {name: x for name, x in steps.items() if x is not None}


def ink_maps(grey: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(ink, share)], both (H, W) uint8, from grey uint8 (255 = white); [] if blank; more than one
    where the page could be read other ways too (see below). `ink`: 255 = a
    stroke's core, 0 = paper; `share`: the share of the paper's light the ink takes (255 = all), not
    stretched, so that ink darker than other ink still shows as such (a stroke along a printed line).

    Polarity is read from the ink itself (`_dark_ink`): darker or lighter than the paper around it.
    A noisy page is smoothed first (`_grain`). The page's light is estimated (`_even_light`, a
    surface fitted to the paper, where the light is even or smooth; else `_background`, a closing)
    and divided out, as document scanners do, so a gradient of light, a shadow's edge and the
    paper's colour all become "paper"; the contrast is then stretched so the typical stroke core is
    full white, which handles faint pencil. The result is binarised against that local background:
    pixels with less than INK_THRESHOLD of a core's contrast are paper (0); the rest keep their grey
    level, as MNIST's anti-aliased edges do. Where the fitted surface is taken only because the
    closing seems to have hollowed bold strokes (`_hollowed`), a dark shadow's half-light may be what
    it found: the closing's map is then the second. Where the ink was read as lighter than an
    unevenly lit ground (a lamp's spot its strokes split reads so), the maps of dark ink follow.
    """
    small, cells = _shrunk(grey, POLARITY_FRACTION)
    dark = _dark_ink(small, cells)
    maps = _page_maps(grey if dark else 255 - grey)
    if not dark and _lit_unevenly(small):
        # light ink on an unevenly lit ground, not MNIST's flat one: perhaps a lamp's spot on paper,
        # its strokes splitting it: dark ink is read too (`preprocess` reads every map)
        maps = maps[:1] + _page_maps(grey)
    return maps


def _page_maps(page: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """`ink_maps` of a page of dark ink on light paper."""
    # a photo in dim light: its noise would pass for ink, or hide it (in a picture narrower than
    # DENOISE_SMALLEST every pixel is near a stroke's edge: no noise can be told from them, and a
    # blur there would merge the strokes)
    grain = _grain(page) if min(page.shape) >= DENOISE_SMALLEST else None
    if grain is not None and grain > DENOISE_ABOVE:
        page = cv2.GaussianBlur(page, (0, 0), min(DENOISE_WIDEST, grain / DENOISE_ABOVE))
        grain = None  # measured again on the smoothed page, if needed
    closed = _divided(page, _background(page), grain=grain)
    even = _even_light(page)
    if even is not None:
        light, noise, paper = even
        found = _divided(page, light, noise)
        if found is not None and closed is None:
            return [found]  # the closing erased every stroke (bold ones filling a small picture): the fit found them
        # the surface explains the page only if next to none of the paper comes out as ink (more
        # than a pixel's speck: JPEG's noise has long tails), and
        # what it finds beyond the closing's ink lies inside strokes (a tight crop's hollowed ones),
        # not away from them (a shadow's sharp edge, a fold: the closing follows those), or the
        # closing hollowed strokes too wide for it (a bold digit filling a small picture: it kept
        # a few specks of them). Then a little more of the paper may come out as ink (EVEN_STRAY_HOLLOWED:
        # a bold stroke's blurred edge, sampled near it in a small picture), since both are read
        stray = 1.0 if found is None else cv2.erode(found[0], np.ones((2, 2), np.uint8))[paper].astype(bool).mean()
        if (stray <= EVEN_STRAY_HOLLOWED
                and (_falls_off_less(light, EVEN_STEEP) or (found[0] > 0).sum() >= EVEN_KEEPS * (closed[0] > 0).sum())):
            if stray <= EVEN_STRAY and _within_strokes(found[0], closed[0]):
                return [found]
            if _hollowed(found, closed, page.shape):
                # a dark shadow's half-light passes for strokes the closing hollowed too: the
                # closing's reading is the other one (`preprocess` reads both, the model chooses)
                return [found] + _closing_maps(page, closed)
    return _closing_maps(page, closed)


def _closing_maps(page: np.ndarray, closed: tuple[np.ndarray, np.ndarray] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[the closing's ink map], [] if blank; where its strokes are about as wide as the closing (a
    digit that fills the picture: a tight crop), they were partly taken for the background: the
    picture is then all digit, and its paper one level."""
    if closed is not None and _wider_than_closing(closed[0], page.shape):
        level = np.percentile(page, PAPER_PERCENTILE)
        closed = _divided(page, np.maximum(page, np.uint8(level)))
    return [] if closed is None else [closed]


def _falls_off_less(light: np.ndarray, ratio: float) -> bool:
    """Whether the brightest percent of a light surface is under `ratio` times its dimmest percent
    (on every 4th pixel: it is smooth)."""
    bright, dim = np.percentile(light[::4, ::4], [99, 1])
    return bool(bright < ratio * max(1.0, dim))


def _hollowed(found: tuple[np.ndarray, np.ndarray], closed: tuple[np.ndarray, np.ndarray],
              shape: tuple[int, int]) -> bool:
    """Whether the closing (`closed`: its ink map and share) hollowed strokes that the paper's
    fitted light (`found`) found whole: those are wider than it can erase (`_wider_than_closing`),
    and what is found beyond the closing's ink is, in its median share of the light, as dark
    (EVEN_AS_DARK) as the darkest tenth of what both found: the same strokes, not a shadow's
    half-light round darker ones, nor a grey sheet on a lighter desk round the digit on it (measured:
    `shadow_edge` at most 0.39 as dark, a grey sheet 0.44, bold digits and `felt_tip` 0.73 or more)."""
    if not _wider_than_closing(found[0], shape):
        return False
    both = (found[0] > 0) & (closed[0] > 0)
    beyond = (found[0] > 0) & (closed[0] == 0)
    return bool(both.any() and beyond.any()
                and np.median(found[1][beyond]) >= EVEN_AS_DARK * np.percentile(found[1][both], 90))


def _wider_than_closing(ink: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether the strokes of an ink map are wider than BACKGROUND_PEN of the closing's window
    (`_closing_width` of a picture of `shape`): too wide for it to erase."""
    strokes = _handwriting(ink > 0)
    return strokes is not None and _pen_width(strokes) > BACKGROUND_PEN * max(3.0, _closing_width(shape))


def _grain(page: np.ndarray) -> float:
    """The page's fine noise (grey levels, a standard deviation): the robust spread of what a 3x3
    mean takes away, on every n-th pixel (GRAIN_SIDE), where the page is flattest (the GRAIN_FLAT percent with
    the least slope once smoothed: paper and the middles of strokes, not their edges, which in a
    small tight crop are most of the picture)."""
    stride = max(1, min(page.shape) // GRAIN_SIDE)  # white noise keeps its spread on every n-th pixel
    page = np.ascontiguousarray(page[::stride, ::stride])
    grain = page.astype(np.float32) - cv2.blur(page, (3, 3))
    smooth = cv2.GaussianBlur(page, (0, 0), 1.5).astype(np.float32)
    slope = np.abs(cv2.Sobel(smooth, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    flat = slope <= np.percentile(slope, GRAIN_FLAT)
    return 1.4826 * float(np.median(np.abs(grain[flat]))) / MEAN3_RESIDUAL


def _divided(page: np.ndarray, background: np.ndarray, noise: float | None = None,
             grain: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """`ink_maps` for dark ink on light paper (uint8), given the paper's light (uint8, never darker
    than the page) and, if known, its noise (a standard deviation in grey levels) or its fine grain
    (`_grain`): the share of the light the ink takes, stretched and binarised, and as it is."""
    contrast = cv2.subtract(background, page)  # grey levels darker than the paper around it
    if noise is None:
        # sensor and JPEG noise, from the spread of the contrast over the page (mostly paper): anything
        # within NOISE_FLOOR of it is paper, however dark the paper is where a shadow falls. Where the
        # digit fills the picture (a tight crop) that spread is the ink's: the noise is then at most
        # NOISE_RESIDUAL times the spread of what a 3x3 mean takes away (fine grain; strokes are smooth)
        sample = contrast[::4, ::4].astype(np.float32)
        noise = _robust_spread(sample)
        noise = min(noise, NOISE_RESIDUAL * MEAN3_RESIDUAL * (_grain(page) if grain is None else grain))
    contrast[contrast < NOISE_FLOOR * noise] = 0
    ink = cv2.divide(contrast, np.maximum(background, 1), scale=255)  # the share of the light the ink takes
    # the strongest ink that fills a 2x2 block: a stroke, not a hot pixel or JPEG ringing
    peak = int(cv2.erode(ink, np.ones((2, 2), np.uint8)).max())
    if peak < MIN_CONTRAST * 255:
        return None
    # full white = the typical stroke core (the median of the strong ink), as in MNIST where a
    # stroke's middle is saturated and only its edges are grey
    counts = np.bincount(ink.ravel(), minlength=256)[(peak + 1) // 2:]
    core = (peak + 1) // 2 + int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
    levels = np.clip(np.arange(256) * (255.0 / max(core, 1)), 0, 255)
    levels[levels < INK_THRESHOLD * 255] = 0
    return cv2.LUT(ink, levels.astype(np.uint8)), ink


def _robust_spread(values: np.ndarray) -> float:
    """A standard deviation that outliers (ink among the paper, strokes along a line) leave alone:
    1.4826 times the median absolute deviation from the median (the same for normal noise)."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _dark_ink(small: np.ndarray, cells: int) -> bool:
    """Whether the ink is darker than the paper (a page) rather than lighter (an MNIST-style image),
    from the picture's `_shrunk` copy for a window POLARITY_FRACTION of it (`small`, `cells` wide).

    The ink is what departs most from the paper around it, and the paper is the median of a window
    POLARITY_FRACTION of the shorter side wide: a median, unlike a mean or a closing, takes no side
    and keeps a shadow's edge where it is. The strongest departures (over half the strongest of
    all) decide: darker ones outweigh lighter ones. No one level for the whole picture can: a page
    in a shadow's half-light is as dark as MNIST's background is light.

    But where bold strokes fill most of the window (a felt-tip digit cropped to its ink), its median
    is the ink's, and the paper departs from it: then the picture's border, on the light side of
    Otsu's level, says the paper is light (the previous releases read polarity from the border alone).
    """
    departure = small.astype(np.int16) - cv2.medianBlur(small, cells)
    strong = np.abs(departure) > 0.5 * np.abs(departure).max()
    if int(departure[strong].sum()) < 0:
        return True
    # a lamp's spot is lighter than the median over a wide patch, not in strokes: where what departs
    # lighter is POLARITY_WIDER times as wide as what departs darker, the darker is more than a few
    # pixels (POLARITY_DARKER of the lighter's), and the light falls unevenly on the picture's border
    # (its quartiles POLARITY_UNEVEN of the picture's range apart: not the flat ground of an MNIST
    # digit, whose bold light strokes leave dark gaps between them where they fill the window), the
    # darker is the ink
    darker, lighter = strong & (departure < 0), strong & (departure > 0)
    if (darker.any() and lighter.any() and darker.sum() >= POLARITY_DARKER * lighter.sum()
            and _lit_unevenly(small) and _pen_width(lighter) >= POLARITY_WIDER * _pen_width(darker)):
        return True
    level, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return bool(np.median(_border(small)) > level)


def _lit_unevenly(small: np.ndarray) -> bool:
    """Whether the light falls unevenly on the picture's border: its quartiles POLARITY_UNEVEN of the
    picture's range apart (an MNIST digit's ground is flat)."""
    return bool(np.subtract(*np.percentile(_border(small), [75, 25]))
                >= POLARITY_UNEVEN * np.subtract(*np.percentile(small, [99, 1])))


def _border(image: np.ndarray) -> np.ndarray:
    """The pixels along the picture's edge, each once (1-D)."""
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def _within_strokes(ink: np.ndarray, closed: np.ndarray) -> bool:
    """Whether the ink found beyond `closed` (the closing's ink map) lies within a pen's
    width (and 2 px) of it, but for EVEN_BEYOND of all the ink, and is no more than EVEN_GROWTH times
    as much ink: the middles of strokes the closing hollowed (where strokes meet, wider than the
    typical pen), not a region of its own (a shadow the surface did not follow)."""
    found = ink > 0
    area = int(found.sum())
    if int((found & (closed == 0)).sum()) <= EVEN_BEYOND * area:  # the two agree: nothing to look at
        return True
    if area > EVEN_GROWTH * int((closed > 0).sum()):  # filling the closing's outlines does not grow them this much
        return False
    strokes = _handwriting(found)
    if strokes is None:
        return True
    distance = cv2.distanceTransform((closed == 0).astype(np.uint8), cv2.DIST_L2, 3)
    beyond = found & (distance > _pen_width(strokes) + 2)
    return int(beyond.sum()) <= EVEN_BEYOND * area


def _even_light(page: np.ndarray) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]] | None:
    """Where the light falls evenly, or smoothly (a gradient, vignetting): the page's brightness
    (H, W) uint8, a quadratic surface fitted to the paper, the paper's noise about it (grey
    levels, a standard deviation) and where the paper was sampled ((rows, columns)); None where no
    such surface fits (a shadow's edge, faint printed lines, a page with no clear ink).

    A closing cannot tell a stroke wider than its window from the paper: in a tight crop (a 1 in a
    narrow picture, a thick 0 filling it) it takes the stroke's middle for background, and the
    digit comes out hollow. A surface fitted to the paper alone has no window. The paper is what
    Otsu's level puts on the light side, two pixels away from the ink; the surface holds if the
    darkest of the paper (EVEN_DARKEST) departs from it by no more than EVEN_LIGHT of the ink's
    contrast. It is lifted to the paper's bright side (EVEN_LIFT), where a closing would lie, and
    the noise is measured on the paper alone, however much of the picture the digit fills.
    """
    small, _ = _shrunk(page, EVEN_SAMPLE)
    level, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = small <= level
    if not dark.any() or dark.mean() > EVEN_MAX_INK:
        return None
    # two pixels away from the ink (one, in a picture too small for two): its blurred edge is neither
    for away in (np.ones((5, 5), np.uint8), np.ones((3, 3), np.uint8)):
        ys, xs = np.nonzero(cv2.erode((~dark).astype(np.uint8), away))
        if len(ys) >= EVEN_MIN_PAPER:
            break
    else:
        return None
    height, width = small.shape

    def u_of(x):  # columns of the shrunk copy on [-1, 1]
        return 2.0 * x / max(width - 1, 1) - 1

    def v_of(y):  # rows
        return 2.0 * y / max(height - 1, 1) - 1

    def surface(u: np.ndarray, v: np.ndarray, coef: np.ndarray) -> np.ndarray:  # 1, u, v, u^2, uv, v^2
        return coef[0] + coef[1] * u + coef[2] * v + coef[3] * u * u + coef[4] * u * v + coef[5] * v * v

    step = max(1, len(ys) // EVEN_POINTS)
    ys, xs = ys[::step], xs[::step]
    u, v = u_of(xs.astype(np.float64)), v_of(ys.astype(np.float64))
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1)
    values = small[ys, xs].astype(np.float64)
    # least squares by the normal equations: 6x6, a fraction of lstsq's time (its SVD, its threads)
    coef = np.linalg.solve(design.T @ design + 1e-9 * np.eye(6), design.T @ values)
    residual = values - design @ coef
    contrast = float(np.median(values)) - float(np.median(small[dark][::max(1, int(dark.sum()) // EVEN_POINTS)]))
    # (beyond what the paper's own noise puts in its darkest EVEN_DARKEST percent: 2.33 standard
    # deviations, in a picture too small to be shrunk and so averaged)
    if contrast <= 0 or -np.percentile(residual, EVEN_DARKEST) > EVEN_LIGHT * contrast + NOISE_TAIL * _robust_spread(residual):
        return None
    # at full size, on the paper alone: the noise (the shrunk copy averaged most of it away), and
    # the lift to the paper's bright side
    light = surface(u_of(np.arange(width, dtype=np.float32))[None, :], v_of(np.arange(height, dtype=np.float32))[:, None],
                    coef.astype(np.float32))
    if light.shape != page.shape:  # a smooth surface: enlarged without loss
        light = cv2.resize(light, page.shape[::-1], interpolation=cv2.INTER_LINEAR)
    stride = max(1, int(np.sqrt(page.size / (4 * EVEN_POINTS))))
    # three pixels away from the ink where there is paper enough (a bold stroke's blurred edge
    # reaches that far, and would count as paper come out as ink), else as far as the fit's
    grid = (page[::stride, ::stride] > level).astype(np.uint8)
    for reach in (np.ones((7, 7), np.uint8), away):
        py, px = np.nonzero(cv2.erode(grid, reach))
        if len(py) >= EVEN_MIN_PAPER:
            break
    else:
        return None
    residual = page[py * stride, px * stride] - light[py * stride, px * stride]
    noise = _robust_spread(residual)
    lifted = np.clip(np.round(light + np.percentile(residual, EVEN_LIFT)), 0, 255).astype(np.uint8)
    return np.maximum(lifted, page), noise, (py * stride, px * stride)


def _background(page: np.ndarray) -> np.ndarray:
    """The page's brightness without its strokes (H, W) uint8: a closing (max then min filter)
    `_closing_width` wide, computed on a `_shrunk` copy and enlarged back."""
    small, cells = _shrunk(page, _closing_width(page.shape) / min(page.shape))
    # the picture's edge repeated outward first: a closing that stops at the edge takes the paper
    # there for as bright as the paper a window inward, and a shadow's dark side turns to "ink"
    padded = cv2.copyMakeBorder(small, cells, cells, cells, cells, cv2.BORDER_REPLICATE)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (cells, cells))
    background = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)[cells:-cells, cells:-cells]
    if small.shape != page.shape:
        background = cv2.resize(background, page.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return np.maximum(background, page)  # the page is never brighter than its own background


def _closing_width(shape: tuple[int, int]) -> float:
    """The background closing's width (px): BACKGROUND_FRACTION of the shorter side, and no less
    than BACKGROUND_LONG of the longer one (a narrow picture of a 1: its stem fills the width)."""
    return max(BACKGROUND_FRACTION * min(shape), BACKGROUND_LONG * max(shape))


def _shrunk(page: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """For a filter `fraction` of the shorter side wide: a copy shrunk (each pixel the mean of its
    footprint) so that the filter is BACKGROUND_CELLS wide, and its width there (odd, at least 3)."""
    height, width = page.shape
    side = max(3.0, fraction * min(height, width))
    factor = max(1.0, side / BACKGROUND_CELLS)
    small = page
    if factor > 1:
        small = cv2.resize(page, (max(1, round(width / factor)), max(1, round(height / factor))),
                           interpolation=cv2.INTER_AREA)
    return small, max(3, int(round(side / factor)) | 1)


def remove_lines(ink: np.ndarray, verdicts: list[LineVerdict] | None = None,
                 share: np.ndarray | None = None) -> np.ndarray:
    """The ink without long straight printed lines: ruled lines, a form's box, underlines.

    Lines are looked for up to LINE_TILT degrees off horizontal and vertical: each axis is worked
    on in its own sheared frame (`_Shear`), in which its lines, tilted as the longest ink says
    (`_tilt`), run straight along it. Candidates are runs of ink at least LINE_RUN of the image
    long there (give or take LINE_SLACK of the image across, for the rest of a tilt; gaps up to
    LINE_GAP, for a faint line that binarised into dashes), each fitted with a straight line. A
    candidate is a printed line if it crosses the picture (`_Line.crosses`), is thin next to the
    pen and runs past both ends of the handwriting (or off the picture), or if it is a side of a
    box round the handwriting: two horizontal candidates joined at both ends by two vertical ones.
    What goes is decided run by run across each line (`_line_runs`): the line's ink and slivers
    beside it go, a stroke that crosses it or lies along it stays whole, bridged, with no stubs.
    Given a list, `verdicts` gets what was decided of every candidate that crosses the picture or
    makes a box, and why (`--show-preprocessed` writes them out). Where a line's ink is fainter than
    the pen's, a stroke along it stays where it is STROKE_DARKER times darker than the line's core,
    measured on `share` (`ink_maps`', not stretched; else on `ink`, where both may be saturated).
    """
    verdicts = [] if verdicts is None else verdicts
    mask = (ink > 0).astype(np.uint8)
    height, width = mask.shape
    n, labels, stats, _ = _components(mask)
    frames = {axis: _Shear.along(mask, axis, _tilt(mask, labels, stats, axis)) for axis in ("h", "v")}

    def judge(axis: str, line: _Line, removed: bool, why: str) -> None:
        verdicts.append(LineVerdict.of(line, axis, frames[axis], removed, why))
    candidates = {}
    for axis, (length, across) in {"h": (width, height), "v": (height, width)}.items():
        frame = frames[axis]
        slack = 2 * max(1, round(LINE_SLACK * across)) + 1
        run = max(3, round(LINE_RUN * length))
        gap = max(3, round(LINE_GAP * length))
        along, sideways, gaps = ((run, 1), (1, slack), (gap, 1)) if axis == "h" else ((1, run), (slack, 1), (1, gap))  # (columns, rows)
        joined = cv2.dilate(frame.mask, cv2.getStructuringElement(cv2.MORPH_RECT, sideways))  # a tilted line's steps joined
        joined = cv2.morphologyEx(joined, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, gaps))  # and a faint one's dashes
        runs = cv2.morphologyEx(joined, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, along))
        candidates[axis] = []
        if not runs.any():
            continue
        n, labels, stats, _ = _components(runs)
        shortest = min(LINE_EDGE_SPAN * length, BOX_SIDE * min(width, height))
        for k in range(1, n):
            x, y, w, h = (int(v) for v in stats[k, :4])
            if (w if axis == "h" else h) >= shortest:
                component = labels[y:y + h, x:x + w] == k
                pixels = component & (frame.mask[y:y + h, x:x + w] > 0)
                for start, stop in _bands(component, axis, shortest):
                    band = pixels[start:stop] if axis == "h" else pixels[:, start:stop]
                    if band.any():
                        candidates[axis].append(_Line.fit(band, axis, x + (0 if axis == "h" else start),
                                                          y + (start if axis == "h" else 0), frame))
    lines = {axis: [line for line in candidates[axis] if line.crosses(size)]
             for axis, size in (("h", width), ("v", height))}
    boxes = _boxes(candidates["h"], candidates["v"])
    box_sides: list[_Line] = []  # those removed as a box's sides
    if lines["h"] or lines["v"] or boxes:
        # a printed line is thin next to the pen's strokes and runs past the handwriting's ends: a
        # stroke that crosses a tightly cropped picture (a 1, a 7's bar, a 9's stem) is neither
        # (measured without the lines across the picture, but with the boxes' sides: a box's side
        # may be a stroke, as two ruled lines and a number's upright strokes make a "box")
        # (and without the ink where an even ruling's further lines run: one that runs off the
        # picture's side is too short to be found, and its piece would stretch the handwriting)
        on_lines = np.zeros(mask.shape, bool)
        rulings = {axis: _ruling(lines[axis]) for axis in frames}
        for axis, frame in frames.items():
            on_lines |= frame.undo(frame.paint(lines[axis]) | _ruled_rows(frame, *rulings[axis]))
        handwriting = _handwriting(mask.astype(bool) & ~on_lines)
        if handwriting is None:  # nothing to tell a line from a stroke by: keep the ink
            for axis, found in lines.items():
                for line in found:
                    judge(axis, line, False, "kept: no other ink to tell a printed line from a stroke by")
            return ink
        pen = _pen_width(handwriting)
        extent = {axis: _extent(handwriting, axis) for axis in ("h", "v")}
        # (where the handwriting reaches the picture's side as near as a line that runs off it, the
        # picture was cropped at the handwriting there, and running off that side is no evidence:
        # the stem of a tightly cropped 6 runs off its left side, as its loop nearly does)
        reach = {"h": extent["v"], "v": extent["h"]}
        printed = {"h": [], "v": []}
        within = []  # (axis, line, one of an even ruling) of those that end within the handwriting
        for axis, found in lines.items():
            for line in found:
                ruled = any(line is other for other in rulings[axis][0])
                if line.thick > LINE_PEN * pen and not (ruled and line.thick <= RULED_PEN * pen):
                    judge(axis, line, False, f"kept: {line.thick} px thick against the pen's {pen:.1f} px, "
                                             "too thick for a printed line: a stroke")
                elif line.runs_past(*extent[axis], pen, frames[axis].leaves(line, reach=reach[axis])):
                    printed[axis].append(line)
                    judge(axis, line, True, f"removed: it crosses the picture, {line.thick} px thick against the "
                                            f"pen's {pen:.1f} px, and runs past the handwriting"
                                            + (f"; one of {len(rulings[axis][0])} evenly spaced" if ruled else ""))
                elif (line.thick <= EDGE_TO_EDGE_PEN * pen
                      and line.edge_to_edge(width if axis == "h" else height,
                                            frames[axis].leaves(line, line.thick + 1))):
                    printed[axis].append(line)
                    judge(axis, line, True, f"removed: it runs from edge to edge of the picture, {line.thick} px thick "
                                            f"against the pen's {pen:.1f} px")
                else:
                    within.append((axis, line, ruled))
        for axis, line, ruled in within:
            # one of an even ruling whose other lines were printed, or are all as thin, no more than
            # EDGE_TO_EDGE_PEN of the pen (two lines are always evenly spaced: a stroke as thick as the
            # pen may pair with any line), that runs past the handwriting or off the picture at one
            # end: a faint ruled line whose other end faded into dashes too short to be found (it
            # joined a number's digits along their tops)
            ruling = rulings[axis][0]
            if (ruled and line.thick <= EDGE_TO_EDGE_PEN * pen
                    and (any(other is done for other in ruling for done in printed[axis])
                         or all(other.thick <= EDGE_TO_EDGE_PEN * pen for other in ruling))
                    and any(line.past_ends(*extent[axis], pen, frames[axis].leaves(line, reach=reach[axis])))):
                printed[axis].append(line)
                judge(axis, line, True, f"removed: one of {len(ruling)} evenly spaced lines, {line.thick} px thick "
                                        f"against the pen's {pen:.1f} px (under half), and runs past the handwriting "
                                        "at one end")
            else:
                judge(axis, line, False, "kept: it ends within the handwriting: a stroke")
        lines = printed
        for top, bottom, left, right in boxes:
            # four thin sides meeting at the corners, round the handwriting: evidence enough (two
            # ruled lines and two upright strokes of a number between them are not round all of it)
            # (the handwriting's extent takes in the sides' own ink: half the print's thickness, its
            # thinnest side's, out from where they run)
            (first_x, last_x), (first_y, last_y) = extent["h"], extent["v"]
            tol = (pen + min(side.thick for side in (top, bottom, left, right)) / 2
                   + BOX_TOLERANCE * min(right.position - left.position, bottom.position - top.position))
            sides = {"h": (top, bottom), "v": (left, right)}
            if (left.position - tol <= first_x and last_x <= right.position + tol
                    and top.position - tol <= first_y and last_y <= bottom.position + tol):
                goes = [(axis, line, "removed: a side of a printed box round the handwriting")
                        for axis, pair in sides.items() for line in pair]
                goes += [(axis, line, "removed: a printed box's divider, run into both its sides, evenly spaced "
                                      "between its sides (a comb field: a box a digit)")
                         for axis, line in _dividers((top, bottom, left, right), candidates, tol, frames)]
                for axis, line, why in goes:
                    if not any(line is other for other in lines[axis]):
                        lines[axis].append(line)
                        box_sides.append(line)
                        judge(axis, line, True, why)
            else:
                for axis, pair in sides.items():
                    for line in pair:
                        if not any(line is v.line for v in verdicts):
                            judge(axis, line, False, "kept: four lines meet as a box, but not round the handwriting")
    if not lines["h"] and not lines["v"]:
        return ink
    removed = np.zeros(mask.shape, bool)
    reach = int(np.ceil(max(STUB_PEN * pen, STUB_MIN))) + 1  # beside a line, as far as `_line_runs` looks
    for axis, found in lines.items():
        if not found:
            continue
        frame = frames[axis]
        goes = np.zeros(frame.mask.shape, bool)
        for line in found:  # one at a time: a stroke between two lines is ink beside each
            rows, cols = line.box
            if axis == "h":
                rows = slice(max(0, rows.start - reach), rows.stop + reach)
            else:
                cols = slice(max(0, cols.start - reach), cols.stop + reach)
            window = frame.mask[rows, cols]
            band = np.zeros(window.shape, bool)
            top, left = line.box[0].start - rows.start, line.box[1].start - cols.start
            band[top:top + line.pixels.shape[0], left:left + line.pixels.shape[1]] = line.pixels
            goes[rows, cols] |= _line_runs(window, band, line.thick, axis, pen)
        ruling, spacing = _ruling(found)
        if ruling:  # the pieces of its lines that run off the picture's side go too, found or not; and
            # where none of them is a box's side (a digit's own outline may make one), every piece along
            # them: a faint line's dash, left between two digits where it binarised too short to be found
            beyond = frame.mask.astype(bool) & _ruled_rows(frame, ruling, spacing)
            _, labels, stats, _ = _components(beyond.astype(np.uint8))
            thick = max(l.thick for l in ruling)
            # each piece's runs across it, as far as one that goes can reach (and a pixel along)
            far = int(np.ceil(max(STUB_PEN * (thick + pen), thick + STUB_MIN))) + 1
            boxed = any(line is side for line in ruling for side in box_sides)
            for k in np.unique(labels[frame.on_border(beyond)]) if boxed else range(1, len(stats)):
                x, y, w, h = (int(v) for v in stats[k, :4])
                window = ((slice(max(0, y - far), y + h + far), slice(max(0, x - 1), x + w + 1)) if axis == "h" else
                          (slice(max(0, y - 1), y + h + 1), slice(max(0, x - far), x + w + far)))
                goes[window] |= _line_runs(frame.mask[window], labels[window] == k, thick, axis, pen)
        # a stroke that lies along a fainter printed line is darker than the line there: it stays
        # (the line's core: its darkest pixel across it, each step along it; what stays is
        # STROKE_DARKER times the core's median, and LINE_NOISE robust spreads of it above)
        strength = ink if share is None else share
        cores = np.concatenate([core[core > 0] for core in
                                (np.where(line.pixels, frame.at(strength, line.box), 0).max(0 if axis == "h" else 1)
                                 for line in found)])
        level = float(np.median(cores))
        darker = max(STROKE_DARKER * level, level + LINE_NOISE * _robust_spread(cores))
        removed |= frame.undo(goes) & ((strength < darker) if darker < 255 else True)
    return np.where(removed, 0, ink).astype(np.uint8)


def _bands(runs: np.ndarray, axis: str, shortest: float) -> list[tuple[int, int]]:
    """Where in one component of long runs along `axis` (bool) its lines lie, as (start, stop) rows
    (columns, for "v") of it: the whole of it, or, where it holds two or more bands apart that each
    run `shortest` or longer and LINE_SPAN of the component's length, each at most BAND_THIN of the
    least distance between them thick, one each, from half-way to the band before to half-way to
    the next. Two ruled lines joined by a bold digit that touches both are one component of runs;
    fitted as one, they made a "line" between them, and neither was found."""
    counts = runs.sum(1 if axis == "h" else 0)
    whole = [(0, len(counts))]
    long = np.flatnonzero(counts >= max(shortest, LINE_SPAN * runs.shape[1 if axis == "h" else 0]))
    starts = np.r_[0, np.flatnonzero(np.diff(long) > 1) + 1]
    if len(starts) < 2:  # one band, or none
        return whole
    ends = np.r_[starts[1:], len(long)] - 1
    thickest = int((long[ends] - long[starts]).max()) + 1
    if thickest > BAND_THIN * float(np.diff((long[starts] + long[ends]) / 2).min()):
        return whole  # a thick band: a digit's bars in a tight crop (a 3's), not ruled lines
    cuts = [0, *((long[ends[i]] + long[starts[i + 1]] + 1) // 2 for i in range(len(starts) - 1)), len(counts)]
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def _line_runs(mask: np.ndarray, band: np.ndarray, thick: float, axis: str, pen: float) -> np.ndarray:
    """What goes of the ink (bool, same frame) where a line `thick` px thick along `axis` lies on
    `band`, looking at each run of ink across it (down a column for "h", along a row for "v"): a
    run nearer the line's thickness than the pen's, or no more than STUB_MIN px thicker than the
    line, goes whole (the line, its fringe, a sliver of a stroke grazing it); any other stays
    whole: a stroke crosses the line there (bridged), or lies along it (a 2's flat base on the
    line, the top of a 9's loop). So what is left along a line is half-way to a pen's width across
    or more, or nothing: no hair-like stubs. Only a sliver that touches a staying run along the
    line stays too: the edge of a stroke that crosses it at a slant."""
    m, b = (mask, band) if axis == "h" else (mask.T, band.T)
    ink = m.ravel(order="F") > 0  # column after column
    follows = np.r_[False, ink[:-1]]
    follows[::m.shape[0]] = False  # a column's first pixel starts a run
    runs = np.cumsum(ink & ~follows) * ink  # each run of ink its own number; 0 = paper
    length = np.bincount(runs, minlength=runs.max() + 1)
    lined = np.bincount(runs, weights=b.ravel(order="F") & ink, minlength=len(length))
    goes = (lined > 0) & (length < max(STUB_PEN * (thick + pen), thick + STUB_MIN))
    goes[0] = False
    out = goes[runs].reshape(m.shape, order="F")
    stays = (m > 0) & ~out
    edge = out & ~b & (cv2.dilate(stays.astype(np.uint8), np.ones((1, 3), np.uint8)) > 0)
    out &= ~edge
    return out if axis == "h" else out.T


def _tilt(mask: np.ndarray, labels: np.ndarray, stats: np.ndarray, axis: str) -> float:
    """The slope of the printed lines along an axis ("h": rows per column, "v": columns per row),
    within LINE_TILT degrees; 0 where no straight ink runs LINE_SPAN of the picture along it.

    Every long component's ink is projected across the axis at each slope, and the slope whose
    projection is most peaked wins (the sum of squared counts): a straight line piles up in one
    bin, a digit's curves spread out. Coarse steps first, then finer ones round the best (TILT_STEPS)."""
    height, width = mask.shape
    size, extent = (width, stats[:, cv2.CC_STAT_WIDTH]) if axis == "h" else (height, stats[:, cv2.CC_STAT_HEIGHT])
    # shorter, no bin below could hold LINE_SPAN of it; or a faint or tilted line that broke into
    # pieces, or ran into a stroke: its thin pieces (PIECE_THICK px on average across them, PIECE_LONG
    # times as long) over LINE_RUN of the picture, whose best bin must then hold LINE_EDGE_SPAN of it
    thick = stats[:, cv2.CC_STAT_AREA] / np.maximum(extent, 1)
    pieces = (extent >= LINE_RUN * size) & (thick <= PIECE_THICK) & (extent >= PIECE_LONG * thick)
    long = (extent >= LINE_SPAN * size) | pieces
    long[0] = False
    span = LINE_SPAN if not pieces[1:].any() else LINE_EDGE_SPAN
    if not long.any():
        return 0.0
    ys, xs = np.nonzero(long[labels])
    along, across = (xs, ys) if axis == "h" else (ys, xs)
    step = max(1, len(along) // TILT_POINTS)
    along, across = along[::step].astype(np.float32), across[::step].astype(np.float32)

    def projections(degrees: np.ndarray) -> np.ndarray:  # (angles, bins) pixel counts
        slopes = np.tan(np.radians(degrees))
        bins = np.round(across[None, :] - slopes[:, None] * along[None, :]).astype(np.int64)
        bins -= bins.min(1, keepdims=True)
        span = int(bins.max()) + 1
        counts = np.bincount((bins + np.arange(len(slopes))[:, None] * span).ravel(), minlength=len(slopes) * span)
        return counts.reshape(len(slopes), span).astype(np.float64)

    best = 0.0
    for spacing, steps in TILT_STEPS:
        degrees = np.clip(best + spacing * np.arange(-steps, steps + 1), -LINE_TILT, LINE_TILT)
        counts = projections(degrees)
        k = int(np.argmax((counts ** 2).sum(1)))
        best = float(degrees[k])
    # a line across the picture piles a pixel per step along it into one bin; and the slope must be
    # clearly straighter than none (a digit's strokes, or lines across the other axis, are neither)
    if (counts[k].max() * step < span * size
            or (counts[k] ** 2).sum() < TILT_GAIN * (projections(np.zeros(1)) ** 2).sum()):
        return 0.0
    return float(np.tan(np.radians(best)))


@dataclass(frozen=True)
class _Shear:
    """A bool/uint8 mask sheared so that lines of one axis with a given slope run straight along
    it: for "h", each column shifted down by a whole number of rows (for "v", each row right by
    columns). Whole-pixel shifts: `undo` gives back exactly the pixels of the original frame."""

    mask: np.ndarray  # the sheared mask, uint8
    axis: str
    shifts: np.ndarray  # per column ("h") or row ("v"), >= 0
    size: int  # the original frame's size across the axis (rows for "h")
    slope: float = 0.0  # of the lines it straightens, across per along

    @classmethod
    def along(cls, mask: np.ndarray, axis: str, slope: float) -> _Shear:
        m = mask if axis == "h" else mask.T
        shifts = -np.round(np.arange(m.shape[1]) * slope).astype(np.int64)
        shifts -= shifts.min()
        if not shifts.any():
            return cls(mask, axis, shifts, m.shape[0], slope)
        out = np.zeros((m.shape[0] + int(shifts.max()), m.shape[1]), m.dtype)
        out[np.arange(m.shape[0])[:, None] + shifts[None, :], np.arange(m.shape[1])[None, :]] = m
        return cls(out if axis == "h" else out.T, axis, shifts, m.shape[0], slope)

    def undo(self, sheared: np.ndarray) -> np.ndarray:
        """An array of the sheared frame's shape, back in the original frame."""
        if not self.shifts.any():
            return sheared
        m = sheared if self.axis == "h" else sheared.T
        out = m[np.arange(self.size)[:, None] + self.shifts[None, :], np.arange(m.shape[1])[None, :]]
        return out if self.axis == "h" else out.T

    def at(self, image: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
        """The values of `image` (in the original frame) over `box` of this frame; 0 off the picture."""
        rows, cols = np.arange(box[0].start, box[0].stop)[:, None], np.arange(box[1].start, box[1].stop)[None, :]
        if self.axis == "h":
            rows = rows - self.shifts[cols]
        else:
            cols = cols - self.shifts[rows]
        inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
        return np.where(inside, image[np.clip(rows, 0, image.shape[0] - 1), np.clip(cols, 0, image.shape[1] - 1)], 0)

    def on_border(self, mask: np.ndarray) -> np.ndarray:
        """The pixels of `mask` (bool, this frame) that lie on the original picture's edge."""
        rows, cols = np.nonzero(mask)
        along, across = (cols, rows - self.shifts[cols]) if self.axis == "h" else (rows, cols - self.shifts[rows])
        edge = (along == 0) | (along == len(self.shifts) - 1) | (across == 0) | (across == self.size - 1)
        out = np.zeros(mask.shape, bool)
        out[rows[edge], cols[edge]] = True
        return out

    def leaves(self, line: _Line, slack: float = 0.0, reach: tuple[float, float] | None = None) -> tuple[bool, bool]:
        """Whether the line (found in this frame) runs off the picture's side across its axis (top
        or bottom, for "h") at its start and at its end: ends within its thickness (and `slack` px) of
        it. Given `reach` (where the handwriting starts and ends across the axis, `_extent`), a side the
        handwriting comes as near to does not count."""
        shifts = self.shifts if self.shifts.any() else np.zeros(max(line.end, 1), np.int64)
        across = (line.ends[0] - shifts[line.start], line.ends[1] - shifts[line.end - 1])
        near = line.thick + slack
        first, last = (np.inf, -np.inf) if reach is None else reach
        return tuple(bool((a <= near < first) or (a >= self.size - 1 - near >= last)) for a in across)

    def paint(self, lines: list[_Line]) -> np.ndarray:
        """The lines' pixels (bool, in the sheared frame)."""
        painted = np.zeros(self.mask.shape, bool)
        for line in lines:
            painted[line.box] |= line.pixels
        return painted


@dataclass(frozen=True)
class LineVerdict:
    """What line removal decided of one long straight run of ink, and why (in the picture's pixels
    at working size)."""

    axis: str  # "horizontal" or "vertical"
    position: float  # its row (horizontal) or column (vertical), where it crosses the picture's middle
    tilt: float  # degrees off horizontal (vertical)
    thick: int  # px
    length: int  # px along it
    removed: bool
    why: str
    line: _Line = field(repr=False, compare=False)
    pixels: np.ndarray = field(repr=False, compare=False)  # bool (H, W): the ink on the line, in the picture's frame

    @classmethod
    def of(cls, line: _Line, axis: str, frame: _Shear, removed: bool, why: str) -> LineVerdict:
        return cls("horizontal" if axis == "h" else "vertical", round(line.at, 1),
                   round(float(np.degrees(np.arctan(frame.slope))), 1), line.thick, line.end - line.start, removed, why, line,
                   frame.undo(frame.paint([line])))

    def __str__(self) -> str:
        at = "row" if self.axis == "horizontal" else "column"
        return (f"{self.axis} line at {at} {self.position:g}, tilted {self.tilt:g} degrees, {self.thick} px thick, "
                f"{self.length} px long: {self.why}")


@dataclass(frozen=True)
class _Line:
    """A straight printed-line candidate, in image coordinates: along its axis from `start` to `end`,
    at `position` across it (at its middle), `thick` px thick; `pixels` (bool, over `box`) the ink
    on the line."""

    start: int
    end: int
    position: float
    thick: int
    pixels: np.ndarray
    box: tuple[slice, slice]
    ends: tuple[float, float]  # where it is across its axis at `start` and at `end` - 1
    slope: float = 0.0  # of its fit, across per along, in the frame it was found in (where printed lines run level)
    thinnest: int = 0  # px: where it is thinnest (BOX_SIDE_PERCENTILE of its ink across it), as a box's side is
                       # where no stroke touches it
    origin: float = 0.0  # px: how far its frame shifted it across its axis, at its middle
    turn: float = 0.0  # its frame's slope: the picture's lines', straightened

    @property
    def at(self) -> float:
        """Where it lies across its axis at its middle, in the picture's pixels (its row, for "h")."""
        return self.position - self.origin

    def across(self, along: float) -> float:
        """Where it lies across its axis at `along` (a column, for "h"), in the picture's pixels: a
        line found in the other axis's frame is compared with it there (a box's divider with its sides)."""
        return self.at + (self.slope + self.turn) * (along - (self.start + self.end) / 2)

    def past_ends(self, first: float, last: float, pen: float, leaves: tuple[bool, bool] = (False, False)) -> tuple[bool, bool]:
        """Whether it runs past the start and past the end of the handwriting's extent along it
        (first to last) by a pen's width or more, or leaves the picture there (`leaves`: at start, at
        end; a tilted line runs off the top or bottom)."""
        return self.start <= first - pen or leaves[0], self.end >= last + pen or leaves[1]

    def runs_past(self, first: float, last: float, pen: float, leaves: tuple[bool, bool] = (False, False)) -> bool:
        """Whether it runs past both ends of the handwriting (`past_ends`): a ruled line runs across
        the page, a stroke ends where the digit does."""
        return all(self.past_ends(first, last, pen, leaves))

    def edge_to_edge(self, size: int, leaves: tuple[bool, bool] = (False, False)) -> bool:
        """Whether it runs the whole way across the picture (of `size` along it), from edge to edge:
        off its sides, or (`leaves`, tilted) off its top or bottom."""
        return ((self.start <= LINE_EDGE * size or leaves[0])
                and (self.end >= (1 - LINE_EDGE) * size or leaves[1]))

    def crosses(self, size: int) -> bool:
        """Whether it is a line across the page (of `size` along it): LINE_SPAN of it, or, where it
        runs off the picture's edge, LINE_EDGE_SPAN of it and thin (a faint line partly lost)."""
        length = self.end - self.start
        off_edge = self.start <= LINE_EDGE * size or self.end >= (1 - LINE_EDGE) * size
        return length >= LINE_SPAN * size or (off_edge and length >= LINE_EDGE_SPAN * size and self.thick <= LINE_THIN * length)

    @classmethod
    def fit(cls, pixels: np.ndarray, axis: str, x: int, y: int, frame: _Shear) -> _Line:
        """The line through a run component's ink (bool (h, w) at x, y, in `frame`), fitted to the
        middle of the ink in each column (row, for "v") where the line is alone, then again to every
        column whose middle lies on that line."""
        ink = pixels if axis == "h" else pixels.T
        count = ink.sum(0)
        cols = np.flatnonzero(count)
        middle = np.argmax(np.cumsum(ink, 0) >= (count + 1) / 2, axis=0)[cols]  # the median row per column
        thick = int(np.percentile(count[cols], 20))  # not the median: strokes may run along it for a while
        # fitted where the column holds the line alone (no stroke crossing or running along it)
        alone = count[cols] <= thick + 2
        fit = np.polyfit(cols[alone], middle[alone], 1) if alone.sum() > 1 else np.array([0.0, float(np.median(middle))])
        close = np.abs(np.polyval(fit, cols) - middle) <= thick
        if 1 < close.sum() < len(cols):
            fit = np.polyfit(cols[close], middle[close], 1)
        centre = np.polyval(fit, np.arange(ink.shape[1]))
        on_line = ink & (np.abs(np.arange(ink.shape[0])[:, None] - centre[None, :]) <= thick / 2 + 1)
        along, across = (x, y) if axis == "h" else (y, x)
        start, end = along + int(cols[0]), along + int(cols[-1]) + 1
        return cls(start, end, across + float(np.polyval(fit, cols.mean())), thick,
                   on_line if axis == "h" else on_line.T, (slice(y, y + pixels.shape[0]), slice(x, x + pixels.shape[1])),
                   (across + float(np.polyval(fit, cols[0])), across + float(np.polyval(fit, cols[-1]))),
                   float(fit[0]), int(np.percentile(count[cols], BOX_SIDE_PERCENTILE)),
                   float(frame.shifts[(start + end) // 2]) if frame.shifts.any() else 0.0, frame.slope)


def _ruling(lines: list[_Line]) -> tuple[list[_Line], float]:
    """The ruling among `lines` (found across the picture along one axis) and its spacing: the lines
    within RULED_THICK px of their median thickness (a piece of one that leaves the picture may
    measure thinner), two or more, evenly spaced: each a whole number of steps from the others
    (within RULED_EVEN of a step: a line may be missed between). Where some of them are not (a
    stray run taken for a line between two ruled ones), the most that are, if three or more, the
    widest step on a tie. ([], 0.0) if there is none."""
    if len(lines) < 2:
        return [], 0.0
    middle = float(np.median([l.thick for l in lines]))
    alike = sorted((l for l in lines if abs(l.thick - middle) <= RULED_THICK), key=lambda l: l.position)
    if len(alike) < 2:
        return [], 0.0
    positions = np.array([l.position for l in alike])
    least = 2 * max(l.thick for l in alike) + 2
    best: list[int] = []
    # each step between neighbours, or between lines two apart (one in between that is not the ruling's)
    for step in {float(positions[j] - positions[i]) for i in range(len(alike)) for j in range(i + 1, min(i + 3, len(alike)))}:
        if step < least:
            continue
        for anchor in positions:
            steps = (positions - anchor) / step
            on = np.flatnonzero(np.abs(steps - np.round(steps)) <= RULED_EVEN)
            on = on[np.unique(np.round(steps[on]), return_index=True)[1]]  # one line a step
            if len(on) > len(best) or (len(on) == len(best) and len(on) > 1 and step > _spacing(positions[best])):
                best = sorted(on.tolist())
    if len(best) < (2 if len(best) == len(alike) else 3):  # some left out: three or more make a ruling
        return [], 0.0
    return [alike[i] for i in best], _spacing(positions[best])


def _spacing(positions: np.ndarray) -> float:
    return float(np.diff(positions).min()) if len(positions) > 1 else 0.0


def _ruled_rows(frame: _Shear, lines: list[_Line], spacing: float) -> np.ndarray:
    """Where a ruling's lines run, the found ones from edge to edge and its further ones past the
    first and last found, to the picture's edges (bool, in the sheared frame, where they run level):
    as thick as the thickest found, and a pixel either side."""
    rows = np.arange(frame.mask.shape[0 if frame.axis == "h" else 1], dtype=np.float32)
    band = np.zeros(len(rows), bool)
    if lines:
        positions = sorted(l.position for l in lines)
        half = max(l.thick for l in lines) / 2 + 1
        for position in [*np.arange(positions[0] - spacing, -spacing, -spacing), *positions,
                         *np.arange(positions[-1] + spacing, len(rows) + spacing, spacing)]:
            band |= np.abs(rows - position) <= half
    return np.broadcast_to(band[:, None] if frame.axis == "h" else band[None, :], frame.mask.shape)


def _handwriting(ink: np.ndarray) -> np.ndarray | None:
    """The bool mask's strokes, specks and a line's leftover edges (parts under MIN_PART of the
    biggest) left out; None if what is left is too little to measure (under MIN_INK_PIXELS)."""
    n, labels, stats, _ = _components(ink.astype(np.uint8))
    areas = stats[:, cv2.CC_STAT_AREA]
    areas[0] = 0
    big = areas >= MIN_PART * areas.max()
    big[0] = False
    if areas[big].sum() < MIN_INK_PIXELS:
        return None
    return big[labels]


def _pen_width(strokes: np.ndarray) -> float:
    """The typical width (px) of the strokes in a bool mask: twice the median distance to the paper
    along their middles (the distance transform's ridges)."""
    distance = cv2.distanceTransform(strokes.astype(np.uint8), cv2.DIST_L2, 3)
    ridge = (distance > 0) & (distance >= cv2.dilate(distance, np.ones((3, 3), np.uint8)))
    return 2.0 * float(np.median(distance[ridge]))


def _extent(strokes: np.ndarray, axis: str) -> tuple[float, float]:
    """Where the strokes (bool mask) start and end along the axis ("h": columns, "v": rows), leaving
    out the outermost LINE_OUTLIER of their pixels on each side (a speck far out)."""
    cumulative = np.cumsum(strokes.sum(0 if axis == "h" else 1))
    return (float(np.searchsorted(cumulative, LINE_OUTLIER * cumulative[-1])),
            float(np.searchsorted(cumulative, (1 - LINE_OUTLIER) * cumulative[-1])) + 1)


def _boxes(horizontal: list[_Line], vertical: list[_Line]) -> list[tuple[_Line, _Line, _Line, _Line]]:
    """Printed boxes: (top, bottom, left, right) sides, each long (BOX_SIDE of the image's shorter
    side or more), thin (BOX_THIN of the box's size or less) and level (BOX_LEVEL), meeting at four
    corners.

    Each pair of vertical sides first narrows the horizontal ones to those that could close a box
    with it (spanning it, lying along it, within the widest tolerance it allows): a noisy page has
    hundreds of candidates, and every four of them took seconds."""
    horizontal = sorted(horizontal, key=lambda line: line.position)
    vertical = sorted(vertical, key=lambda line: line.position)
    if len(horizontal) < 2 or len(vertical) < 2:
        return []
    h_start, h_end, h_at = (np.array([getattr(h, name) for h in horizontal], np.float64) for name in ("start", "end", "position"))
    boxes = []
    for left, right in itertools.combinations(vertical, 2):
        box_w = right.position - left.position
        if box_w <= 0:
            continue
        widest = BOX_TOLERANCE * box_w  # tol below is never more
        could = np.flatnonzero((h_start <= left.position + widest) & (h_end >= right.position - widest)
                               & (h_at >= max(left.start, right.start) - widest) & (h_at <= min(left.end, right.end) + widest))
        for a, b in itertools.combinations(could, 2):
            top, bottom = horizontal[a], horizontal[b]
            box_h = bottom.position - top.position
            if box_h <= 0:
                continue
            tol = BOX_TOLERANCE * min(box_w, box_h)
            # thin: BOX_THIN of the box's size at most; or one side, along which a stroke lies
            # nearly all the way (a 0's base), at most BOX_ALIKE times as thick as the other three
            sides = (top, bottom, left, right)
            thin = [side.thinnest <= BOX_THIN * size for side, size in zip(sides, (box_h, box_h, box_w, box_w))]
            if thin.count(False) == 1:
                odd = thin.index(False)
                thin[odd] = sides[odd].thinnest <= BOX_ALIKE * max(side.thinnest for k, side in enumerate(sides) if k != odd)
            # and printed alike: a margin's hairline, two ruled lines and a 9's stem are no box
            alike = max(side.thinnest for side in sides) <= BOX_ALIKE * min(side.thinnest for side in sides) + BOX_ALIKE_PX
            if (all(thin) and alike and all(h.start <= left.position + tol and h.end >= right.position - tol for h in (top, bottom))
                    and all(v.start <= top.position + tol and v.end >= bottom.position - tol for v in (left, right))):
                # printed sides run level in the frame where the page's lines do, give or take a
                # perspective: a stroke (a 7's stem between two ruled lines and the margin) slants
                if all(abs(side.slope) <= BOX_LEVEL for side in (top, bottom, left, right)):
                    boxes.append((top, bottom, left, right))
    return boxes


def _dividers(box: tuple[_Line, _Line, _Line, _Line], candidates: dict[str, list[_Line]], tol: float,
              frames: dict[str, _Shear]) -> list[tuple[str, _Line]]:
    """The dividers of a printed box (its sides top, bottom, left, right; `tol` px at the corners):
    a form's comb field, one box a digit. (axis, line) of the candidates across it that meet both
    sides (run into them), as thin as the thinner of the two sides they lie between (within
    RULED_THICK px, where thinnest: a stroke may touch either), level (BOX_LEVEL), and an even
    ruling (`_ruling`) with those two sides (one may be missing, or a side thickened by a stroke
    along it left out), with other ink in the box beside each, DIVIDER_CLEAR of a step or more away
    from it: on both sides, where it is the only one. A 1 that touches both sides of its box stands
    apart from where a divider would be, or is thicker than the print, or slants, or has no other
    ink in its box (a step half a box's: the ruling takes the 1 in): it stays."""
    top, bottom, left, right = box
    found = []
    for axis, (first, last), (low, high) in (("v", (left, right), (top, bottom)), ("h", (top, bottom), (left, right))):
        inside = [line for line in candidates[axis]
                  if first.position + tol < line.position < last.position - tol
                  and line.start <= low.across(line.at) + low.thick + 1 and line.end >= high.across(line.at) - high.thick - 1
                  and abs(line.thinnest - min(first.thinnest, last.thinnest)) <= RULED_THICK and abs(line.slope) <= BOX_LEVEL]
        ruling, step = _ruling([first, *inside, last]) if inside else ([], 0.0)
        dividers = [line for line in inside if any(line is other for other in ruling)]
        if dividers:
            frame, across = frames[axis], "h" if axis == "v" else "v"
            whole = (slice(0, frame.mask.shape[0]), slice(0, frame.mask.shape[1]))
            sides = frame.at(frames[across].undo(frames[across].paint([low, high])), whole) > 0
            digits = (frame.mask > 0) & ~sides & ~frame.paint(inside)  # the ink but the box's print, in this frame
            rows = slice(int(low.at + tol), int(high.at - tol))
            digits = digits[rows] if axis == "v" else digits[:, rows].T  # along the dividers, within the box
            clear = DIVIDER_CLEAR * step
            beside = [[digits[:, max(0, int(a)):max(0, int(b))].any()
                       for a, b in ((line.position - step + tol, line.position - clear),
                                    (line.position + clear, line.position + step - tol))] for line in dividers]
            dividers = [line for line, (before, after) in zip(dividers, beside)
                        if (before and after) or (len(dividers) > 1 and (before or after))]
        found += [(axis, line) for line in dividers]
    return found


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's connectedComponentsWithStats (8-connected): (n, labels, stats, centroids), stats
    rows [left, top, width, height, area] for labels 0..n-1 (0: the background, whose row is not
    filled in). The labelling is OpenCV's; the stats are summed here over the ink's pixels only,
    which is 10-20x faster on a page that is mostly paper (OpenCV 5 visits every pixel for them)."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    ys, xs = np.nonzero(mask)
    found = labels[ys, xs]
    order = np.argsort(found, kind="stable")
    found, ys, xs = found[order], ys[order], xs[order]
    stats = np.zeros((n, 5), np.int64)
    centroids = np.zeros((n, 2))
    if len(found):
        starts = np.flatnonzero(np.r_[True, found[1:] != found[:-1]])
        ids = found[starts]
        area = np.diff(np.r_[starts, len(found)])
        left, top = np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts)
        stats[ids] = np.stack([left, top, np.maximum.reduceat(xs, starts) - left + 1,
                               np.maximum.reduceat(ys, starts) - top + 1, area], 1)
        centroids[ids] = np.stack([np.add.reduceat(xs, starts), np.add.reduceat(ys, starts)], 1) / area[:, None]
    return n, labels, stats, centroids


def _parts(ink: np.ndarray, multi: bool = False) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Components of the ink (labels (H, W) int32, stats as OpenCV gives them), the labels of those
    that make up the digit, and of those among them that may be stray marks instead.

    Specks are left out: components under MIN_PART of the biggest. For one digit, the main stroke
    is the biggest component, counting less the further it lies from the picture's centre, and the
    others are kept only near it (within NEAR of its size): a stray mark across the page is not part
    of the digit. Those kept further than DOUBT_GAP of its size from its box, with under DOUBT_AREA
    of its ink, are in doubt (at most DOUBT_MOST, the furthest). For a number (`multi`), every digit
    is a main stroke; `_group_digits` sorts them, and none is in doubt.
    """
    n, labels, stats, centroids = _components((ink > 0).astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    if n <= 1 or areas.max() < MIN_INK_PIXELS:
        return labels, stats, [], []
    big = areas >= max(MIN_PART * areas.max(), 4.0)
    left, top, w, h = (stats[1:, i] for i in range(4))

    def gap(k: int | np.ndarray) -> np.ndarray:  # each component's distance from k's box, 0 if they overlap
        k = np.atleast_1d(k)[:, None]
        return np.maximum.reduce([left - (left[k] + w[k]), left[k] - (left + w),
                                  top - (top[k] + h[k]), top[k] - (top + h), np.zeros((len(k), len(areas)))])
    if multi:
        # a digit's own small piece (a 7's bar written apart) is judged against the digits near it,
        # not against the biggest digit of the number: a bold 8 beside it makes it a speck
        digits = np.flatnonzero(big)
        near = gap(digits) <= NEAR * np.maximum(w[digits], h[digits])[:, None]  # (digits, components)
        nearest = np.where(near, areas[digits][:, None], 0.0).max(0)
        big |= (areas >= np.maximum(MIN_PART * nearest, 4.0)) & (nearest > 0)
        return labels, stats, [k + 1 for k in np.flatnonzero(big)], []
    height, width = ink.shape
    offset = np.hypot(centroids[1:, 0] / width - 0.5, centroids[1:, 1] / height - 0.5)  # 0 to 0.71
    main = int(np.argmax(areas * (1.0 - offset)))
    gap = gap(main)[0]
    size = max(w[main], h[main])
    keep = big & (gap <= NEAR * size)
    doubt = np.flatnonzero(keep & (gap > DOUBT_GAP * size) & (areas < DOUBT_AREA * areas[main]))
    doubt = doubt[np.argsort(-gap[doubt], kind="stable")][:DOUBT_MOST]
    return labels, stats, [k + 1 for k in np.flatnonzero(keep)], sorted(int(k) + 1 for k in doubt)


def _only(ink: np.ndarray, labels: np.ndarray, stats: np.ndarray, keep: list[int]) -> np.ndarray:
    """The ink of components `keep`, cropped to their bounding box, float32 in [0, 1]."""
    x0, y0 = stats[keep, 0].min(), stats[keep, 1].min()
    x1, y1 = (stats[keep, 0] + stats[keep, 2]).max(), (stats[keep, 1] + stats[keep, 3]).max()
    chosen = np.zeros(len(stats), bool)
    chosen[keep] = True
    crop = labels[y0:y1, x0:x1]
    return np.where(chosen[crop], ink[y0:y1, x0:x1], 0).astype(np.float32) / 255.0


def preprocess(image: Image.Image, multi: bool = False, keep_steps: bool = False) -> Preprocessed:
    """The one path from a decoded image to what the model reads (`to_mnist`, `split_digits`, the
    web page and the ONNX-only path all come here): grey at working size, the page's light divided
    out, printed lines removed, the digit's strokes chosen, MNIST's geometry. With `keep_steps`,
    the result keeps each step's image."""
    maps = ink_maps(_off_the_desk(_grey8(image)))
    if not maps:
        return Preprocessed([])
    done = _read(*maps[0], multi, keep_steps)
    if len(maps) == 1 or multi or not done.digits:
        return done
    # the page read other ways too (a dark shadow, or bold strokes the closing hollowed; a lamp's spot,
    # or light ink): the first map's readings, then one of each other map, for the model to choose
    # from (`pick`): its digit with every stroke near it kept (more readings of it would be more
    # chances for a sure wrong one: a felt-tip 8's hollowed outline read as a 3 at 0.994 without
    # some of its parts)
    others = [other for other in (_read(*m, multi, keep_steps) for m in maps[1:]) if other.digits]
    if not others:
        return done
    choices = [done.choices if done.choices is not None else np.stack(done.digits)] + [o.digits[0][None] for o in others]
    masks = (done.choice_masks or (done.chosen,)) + tuple(o.chosen for o in others) if keep_steps else ()
    return replace(done, choices=np.concatenate(choices), choice_masks=masks, others=tuple(others))


def _read(ink: np.ndarray, share: np.ndarray, multi: bool, keep_steps: bool) -> Preprocessed:
    """`preprocess` from one ink map on: printed lines removed, the digit's strokes chosen, MNIST's
    geometry."""
    verdicts: list[LineVerdict] = []
    strokes = remove_lines(ink, verdicts, share)
    labels, stats, keep, doubt = _parts(strokes, multi)
    groups = (_group_digits(stats, keep) if multi else [keep]) if keep else []
    digits = [center_digit(_only(strokes, labels, stats, group)) for group in groups]
    # without every stroke in doubt, and (where there are several) without each one alone
    others = [[k for k in keep if k not in doubt]] + ([[k for k in keep if k != d] for d in doubt] if len(doubt) > 1 else [])
    choices = np.stack(digits + [center_digit(_only(strokes, labels, stats, kept)) for kept in others]) if doubt else None
    if not keep_steps:
        return Preprocessed(digits, choices=choices)

    def chosen(kept: list[int]) -> np.ndarray:
        mask = np.zeros(len(stats), bool)
        mask[kept] = True
        return np.where(mask[labels], strokes, 0).astype(np.uint8)

    everything = chosen([k for group in groups for k in group])  # for one digit in doubt, `keep`
    masks = (everything, *(chosen(kept) for kept in others)) if doubt else ()
    return Preprocessed(digits, ink, strokes, everything, tuple(verdicts), choices, masks)


def _off_the_desk(grey: np.ndarray) -> np.ndarray:
    """A sheet of paper photographed on a darker desk: the sheet alone, the desk round it (and the
    sheet's shaded rim) set to the sheet's paper level and cropped away; else `grey` as it is.

    Else the sheet, a light shape with dark edges round it, reads as light ink on a dark ground, as
    an MNIST image does (a 7 on a sheet covering half the picture read as 0). The sheet is the
    biggest light region by Otsu's level, SHEET_MIN to SHEET_MAX of the picture, filling SHEET_FILL
    of its rotated bounding rectangle (a sheet is a quadrilateral, a digit's light stroke is not),
    with dark ink inside it, round it a desk along SHEET_BORDER of the picture's border or more (in
    a tight crop, what lies outside the paper is the ink that runs off it), no lighter than
    SHEET_DARKER of the paper and with nothing on it that could be ink (a shadow's dark side is
    paper: a digit's stroke in it would show).
    """
    small, _ = _shrunk(grey, EVEN_SAMPLE)
    level, light = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(light, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return grey
    sheet = max(contours, key=cv2.contourArea)
    _, (rect_w, rect_h), _ = cv2.minAreaRect(sheet)
    inside = np.zeros_like(small)
    cv2.drawContours(inside, [sheet], -1, 255, cv2.FILLED)
    area = cv2.countNonZero(inside)  # the pixels it covers (a contour along the picture's edge encloses fewer)
    if (not SHEET_MIN * small.size <= area <= SHEET_MAX * small.size or cv2.contourArea(sheet) < SHEET_FILL * rect_w * rect_h
            or (_border(inside) == 0).mean() < SHEET_BORDER):
        return grey
    rim = max(1, round(SHEET_RIM * min(rect_w, rect_h)))
    inside = cv2.erode(inside, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8)) > 0
    if not (inside & (light > 0)).any() or inside.all():  # nothing of it left inside its rim (a few pixels)
        return grey
    paper = float(np.median(small[inside & (light > 0)]))
    desk = small[~inside]
    desk_level = float(np.median(desk))
    ink_inside = bool((inside & (light == 0)).any())
    marks = (desk < desk_level - max(NOISE_FLOOR * _robust_spread(desk.astype(np.float32)), 0.25 * (paper - desk_level))).mean()
    if not ink_inside or desk_level > SHEET_DARKER * paper or marks > EVEN_STRAY:
        return grey
    mask = cv2.resize(inside.astype(np.uint8), grey.shape[::-1], interpolation=cv2.INTER_NEAREST)
    x, y, w, h = cv2.boundingRect(mask)
    crop = (slice(y, y + h), slice(x, x + w))
    return np.where(mask[crop] > 0, grey[crop], np.uint8(round(paper)))


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


def to_mnist(image: Image.Image, classify: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray | None:
    """(28, 28) uint8, white on black, preprocessed like MNIST; None when there is no digit. With
    `classify` (uint8 (N, 28, 28) -> probabilities (N, 10)), where strokes beside the digit may be
    stray marks, the reading the model is surest of (`pick`); without, every stroke near it is kept."""
    done = preprocess(image)
    if not done.digits:
        return None
    if classify is None or done.choices is None:
        return done.digits[0]
    return done.choices[pick(classify(done.choices))]


def pick(probs: np.ndarray) -> int:
    """Which of a digit's readings (`Preprocessed.choices`, their probabilities (K, 10)) to take: the
    one whose most probable class is surest, the first (every stroke kept) on a tie. On 150 digits
    a strength, stray_marks (pen marks 0.08-0.6 of the digit's height away) read 91 / 86 / 82% keeping
    every stroke, 99-100% so; no other condition of tests/image_variants.py read fewer (docs/photos.md).
    Taking another reading only where it is surer by a margin did worse: by 0.1, 97 / 95 / 97%."""
    return int(np.argmax(np.asarray(probs).max(1)))


def split_digits(image: Image.Image) -> list[np.ndarray]:
    """Each digit of a handwritten number, left to right, as (28, 28) uint8 MNIST images."""
    return preprocess(image, multi=True).digits


def _group_digits(stats: np.ndarray, keep: list[int]) -> list[list[int]]:
    """The kept components grouped into digits, left to right.

    Components whose column spans overlap by half the narrower one are one digit (a 4 written in
    two strokes), as are two that overlap at all where one lies just above the other (a slanted 1
    in two pieces), and a group much shorter than the others (a 5's flag, a broken stroke) joins its
    neighbour if it (almost) touches it. Touching digits are read as one.
    """
    groups = []  # [first col, last col, first row, last row, [labels]], left to right
    for k in keep:
        x, y, w, h = (int(v) for v in stats[k, :4])
        groups.append([x, x + w - 1, y, y + h - 1, [k]])
    groups.sort()
    i = 1
    while i < len(groups):
        left, right = groups[i - 1], groups[i]
        overlap = min(left[1], right[1]) - max(left[0], right[0]) + 1
        # one wholly above the other, close: a slanted 1 in two pieces
        apart = _rows_apart(left, right)
        taller = max(left[3] - left[2], right[3] - right[2])
        stacked = 0 <= apart <= STACKED_GAP * taller
        # (columns overlapping, but not far above or below: a piece of a ruled line left over the
        # number's last digit is not part of it)
        if ((overlap >= 0.5 * (min(left[1] - left[0], right[1] - right[0]) + 1) and apart <= STACKED_FAR * taller)
                or (stacked and overlap > 0)):
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
            if gaps[j] <= FRAGMENT_GAP * tall and _rows_apart(groups[i], groups[j]) <= STACKED_FAR * tall:
                a, b = sorted((int(i), j))
                groups[a:b + 1] = [_merge(groups[a], groups[b])]
                merged = True
                break
    # what is left that is tiny next to the digits is a speck between them, not a digit; but one about
    # as tall as they are is a thin 1 beside bold digits (one far taller, a margin's line)
    areas = stats[:, cv2.CC_STAT_AREA]
    group_areas = np.array([areas[g[4]].sum() for g in groups])
    heights = np.array([g[3] - g[2] + 1 for g in groups])
    digits = group_areas >= MIN_DIGIT_AREA * group_areas.max()
    digits |= ((heights >= THIN_ONE_SHORTEST * np.median(heights[digits]))
               & (heights <= THIN_ONE_TALLEST * heights[digits].max()))
    return [g[4] for g, digit in zip(groups, digits) if digit]


def _rows_apart(a: list, b: list) -> int:
    """The rows of paper between two groups (`_group_digits`' [first col, last col, first row, last
    row, labels]) one above the other; negative where their rows overlap."""
    return max(a[2], b[2]) - min(a[3], b[3]) - 1


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
    steps: dict[str, np.ndarray] = field(default_factory=dict)  # Preprocessed.step_images(), if kept
    lines: tuple[str, ...] = ()  # ... and what line removal decided, and why (Preprocessed.lines)

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
                multi: bool = False, keep_steps: bool = False) -> list[Reading]:
    """Read every file; `classify` maps uint8 (N, 28, 28) to probabilities (N, 10) (torch or ONNX).

    A file that cannot be read gets a Reading with `error` set; the others are still read.
    With `multi`, each image is a number and every digit in it is read. With `keep_steps`, each
    Reading keeps every preprocessing step's image (for `save_preprocessed`). A digit beside strokes
    that may be stray marks is read with and without them, and the surest reading kept (`pick`).
    """
    found: list[tuple[str, Preprocessed | None, str | None]] = []
    for path in image_files(paths):
        try:
            image = open_image(path, str(path))
        except InputError as e:
            found.append((str(path), None, str(e)))
            continue
        found.append((str(path), preprocess(image, multi, keep_steps), None))
    # every reading of every picture in one batch: the digits, or where strokes are in doubt, each choice
    stack = [d for _, done, _ in found if done for d in (done.choices if done.choices is not None else done.digits)]
    all_probs = classify(np.stack(stack)) if stack else np.empty((0, 10), np.float32)
    readings, start = [], 0
    for name, done, error in found:
        if done is None:
            readings.append(Reading(name, np.empty((0, 10), np.float32), np.empty((0, SIZE, SIZE), np.uint8), error))
            continue
        shown, images = done, done.digits
        k = len(images) if done.choices is None else len(done.choices)
        probs = np.asarray(all_probs[start:start + k], np.float32)
        start += k
        if done.choices is not None:
            best = pick(probs)
            probs, images = probs[best:best + 1], [done.choices[best]]
            if best >= len(done.choices) - len(done.others):
                shown = done.others[best - len(done.choices)]  # the page read another way: its steps
        steps = shown.step_images()
        if done.choices is not None and done.choice_masks:
            steps["3-chosen"] = done.choice_masks[best]
        images = np.stack(images) if images else np.empty((0, SIZE, SIZE), np.uint8)
        readings.append(Reading(name, probs, images, None, steps, tuple(map(str, shown.lines))))
    return readings


NO_DIGIT = "no digit found"


def save_preprocessed(readings: list[Reading], out_dir: str | os.PathLike) -> list[Path]:
    """Each 28x28 image the model saw, as PNG: `<n>-<file stem>[-<digit position>].png`, and, for
    readings that kept them, each preprocessing step's image: `<n>-<file stem>-<step>.png`, and
    what line removal decided of each line it looked at, and why: `<n>-<file stem>-lines.txt`."""
    out_dir = Path(out_dir)
    written = []
    for n, r in enumerate(readings, 1):
        stem = f"{n:03d}-{Path(r.name).stem}"
        images = {f"-{k}" if len(r.images) > 1 else "": digit for k, digit in enumerate(r.images, 1)}
        images |= {f"-{step}": x for step, x in r.steps.items()}
        for suffix, image in images.items():
            path = out_dir / f"{stem}{suffix}.png"
            with atomic_write(path, "wb") as f:
                Image.fromarray(image).save(f, "PNG")
            written.append(path)
        if r.lines:
            path = out_dir / f"{stem}-lines.txt"
            with atomic_write(path, "w") as f:
                f.write("".join(f"{line}\n" for line in r.lines))
            written.append(path)
    return sorted(written)
