"""Reading phone-photo-like images (issue 17): accuracy per condition, today's preprocessing against
the new one, and the time per image.

Every condition of tests/image_variants.py (the clean VARIANTS and the photo CONDITIONS at each of
their STRENGTHS) is built from the same MNIST test digits, read by both pipelines and classified by
one trained run; the clean-MNIST accuracy of that run on the same digits heads the table. "Before"
is src/digitrec/images.py as of commit BEFORE (read with `git show`, so no second checkout is
needed). Time per image: median of open + preprocess per picture (decoded from its encoded bytes),
both pipelines, measured side by side in this one process. Then phone-sized JPEGs: 1 and 12
megapixels, open + preprocess, median of --repeats.

Prints a Markdown table. Usage (a `fast` run trains in under a minute: `digitrec train --preset fast --out RUN`):
    python benchmarks/photos.py RUN [--digits 1000] [--repeats 15] [--only ruled]
The README's table: `--digits 1000 --repeats 21` (about 5 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/image_variants.py

from digitrec.outputs import images as after
from digitrec.nets.weights import load_run_model
from digitrec.core.data import load_mnist
from digitrec.nets.predict import predict_probs
from tests.image_variants import CONDITIONS, STRENGTHS, VARIANTS, ruled_strip, strip  # noqa: E402

BEFORE = "f0cc9c3"  # the last commit with the previous preprocessing


def load_before():
    """images.py as of BEFORE, imported as digitrec._images_before (its relative imports still work)."""
    source = subprocess.run(["git", "show", f"{BEFORE}:src/digitrec/images.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("digitrec._images_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "digitrec"
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{BEFORE}:images.py", "exec"), module.__dict__)
    return module


def encode(image: Image.Image) -> bytes:
    """The picture as a file: JPEGs stay JPEG (re-encoding would add a generation), others PNG."""
    buffer = io.BytesIO()
    if image.format == "JPEG":
        image.save(buffer, "JPEG", quality=95)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def read_all(module, files: list[bytes], multi: bool = False) -> tuple[list, float]:
    """Every file opened and preprocessed: (results, median ms per file)."""
    results, times = [], []
    for data in files:
        start = time.perf_counter()
        image = module.open_image(data, "bench")
        results.append(module.split_digits(image) if multi else module.to_mnist(image))
        times.append(time.perf_counter() - start)
    return results, 1000 * statistics.median(times)


def read_right(classify, digits: list, labels: np.ndarray) -> np.ndarray:
    """Per image, whether it was read right (bool); no digit found counts as wrong."""
    found = [i for i, d in enumerate(digits) if d is not None]
    ok = np.zeros(len(digits), bool)
    if found:
        ok[found] = classify(np.stack([digits[i] for i in found])).argmax(1) == labels[found]
    return ok


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--digits", type=int, default=1000, help="MNIST test digits per condition")
    parser.add_argument("--repeats", type=int, default=15, help="timings of each phone-sized JPEG")
    parser.add_argument("--only", default="", help="only the rows whose name contains this")
    args = parser.parse_args()

    before = load_before()
    model, _, _ = load_run_model(args.run)
    classify = lambda x: predict_probs(model, np.asarray(x))  # noqa: E731
    test = load_mnist("test")
    index = np.random.default_rng(0).choice(len(test), args.digits, replace=False)
    images, labels = test.images[index], test.labels[index]
    clean = float((classify(images).argmax(1) == labels).mean())
    print(f"run {args.run}: {clean:.2%} on these {args.digits} MNIST test digits, as they are\n")

    # the photo conditions' digits take the strengths in turn: a third of them each
    conditions = {f"{name} (clean)": lambda d, rng, i, f=f: f(d, rng) for name, f in VARIANTS.items()}
    conditions |= {name: lambda d, rng, i, f=f: f(d, rng, STRENGTHS[i % len(STRENGTHS)]) for name, f in CONDITIONS.items()}
    print("| condition | before | after | change | after, by strength 1 / 2 / 3 | ms/image before | ms/image after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, make in conditions.items():
        if args.only not in name:
            continue
        rng = np.random.default_rng(1)
        files = [encode(make(digit, rng, i)) for i, digit in enumerate(images)]
        old, old_ms = read_all(before, files)
        new, new_ms = read_all(after, files)
        a, b = read_right(classify, old, labels), read_right(classify, new, labels)
        strengths = "—" if "clean" in name else " / ".join(
            f"{b[i::len(STRENGTHS)].mean():.1%}" for i in range(len(STRENGTHS)))
        print(f"| {name} | {a.mean():.1%} | {b.mean():.1%} | {100 * (b.mean() - a.mean()):+.1f} | {strengths} "
              f"| {old_ms:.1f} | {new_ms:.1f} |", flush=True)

    # numbers: every digit of a 2-4 digit number, on plain and on ruled paper
    for name, make in {"number (clean)": strip, "number on ruled paper": ruled_strip}.items():
        if args.only not in name:
            continue
        rng = np.random.default_rng(2)
        files, truth, start = [], [], 0
        while start < len(images) - 4:
            k = int(rng.integers(2, 5))
            files.append(encode(make(list(images[start:start + k]), rng)))
            truth.append(labels[start:start + k])
            start += k
        row = [name]
        for module in (before, after):
            found, ms = read_all(module, files, multi=True)
            whole = sum(len(d) == len(t) and bool((classify(np.stack(d)).argmax(1) == t).all())
                        for d, t in zip(found, truth))
            row += [whole / len(files), ms]
        print(f"| {name}: whole number right | {row[1]:.1%} | {row[3]:.1%} | {100 * (row[3] - row[1]):+.1f} | — "
              f"| {row[2]:.1f} | {row[4]:.1f} |", flush=True)

    print("\n| phone photo (JPEG) | before, ms | after, ms |")
    print("| --- | ---: | ---: |")
    for megapixels in (1, 12) if not args.only else ():
        data = phone_jpeg(megapixels, images[0])
        row = []
        for module in (before, after):
            _, ms = read_all(module, [data] * args.repeats)
            row.append(ms)
        print(f"| {megapixels} MP | {row[0]:.0f} | {row[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
