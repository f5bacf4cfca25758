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

import argparse
import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_numbers import PENS  # noqa: E402
from photos import load_revision, numbers_read, read_all  # noqa: E402

from digitrec.core.data import Digits, load_mnist  # noqa: E402
from digitrec.nets.predict import predict_probs  # noqa: E402
from digitrec.nets.weights import load_run_model  # noqa: E402
from digitrec.outputs import images as this_tree  # noqa: E402

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
        ys, xs = np.nonzero(test.images[i] > 40)
        ink = test.images[i][ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255
        tall = min(box - 4, int(round(height * rng.uniform(0.8, 1.0))))
        wide = max(2, min(box_w - 4, round(tall * ink.shape[1] / ink.shape[0])))
        piece = np.clip(cv2.resize(ink, (wide, tall), interpolation=cv2.INTER_CUBIC), 0, 1)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--rev", default="HEAD", help="the git revision whose images.py is compared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[901])
    parser.add_argument("--n", type=int, default=100, help="numbers per seed and kind of comb")
    args = parser.parse_args()
    model, _, _ = load_run_model(args.run)
    test = load_mnist("test")
    pipelines = {args.rev: load_revision(args.rev), "this tree": this_tree}

    def classify(images: np.ndarray) -> np.ndarray:
        return predict_probs(model, images)

    print(f"| seed | comb | {' | '.join(pipelines)} | read by this tree only | by {args.rev} only |\n| ---: | --- |" + " ---: |" * 4)
    for seed in args.seeds:
        for open_top in (False, True):
            rng = np.random.default_rng(seed)
            picks = [rng.choice(len(test), int(rng.integers(2, 7)), replace=False) for _ in range(args.n)]
            files = [comb_number(test, p, rng, open_top) for p in picks]
            truth = [test.labels[p] for p in picks]
            old, new = (numbers_read(classify, read_all(m, files, multi=True)[0], truth) for m in pipelines.values())
            print(f"| {seed} | {'open (ticks)' if open_top else 'closed'} | {old.mean():.1%} | {new.mean():.1%} "
                  f"| {np.flatnonzero(new & ~old).tolist()} | {np.flatnonzero(old & ~new).tolist()} |", flush=True)


if __name__ == "__main__":
    main()
