"""The models that ship with digitrec (issue 24): photos read by `fast` and `best` side by side, and
the time a new process takes to read one photo, split into import, model load and one image.

1. Photos: every condition of tests/image_variants.py (the clean VARIANTS and the photo CONDITIONS at
   each of their STRENGTHS) built from the same MNIST test digits, preprocessed once as `digitrec
   predict` does, then read by each bundled model (onnxruntime, one thread, one image at a time:
   the model's milliseconds per image are the median of those calls).
2. A new process reading one photo: `digitrec predict --pretrained NAME photo.png`, whole (wall time
   from outside, median of --repeats), and split from inside a fresh interpreter into the imports
   the command needs, loading the model (its SHA-256 checked) and reading the one image; the same
   split for the PyTorch path (what runs where onnxruntime is not installed). Medians of --repeats.
   On a shared machine the wall time grows with the load; the whole command's CPU time (user +
   system, one thread) is what it costs, and close to its wall time on an idle core.

    python benchmarks/pretrained.py [--digits 500] [--repeats 7]

Prints Markdown tables (docs/models/).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/image_variants.py

from digitrec.core.data import load_mnist  # noqa: E402
from digitrec.core.pretrained import NAMES  # noqa: E402
from digitrec.outputs import images  # noqa: E402
from digitrec.outputs.export import OnnxClassifier  # noqa: E402
from tests.image_variants import CONDITIONS, STRENGTHS, VARIANTS  # noqa: E402

# What a fresh interpreter does for `digitrec predict --pretrained NAME photo` (cli.cmd_predict), timed.
CHILD = {
    "onnxruntime": """
import time, json, sys
t0, c0 = time.perf_counter(), time.process_time()
import digitrec.cli, onnxruntime, digitrec.outputs.images as images
from digitrec.outputs.export import OnnxClassifier
t1, c1 = time.perf_counter(), time.process_time()
classify = OnnxClassifier.pretrained(sys.argv[1], threads=1).predict_probs
t2, c2 = time.perf_counter(), time.process_time()
readings = images.read_images([sys.argv[2]], classify)
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "image": t3 - t2,
                  "import_cpu": c1 - c0, "load_cpu": c2 - c1, "image_cpu": c3 - c2}))
""",
    "PyTorch": """
import time, json, sys
t0, c0 = time.perf_counter(), time.process_time()
import digitrec.cli, digitrec.outputs.images as images
from digitrec.nets.weights import load_pretrained
from digitrec.nets.predict import predict_probs
t1, c1 = time.perf_counter(), time.process_time()
model = load_pretrained(sys.argv[1])[0]
t2, c2 = time.perf_counter(), time.process_time()
readings = images.read_images([sys.argv[2]], lambda x: predict_probs(model, x))
t3, c3 = time.perf_counter(), time.process_time()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "image": t3 - t2,
                  "import_cpu": c1 - c0, "load_cpu": c2 - c1, "image_cpu": c3 - c2}))
""",
}


def encode(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if image.format == "JPEG" else "PNG", quality=95)
    return buffer.getvalue()


def photos(digits: int, names: list[str]) -> None:
    test = load_mnist("test")
    index = np.random.default_rng(0).choice(len(test), digits, replace=False)
    x, y = test.images[index], test.labels[index]
    models = {name: OnnxClassifier.pretrained(name, threads=1) for name in names}
    conditions = {f"{name} (clean)": lambda d, rng, i, f=f: f(d, rng) for name, f in VARIANTS.items()}
    conditions |= {name: lambda d, rng, i, f=f: f(d, rng, STRENGTHS[i % len(STRENGTHS)]) for name, f in CONDITIONS.items()}
    print(f"| condition ({digits} MNIST test digits each) | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    right = {name: [] for name in names}
    as_is = {name: float((models[name].predict_probs(x).argmax(1) == y).mean()) for name in names}
    print("| MNIST as it is (no preprocessing) | " + " | ".join(f"{as_is[n]:.1%}" for n in names) + " |")
    for condition, make in conditions.items():
        rng = np.random.default_rng(1)
        seen = [images.to_mnist(images.open_image(encode(make(d, rng, i)), "bench")) for i, d in enumerate(x)]
        found = [i for i, s in enumerate(seen) if s is not None]
        row = []
        for name in names:
            ok = np.zeros(len(seen), bool)
            ok[found] = models[name].predict_probs(np.stack([seen[i] for i in found])).argmax(1) == y[found]
            right[name].append(ok)
            row.append(f"{ok.mean():.1%}")
        print(f"| {condition} | " + " | ".join(row) + " |", flush=True)
    print("| **every condition above but the first** | " + " | ".join(f"**{np.concatenate(right[n]).mean():.2%}**" for n in names) + " |")
    print("\n| model | ms per image, model only (onnxruntime, 1 thread, batch 1, median of 300) |\n| --- | ---: |")
    for name in names:
        times = []
        for image in x[:300]:
            start = time.perf_counter()
            models[name].predict_probs(image[None])
            times.append(time.perf_counter() - start)
        print(f"| {name} | {1000 * statistics.median(times):.2f} |")


def new_process(repeats: int, names: list[str]) -> None:
    from PIL import Image

    from tests.image_variants import ruled

    digit = load_mnist("test").images[0]
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "digit.png"
        Image.fromarray(np.asarray(ruled(digit, np.random.default_rng(0), 2))).save(photo)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        print(f"\n| model | engine | import, s: CPU (wall) | model load, s: CPU (wall) | one image, s: CPU (wall) "
              f"| whole `digitrec predict`: wall, s | its CPU time, s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name in names:
            for engine, code in CHILD.items():
                parts = [json.loads(subprocess.run([sys.executable, "-c", code, name, str(photo)], env=env, check=True,
                                                   capture_output=True, text=True).stdout) for _ in range(repeats)]
                whole = "— | —"
                if engine == "onnxruntime":
                    walls, cpus = [], []
                    for _ in range(repeats):
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        start = time.perf_counter()
                        subprocess.run([sys.executable, "-m", "digitrec", "predict", "--pretrained", name, str(photo)],
                                       env=env, check=True, capture_output=True)
                        walls.append(time.perf_counter() - start)
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                    whole = f"{statistics.median(walls):.2f} | {statistics.median(cpus):.2f}"
                med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
                split = " | ".join(f"{med[k + '_cpu']:.3f} ({med[k]:.2f})" for k in ("import", "load", "image"))
                print(f"| {name} | {engine} | {split} | {whole} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-photos", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--models", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n")
    if not args.skip_photos:
        photos(args.digits, args.models)
    if not args.skip_timing:
        new_process(args.repeats, args.models)


if __name__ == "__main__":
    main()
