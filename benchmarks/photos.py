"""Reading phone-photo-like images (issues 17, 27): accuracy per condition and strength, the
previous release's preprocessing, the last landed release's and this tree's side by side, and the time per image.

Every condition of tests/image_variants.py (the clean VARIANTS, and the photo CONDITIONS at each of
their STRENGTHS, tight crops included) is built from the same MNIST test digits, read by each
pipeline and classified by one trained run; the clean-MNIST accuracy of that run on the same digits
heads the table. The other pipelines are src/digitrec/images.py as of a git revision (PIPELINES,
read with `git show`, so no second checkout is needed). Time per image: median of open + preprocess
per picture (decoded from its encoded bytes), every pipeline in this one process. Then numbers of
2-4 digits, on plain paper, on ruled paper and on ruled paper as notebooks vary (`ruled_number`: line
spacing, thickness, colour, a tilt) and small, in a fine pen, on a ruling tilted up to 8 degrees
(`thin_ruled_number`); whole numbers read exactly right. Then phone-sized JPEGs:
1 and 12 megapixels, open + preprocess, median of --repeats.

Prints Markdown tables. Usage (a `fast` run trains in under a minute: `digitrec train --preset fast --out RUN`):
    python benchmarks/photos.py RUN [--digits 1000] [--repeats 15] [--only ruled] [--multi]
`--multi`: only the numbers (--digits digits' worth of them); `--only`: only the rows whose name
contains it.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import io
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/image_variants.py

from digitrec.core.data import load_mnist  # noqa: E402
from digitrec.nets.predict import predict_probs  # noqa: E402
from digitrec.nets.weights import load_run_model  # noqa: E402
from digitrec.outputs import images as this_tree  # noqa: E402
from tests.image_variants import (CONDITIONS, STRENGTHS, VARIANTS, ruled_number, ruled_strip, strip,  # noqa: E402
                                  thin_ruled_number)

# The pipelines compared with this tree: the previous release (the last commit before the page's
# light was divided out and printed lines removed, b9eeb18), and the last release that landed
# (ec76f4c: a desk lamp's spot and a hard shadow read both ways, numbers cropped close at their sides).
PIPELINES = {"previous": "f0cc9c3", "release": "67c073e"}


def load_revision(rev: str):
    """images.py as of git revision `rev`, imported as its own module (wherever the file lived then;
    its relative imports of files.py point at today's home of InputError)."""
    paths = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src/digitrec"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    path = next(p for p in paths if p.endswith("/images.py"))
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    source = re.sub(r"^from \.+[\w.]*files import", f"from {this_tree.InputError.__module__} import", source, flags=re.M)
    name = f"digitrec._images_{re.sub(r'[^0-9A-Za-z]', '_', rev)}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = this_tree.__package__
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def encode(image: Image.Image) -> bytes:
    """The picture as a file: JPEGs stay JPEG (re-encoding would add a generation), others PNG."""
    buffer = io.BytesIO()
    if image.format == "JPEG":
        image.save(buffer, "JPEG", quality=95)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def read_all(module, files: list[bytes], multi: bool = False, classify=None) -> tuple[list, float]:
    """Every file opened and preprocessed: (results, median ms per file). A pipeline whose to_mnist
    asks the model where strokes may be stray marks (this tree's) gets `classify`, and its time
    counts those readings."""
    asks = classify is not None and "classify" in inspect.signature(module.to_mnist).parameters
    results, times = [], []
    for data in files:
        start = time.perf_counter()
        image = module.open_image(data, "bench")
        results.append(module.split_digits(image) if multi else
                       module.to_mnist(image, classify) if asks else module.to_mnist(image))
        times.append(time.perf_counter() - start)
    return results, 1000 * statistics.median(times)


def read_right(classify, digits: list, labels: np.ndarray) -> np.ndarray:
    """Per image, whether it was read right (bool); no digit found counts as wrong."""
    found = [i for i, d in enumerate(digits) if d is not None]
    ok = np.zeros(len(digits), bool)
    if found:
        ok[found] = classify(np.stack([digits[i] for i in found])).argmax(1) == labels[found]
    return ok


def numbers_read(classify, found: list[list[np.ndarray]], truth: list[np.ndarray]) -> np.ndarray:
    """Per number, whether it was read exactly (bool): as many digits as written, each right."""
    return np.array([len(d) == len(t) and bool((classify(np.stack(d)).argmax(1) == t).all())
                     for d, t in zip(found, truth)])


def numbers_right(classify, found: list[list[np.ndarray]], truth: list[np.ndarray]) -> float:
    """The share of numbers read exactly (`numbers_read`)."""
    return float(numbers_read(classify, found, truth).mean())


def phone_jpeg(megapixels: float, digit: np.ndarray) -> bytes:
    """A digit about a fifth of the picture's height on paper with a gradient of light, 4:3 JPEG."""
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    width = height * 4 // 3
    light = np.linspace(245, 170, width, dtype=np.float32)[None, :]
    page = np.repeat(light, height, 0)
    side = height // 5
    ink = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    top, left = height // 2 - side // 2, width // 2 - side // 2
    page[top:top + side, left:left + side] *= 1 - 0.85 * ink
    page += np.random.default_rng(0).normal(0, 3, page.shape).astype(np.float32)  # sensor noise
    page = np.clip(page, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(page.astype(np.uint8)).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def heldout_report(modules: dict, classify, n: int) -> None:
    """The held-out generator's pictures, read by every pipeline: per condition and strength, and
    whole numbers on ruled paper."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import heldout_photos

    names = list(modules)
    print(f"\nheld-out generator, {n} pictures each\n\n| condition | strength | {' | '.join(names)} | this tree - best other |")
    print("| --- | ---: |" + " ---: |" * (len(names) + 1))
    for condition in heldout_photos.CONDITIONS:
        for strength in heldout_photos.STRENGTHS:
            cases = heldout_photos.cases(condition, strength, n)
            labels = np.array([int(case.label) for case in cases])
            scores = [float(read_right(classify, read_all(m, [c.encoded for c in cases], classify=classify)[0], labels).mean())
                      for m in modules.values()]
            print(f"| {condition} | {strength} | {' | '.join(f'{s:.1%}' for s in scores)} "
                  f"| {100 * (scores[-1] - max(scores[:-1])):+.1f} |", flush=True)
    cases = heldout_photos.number_cases(n)
    truth = [np.array([int(c) for c in case.label]) for case in cases]
    scores = [numbers_right(classify, read_all(m, [c.encoded for c in cases], multi=True)[0], truth)
              for m in modules.values()]
    print(f"| {heldout_photos.NUMBERS}, whole number right | {n} numbers | {' | '.join(f'{s:.1%}' for s in scores)} "
          f"| {100 * (scores[-1] - max(scores[:-1])):+.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--digits", type=int, default=1000, help="MNIST test digits per condition and strength")
    parser.add_argument("--repeats", type=int, default=15, help="timings of each phone-sized JPEG")
    parser.add_argument("--only", default="", help="only the rows whose name contains this")
    parser.add_argument("--multi", action="store_true", help="only the numbers")
    parser.add_argument("--heldout", type=int, default=0,
                        help="also the held-out generator (benchmarks/heldout_photos.py): this many pictures per "
                             "condition and strength, and numbers on ruled paper (never tune on it)")
    args = parser.parse_args()

    modules = {name: load_revision(rev) for name, rev in PIPELINES.items()} | {"this tree": this_tree}
    model, _, _ = load_run_model(args.run)
    classify = lambda x: predict_probs(model, np.asarray(x))  # noqa: E731
    test = load_mnist("test")
    index = np.random.default_rng(0).choice(len(test), args.digits, replace=False)
    images, labels = test.images[index], test.labels[index]
    clean = float((classify(images).argmax(1) == labels).mean())
    print(f"run {args.run}: {clean:.2%} on these {args.digits} MNIST test digits, as they are; "
          f"pipelines: {', '.join(f'{n} ({PIPELINES.get(n, ROOT)})' for n in modules)}\n")
    names = list(modules)
    print(f"| condition | strength | {' | '.join(names)} | this tree - best other | ms/image {' / '.join(names)} |")
    print("| --- | ---: |" + " ---: |" * (len(names) + 2))

    def row(name: str, strength: str, scores: list[float], ms: list[float]) -> None:
        print(f"| {name} | {strength} | {' | '.join(f'{s:.1%}' for s in scores)} "
              f"| {100 * (scores[-1] - max(scores[:-1])):+.1f} | {' / '.join(f'{t:.1f}' for t in ms)} |", flush=True)

    conditions = {(name, "clean"): lambda d, rng, f=f: f(d, rng) for name, f in VARIANTS.items()}
    conditions |= {(name, str(s)): lambda d, rng, f=f, s=s: f(d, rng, s) for name, f in CONDITIONS.items() for s in STRENGTHS}
    for (name, strength), make in conditions.items() if not args.multi else ():
        if args.only not in name:
            continue
        rng = np.random.default_rng(1)
        files = [encode(make(digit, rng)) for digit in images]
        scores, times = [], []
        for module in modules.values():
            found, ms = read_all(module, files, classify=classify)
            scores.append(float(read_right(classify, found, labels).mean()))
            times.append(ms)
        row(name, strength, scores, times)

    # numbers: every digit of a 2-4 digit number, on plain and on ruled paper
    numbers = {"number, whole number right": strip, "number on ruled paper, whole number right": ruled_strip,
               "number on varied ruled paper, whole number right": ruled_number,
               "number in a fine pen on a tilted ruling, whole number right": thin_ruled_number}
    for name, make in numbers.items():
        if args.only not in name:
            continue
        rng = np.random.default_rng(2)
        files, truth, start = [], [], 0
        while start < len(images) - 4:
            k = int(rng.integers(2, 5))
            files.append(encode(make(list(images[start:start + k]), rng)))
            truth.append(labels[start:start + k])
            start += k
        scores, times = [], []
        for module in modules.values():
            found, ms = read_all(module, files, multi=True)
            scores.append(numbers_right(classify, found, truth))
            times.append(ms)
        row(name, f"{len(files)} numbers", scores, times)

    if args.heldout:
        heldout_report(modules, classify, args.heldout)
    if args.only or args.multi:
        return
    print(f"\n| phone photo (JPEG) | {' | '.join(f'{n}, ms' for n in names)} |")
    print("| --- |" + " ---: |" * len(names))
    for megapixels in (1, 12):
        data = phone_jpeg(megapixels, images[0])
        times = [read_all(module, [data] * args.repeats, classify=classify)[1] for module in modules.values()]
        print(f"| {megapixels} MP | {' | '.join(f'{t:.1f}' for t in times)} |", flush=True)


if __name__ == "__main__":
    main()
