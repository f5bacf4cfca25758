"""Real-looking test images built from MNIST test digits: what people feed a digit reader.

Each builder turns one MNIST digit (28x28 uint8, white on black) into a PIL image the way a photo,
scan or drawing app would present it. Deterministic given the rng.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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


# ---------------------------------------------------------------------------------------------
# Phone-photo conditions (issue 17): each at STRENGTHS 1 (mild) to 3 (harsh). A digit about 80-110
# px tall on a page a few times its size, as a photo framed on the digit would show it.

STRENGTHS = (1, 2, 3)


def _page(digit, rng, size=(360, 270), scale=None, ink_rgb=(25, 25, 45), paper_rgb=PAPER):
    """The digit (3-4x) somewhere near the middle of a paper-coloured page: (page RGB float32, box)."""
    scale = scale or int(rng.integers(3, 5))
    ink = _big(digit, scale)
    width, height = size
    x = int(rng.integers(width // 2 - ink.width // 2 - 30, width // 2 - ink.width // 2 + 31))
    y = int(rng.integers(height // 2 - ink.height // 2 - 20, height // 2 - ink.height // 2 + 21))
    page = np.asarray(_on_paper(ink, ink_rgb, paper_rgb, canvas=size, offset=(x, y)), dtype=np.float32)
    return page, (x, y, ink.width, ink.height)


def _photo(page: np.ndarray, rng, noise: float = 3.0, quality: int = 85) -> Image.Image:
    """Sensor noise and a JPEG round trip, as a phone would save it."""
    noisy = page + rng.normal(0, noise, page.shape[:2] + (1,))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _darken(page: np.ndarray, mask: np.ndarray, rgb) -> np.ndarray:
    """Printed ink (mask in [0, 1]) multiplied onto the page: a line under a stroke darkens it."""
    colour = np.asarray(rgb, np.float32) / 255.0
    return page * (1.0 - mask[..., None] * (1.0 - colour))


def _line_mask(shape, p0, p1, width: float) -> np.ndarray:
    """An anti-aliased straight line from p0 to p1 (x, y), `width` px thick, as a [0, 1] mask."""
    layer = Image.new("L", (shape[1] * 4, shape[0] * 4), 0)
    ImageDraw.Draw(layer).line([(p0[0] * 4, p0[1] * 4), (p1[0] * 4, p1[1] * 4)], fill=255, width=max(1, round(width * 4)))
    return np.asarray(layer.resize((shape[1], shape[0]), Image.Resampling.BOX), dtype=np.float32) / 255.0


def ruled(digit, rng, strength=2):
    """Notebook paper: blue ruled lines across the page, one through the digit and one under it;
    harsher: thicker, darker lines, a red margin line and a slight tilt."""
    page, (x, y, w, h) = _page(digit, rng)
    height, width = page.shape[:2]
    spacing = h * float(rng.uniform(0.55, 0.8))
    base = y + h * float(rng.uniform(0.78, 0.9))  # the line the digit sits on, just under its ink
    tilt = float(rng.uniform(-1, 1)) * (0.02 if strength == 3 else 0.005) * width
    thickness = (1.0, 2.0, 3.0)[strength - 1]
    rgb = [(175, 205, 240), (130, 170, 230), (90, 125, 210)][strength - 1]
    mask = np.zeros((height, width), np.float32)
    for row in np.arange(base - spacing * np.ceil(base / spacing), height + spacing, spacing):
        mask = np.maximum(mask, _line_mask((height, width), (0, row - tilt / 2), (width, row + tilt / 2), thickness))
    if strength == 3:
        margin = x - int(rng.integers(15, 40))
        mask = np.maximum(mask, _line_mask((height, width), (margin, 0), (margin, height), 2.0) * 0.8)
    return _photo(_darken(page, mask, rgb), rng)


def _light(page: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(the page, where each pixel lies along a random direction across it: 0 to 1)."""
    height, width = page.shape[:2]
    angle = float(rng.uniform(0, 2 * np.pi))
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    along = ((xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)) / max(width, height) + 0.5
    return page, np.clip(along, 0, 1)


def shadow(digit, rng, strength=2):
    """Light falling from one side to the other: the page (and ink) darken steadily across it, from
    a random direction, to 65%, 45% or 25% of the light on the other side."""
    page, along = _light(_page(digit, rng)[0], rng)
    light = 1.0 - (0.35, 0.55, 0.75)[strength - 1] * along
    return _photo(page * light[..., None], rng)


def shadow_edge(digit, rng, strength=2):
    """A shadow's soft edge (a hand or a phone between the lamp and the page) across the page near
    the digit, on top of a gradient; harsher: a sharper edge (10-90% over 37%, 18% or 11% of the
    page)."""
    page, along = _light(_page(digit, rng)[0], rng)
    edge = float(rng.uniform(0.35, 0.65))
    slope = (12, 25, 40)[strength - 1]
    light = (1.0 - 0.3 * along) * (1.0 - 0.4 / (1.0 + np.exp(-(along - edge) * slope)))
    return _photo(page * light[..., None], rng)


def boxed(digit, rng, strength=2):
    """A digit written in a printed box of a form, somewhere on the page; harsher: a tighter box
    (at 3 the strokes nearly touch its sides) with thicker edges."""
    page, (x, y, w, h) = _page(digit, rng, size=(300, 260), scale=3)
    height, width = page.shape[:2]
    # MNIST's ink fills about 20 of the 28 px: the margin around that ink, as a fraction of its size
    margin = (0.3, 0.15, 0.03)[strength - 1]
    ink_x, ink_y, ink_side = x + w * 4 / 28, y + h * 4 / 28, w * 20 / 28
    pad = margin * ink_side
    left, top = ink_x - pad + float(rng.uniform(-5, 5)), ink_y - pad + float(rng.uniform(-5, 5))
    right, bottom = ink_x + ink_side + pad, ink_y + ink_side + pad
    thickness = (1.5, 2.5, 3.5)[strength - 1]
    mask = np.zeros((height, width), np.float32)
    corners = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
    for p0, p1 in zip(corners, corners[1:]):
        mask = np.maximum(mask, _line_mask((height, width), p0, p1, thickness))
    return _photo(_darken(page, mask, (40, 40, 40)), rng)


def specks(digit, rng, strength=2):
    """Dust, dots and stray pen marks around the digit; more and bigger with strength."""
    page, (x, y, w, h) = _page(digit, rng)
    height, width = page.shape[:2]
    mask = np.zeros((height, width), np.float32)
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range((15, 40, 80)[strength - 1]):  # dots, 1-4 px across
        cx, cy, r = float(rng.uniform(0, width)), float(rng.uniform(0, height)), float(rng.uniform(0.5, 2.0))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(120, 256)))
    mask = np.maximum(mask, np.asarray(layer, np.float32) / 255.0)
    for _ in range(strength):  # stray strokes away from the digit (a tick, a scribble's end)
        while True:
            cx, cy = float(rng.uniform(10, width - 10)), float(rng.uniform(10, height - 10))
            if not (x - 25 < cx < x + w + 25 and y - 25 < cy < y + h + 25):
                break
        angle, length = float(rng.uniform(0, np.pi)), float(rng.uniform(10, 30))
        dx, dy = length * np.cos(angle) / 2, length * np.sin(angle) / 2
        mask = np.maximum(mask, _line_mask((height, width), (cx - dx, cy - dy), (cx + dx, cy + dy), 3.0))
    return _photo(_darken(page, mask, (30, 30, 40)), rng)


def pencil(digit, rng, strength=2):
    """Soft grey pencil on off-white paper with grain: the ink barely darker than the paper."""
    contrast = (0.4, 0.25, 0.15)[strength - 1]  # how much of the paper's light the stroke cores take
    paper = np.asarray(PAPER, np.float32)
    ink = tuple(int(v) for v in paper * (1.0 - contrast))
    page, _ = _page(digit, rng, ink_rgb=ink)
    blurred = np.asarray(Image.fromarray(page.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    return _photo(blurred, rng, noise=(3.0, 4.0, 5.0)[strength - 1])


def angled(digit, rng, strength=2):
    """The page shot at an angle: a perspective distortion (one side nearer the camera) and the
    uneven light that comes with it."""
    page, _ = _page(digit, rng)
    height, width = page.shape[:2]
    k = (0.08, 0.16, 0.24)[strength - 1] * width
    squeeze = [float(rng.uniform(0, k)) for _ in range(4)]
    # where each corner of the output comes from in the page (top-left, bottom-left, bottom-right, top-right)
    quad = (squeeze[0], squeeze[1] / 2, squeeze[1], height - squeeze[0] / 2,
            width - squeeze[2], height - squeeze[3] / 2, width - squeeze[3], squeeze[2] / 2)
    warped = Image.fromarray(page.astype(np.uint8)).transform((width, height), Image.Transform.QUAD, quad,
                                                              Image.Resampling.BILINEAR, fillcolor=PAPER)
    xs = np.linspace(1.0, 1.0 - 0.25 * strength / 3, width, dtype=np.float32)
    return _photo(np.asarray(warped, np.float32) * xs[None, :, None], rng)


def tight_crop(digit, rng, strength=2):
    """A photo cropped to the digit (a phone's crop tool, one cell of a scanned form): dark ink on
    grey-white paper, the picture's edges a margin of 10-6%, 6-3% or 3-0% of the digit's size from
    its ink (each side drawn apart), the digit 40-240 px tall, a little blur and noise, PNG or JPEG."""
    low, high = ((0.06, 0.10), (0.03, 0.06), (0.0, 0.03))[strength - 1]
    side = int(rng.integers(40, 241))  # the ink's longer side in the picture, px
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    ink = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = side / max(ink.shape)
    ink_w, ink_h = max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale))
    left, right, top, bottom = (round(float(rng.uniform(low, high)) * side) for _ in range(4))
    paper = tuple(int(v) for v in rng.integers(185, 246) + rng.integers(-8, 9, 3))
    ink_rgb = tuple(int(v) for v in rng.integers(10, 70) + rng.integers(-8, 9, 3))
    page = np.asarray(_on_paper(Image.fromarray(ink).resize((ink_w, ink_h), Image.Resampling.BICUBIC), ink_rgb,
                                paper, canvas=(ink_w + left + right, ink_h + top + bottom), offset=(left, top)),
                      np.float32)
    blur = float(rng.uniform(0, 0.01 * side))  # up to 1% of the digit's size: a slightly soft focus
    page = np.asarray(Image.fromarray(page.astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur)), np.float32)
    if rng.random() < 0.5:
        return _photo(page, rng, noise=float(rng.uniform(1, 4)), quality=int(rng.integers(70, 96)))
    return Image.fromarray(np.clip(page + rng.normal(0, float(rng.uniform(1, 4)), page.shape[:2] + (1,)), 0, 255).astype(np.uint8))


def dim(digit, rng, strength=2):
    """A photo taken in dim light: the paper grey, the ink a little darker, the sensor's noise strong
    (8, 13 or 18 grey levels), a slight blur; a whole page, or (one in two) cropped close to the digit."""
    noise = (8.0, 13.0, 18.0)[strength - 1]
    paper = int(rng.integers(130, 200))
    ink = paper - int(rng.integers(50, 100))
    if rng.random() < 0.5:
        picture = tight_crop(digit, rng, 2)
        grey = np.asarray(picture.convert("L"), np.float32)
        level = np.percentile(grey, 95)
        page = paper - (level - grey) * (paper - ink) / max(level - grey.min(), 1.0)
        page = np.repeat(page[..., None], 3, -1)
    else:
        page, _ = _page(digit, rng, ink_rgb=(ink,) * 3, paper_rgb=(paper,) * 3)
    blurred = np.asarray(Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7)), np.float32)
    return _photo(blurred, rng, noise=noise, quality=int(rng.integers(75, 96)))


def felt_tip(digit, rng, strength=2):
    """A digit in a felt tip, cropped to its ink in a small picture: MNIST's strokes thickened by a
    px a side (a quarter of the digit's width: over half the picture can be ink), a margin of 0-4%
    a side, the picture 56-80, 36-56 or 24-36 px tall and the ink 60-120, 40-90 or 30-70 grey
    levels below the paper; blur, noise, PNG or JPEG."""
    ink = cv2.dilate(digit, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    rows, cols = np.flatnonzero((ink > 60).any(1)), np.flatnonzero((ink > 60).any(0))
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    height = int(rng.integers(*((56, 81), (36, 57), (24, 37))[strength - 1]))
    ink = cv2.resize(ink, (max(3, round(height * ink.shape[1] / ink.shape[0])), height), interpolation=cv2.INTER_AREA)
    margins = [round(float(rng.uniform(0, 0.04)) * height) for _ in range(4)]
    ink = np.pad(ink, ((margins[0], margins[1]), (margins[2], margins[3]))).astype(np.float32) / 255
    paper = float(rng.uniform(170, 245))
    page = paper - float(rng.uniform(*((60, 120), (40, 90), (30, 70))[strength - 1])) * ink
    page = cv2.GaussianBlur(page, (0, 0), float(rng.uniform(0.3, 1.0)))
    page = np.repeat(page[..., None], 3, -1) * (1 + rng.uniform(-0.03, 0.03, 3))
    if rng.random() < 0.5:
        return _photo(page, rng, noise=float(rng.uniform(1, 5)), quality=int(rng.integers(70, 96)))
    return Image.fromarray(np.clip(page + rng.normal(0, float(rng.uniform(1, 5)), page.shape[:2] + (1,)), 0, 255).astype(np.uint8))


def on_desk(digit, rng, strength=2):
    """A sheet of paper with the digit on it, photographed lying on a darker desk: the sheet covers
    60-85%, 40-70% or 30-55% of the picture's height, turned up to 3, 6 or 10 degrees; a desk 20-110
    grey levels dark, grained like wood (from strength 2), a gradient of light, noise, JPEG; the
    digit 30-60% of the sheet's height, at least 56 px."""
    height, width = 300, 400
    side = float(rng.uniform(*((0.60, 0.85), (0.40, 0.70), (0.30, 0.55))[strength - 1]))
    sheet_h, sheet_w = round(height * side), round(height * side * rng.uniform(1.0, 1.41))
    ink = _big(digit, max(2, round(float(rng.uniform(0.3, 0.6)) * sheet_h / 28)))  # 56 px tall or more
    offset = (int(rng.integers(0, sheet_w - ink.width + 1)) // 2 + (sheet_w - ink.width) // 4,
              int(rng.integers(0, sheet_h - ink.height + 1)) // 2 + (sheet_h - ink.height) // 4)
    sheet = np.asarray(_on_paper(ink, canvas=(sheet_w, sheet_h), offset=offset), np.float32)
    desk_level = float(rng.uniform(20, 110))
    desk = np.full((height, width, 3), desk_level, np.float32) * (1 + rng.uniform(-0.1, 0.1, 3))
    if strength > 1:  # wood grain: stripes along one direction
        stripes = np.sin(np.arange(width)[None, :] / rng.uniform(3, 9) + rng.normal(0, 0.3, (height, 1)).cumsum(0))
        desk += (rng.uniform(4, 12) * stripes)[..., None]
    angle = float(rng.uniform(-1, 1)) * (3, 6, 10)[strength - 1]
    centre = (width / 2 + rng.uniform(-0.1, 0.1) * width, height / 2 + rng.uniform(-0.1, 0.1) * height)
    turn = cv2.getRotationMatrix2D((sheet_w / 2, sheet_h / 2), angle, 1.0)
    turn[:, 2] += (centre[0] - sheet_w / 2, centre[1] - sheet_h / 2)
    placed = cv2.warpAffine(sheet, turn, (width, height), flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(np.ones((sheet_h, sheet_w), np.float32), turn, (width, height), flags=cv2.INTER_LINEAR)
    page = placed + desk * (1 - cover[..., None])
    light = 1 - 0.25 * np.linspace(0, 1, width, dtype=np.float32)[None, :] * float(rng.uniform(0, 1))
    return _photo(page * light[..., None], rng, noise=float(rng.uniform(2, 5)), quality=int(rng.integers(75, 96)))


def stray_marks(digit, rng, strength=2):
    """One or two pen marks beside the digit (a short stroke, a tick, an arc, a scribble), 0.15-0.45
    of its height, in the same pen, 0.3-0.6, 0.15-0.35 or 0.08-0.2 of its height from its ink."""
    scale = int(rng.integers(3, 5))
    page, (x, y, _, _) = _page(digit, rng, scale=scale)
    rows, cols = np.nonzero(digit > 60)
    x0, x1 = x + cols.min() * scale, x + (cols.max() + 1) * scale
    y0, y1 = y + rows.min() * scale, y + (rows.max() + 1) * scale
    tall = y1 - y0
    height, width = page.shape[:2]
    mask = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        size = float(rng.uniform(0.15, 0.45)) * tall
        gap = float(rng.uniform(*((0.3, 0.6), (0.15, 0.35), (0.08, 0.2))[strength - 1])) * tall + size / 2
        cx = (x0 + x1) / 2 + float(rng.uniform(-0.4, 0.4)) * (x1 - x0)
        cy = (y0 + y1) / 2 + float(rng.uniform(-0.4, 0.4)) * tall
        cx, cy = ((x0 - gap, cy), (x1 + gap, cy), (cx, y0 - gap), (cx, y1 + gap))[int(rng.integers(4))]
        kind, turn = int(rng.integers(4)), float(rng.uniform(0, np.pi))
        if kind == 0:  # a short straight stroke
            dx, dy = size / 2 * np.cos(turn), size / 2 * np.sin(turn)
            points = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
        elif kind == 1:  # a tick
            points = [(cx - size / 2, cy), (cx - size / 6, cy + size / 3), (cx + size / 2, cy - size / 2)]
        elif kind == 2:  # an arc
            t = np.linspace(0, float(rng.uniform(1.5, 3.5)), 12) + turn
            points = list(zip(cx + size / 2 * np.cos(t), cy + size / 2 * np.sin(t)))
        else:  # a scribble
            points = [(cx + float(rng.uniform(-1, 1)) * size / 2, cy + float(rng.uniform(-1, 1)) * size / 2) for _ in range(5)]
        layer = Image.new("L", (width * 4, height * 4), 0)
        pen = max(1, round(float(rng.uniform(0.5, 1.0)) * 2.2 * scale * 4))
        ImageDraw.Draw(layer).line([(px * 4, py * 4) for px, py in points], fill=255, width=pen, joint="curve")
        mask = np.maximum(mask, np.asarray(layer.resize((width, height), Image.Resampling.BOX), np.float32) / 255.0)
    return _photo(_darken(page, mask, (25, 25, 45)), rng)


CONDITIONS = {f.__name__: f for f in (ruled, shadow, shadow_edge, boxed, specks, pencil, angled, tight_crop, dim, felt_tip,
                                      on_desk, stray_marks)}


def ruled_strip(digits: list[np.ndarray], rng) -> Image.Image:
    """A handwritten number on ruled paper: `strip` with blue lines through and under it."""
    number = np.asarray(strip(digits, rng), dtype=np.float32)
    height, width = number.shape[:2]
    page = np.full((height + 80, width + 60, 3), PAPER, np.float32)
    page[40:40 + height, 30:30 + width] = number
    mask = np.zeros(page.shape[:2], np.float32)
    for row in (40 + 0.45 * height, 40 + 0.9 * height, 40 + 0.9 * height - 0.9 * 0.45 * height * 2):
        mask = np.maximum(mask, _line_mask(page.shape[:2], (0, row), (page.shape[1], row), 2.0))
    return _photo(_darken(page, mask, (130, 170, 230)), rng)



def ruled_number(digits: list[np.ndarray], rng) -> Image.Image:
    """A handwritten number on ruled paper as notebooks vary: `strip` on lines 35-80% of its height
    apart (so a line may cross a 4's or 9's stem or a loop's top, and one lies near its base, where
    a 1 stands), 1-3.5 px thick, blue, grey or dark blue, tilted up to 3 degrees, the picture's
    edge 4-40 px above and below the number."""
    number = np.asarray(strip(digits, rng), dtype=np.float32)
    height, width = number.shape[:2]
    margin = int(rng.integers(4, 41))
    page = np.full((height + 2 * margin, width + 60, 3), PAPER, np.float32)
    page[margin:margin + height, 30:30 + width] = number
    rows, cols = page.shape[:2]
    spacing = float(rng.uniform(0.35, 0.8)) * height
    base = margin + float(rng.uniform(0.75, 0.95)) * height
    rise = cols * np.tan(np.radians(float(rng.uniform(-3, 3))))
    thickness = float(rng.uniform(1, 3.5))
    mask = np.zeros((rows, cols), np.float32)
    for row in np.arange(base - spacing * np.ceil((base + abs(rise)) / spacing), rows + abs(rise) + spacing, spacing):
        mask = np.maximum(mask, _line_mask((rows, cols), (0, row - rise / 2), (cols, row + rise / 2), thickness))
    rgb = [(130, 170, 230), (150, 150, 150), (90, 125, 210)][int(rng.integers(3))]
    return _photo(_darken(page, mask, rgb), rng)


def thin_ruled_number(digits: list[np.ndarray], rng, tilt: float = 8.0) -> Image.Image:
    """A number written small with a fine pen on ruled paper, shot askew: `strip` 40-75 px tall, its
    strokes thinned by 0-2 px at full size (about as thick as the lines, 0.8-2.5 px), in black, blue
    or grey ink; lines 40-90% of its height apart, blue, grey, dark blue or red, tilted up to `tilt`
    degrees, so the outer ones run off the picture's side; light sensor noise."""
    number = np.asarray(strip(digits, rng).convert("L"), np.float32)
    ink = Image.fromarray((np.clip(1 - number / np.percentile(number, 90), 0, 1) * 255).astype(np.uint8))
    thinning = int(rng.integers(0, 3))
    if thinning:
        ink = ink.filter(ImageFilter.MinFilter(2 * thinning + 1))
    height = int(rng.integers(40, 76))
    width = round(ink.width * height / ink.height)
    coverage = np.asarray(ink.resize((width, height), Image.Resampling.LANCZOS), np.float32)[..., None] / 255
    margin = int(rng.integers(6, 30))
    page = np.full((height + 2 * margin, width + 40, 3), PAPER, np.float32)
    pen = np.asarray([(25, 25, 45), (30, 40, 120), (50, 50, 60)][int(rng.integers(3))], np.float32) / 255
    page[margin:margin + height, 20:20 + width] *= 1 - coverage * (1 - pen)
    rows, cols = page.shape[:2]
    spacing = float(rng.uniform(0.4, 0.9)) * height
    base = margin + float(rng.uniform(0.8, 1.0)) * height
    rise = cols * np.tan(np.radians(float(rng.uniform(-tilt, tilt))))
    thickness = float(rng.uniform(0.8, 2.5))
    mask = np.zeros((rows, cols), np.float32)
    for row in np.arange(base - spacing * np.ceil((base + abs(rise)) / spacing), rows + abs(rise) + spacing, spacing):
        mask = np.maximum(mask, _line_mask((rows, cols), (0, row - rise / 2), (cols, row + rise / 2), thickness))
    rgb = [(130, 170, 230), (150, 150, 150), (90, 125, 210), (200, 150, 150)][int(rng.integers(4))]
    return _photo(_darken(page, mask, rgb), rng, noise=float(rng.uniform(1, 4)))
