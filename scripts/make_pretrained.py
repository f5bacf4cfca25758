"""Train the models that ship inside the package, score them, and write them into it (`make pretrained`).

For each of `fast` and `best` (core/pretrained.py: NAMES): train the preset on the 60,000 official
MNIST training images with seed SEED (the preset holds out 5% of them to fit the temperature) into
build/pretrained/<name>/, score it on the 10,000 official test images, export it to ONNX (checked
against PyTorch on those 10,000 images), then copy the weights and the ONNX file into
src/digitrec/pretrained/ and record their SHA-256, the recipe, the seed, this command and the
scores in src/digitrec/pretrained/models.json.

    python scripts/make_pretrained.py            # what `make pretrained` runs (best trains on one thread: 65 min on a busy 2-core machine)
    python scripts/make_pretrained.py --only fast

A run already finished in build/pretrained/<name>/ is reused, and one interrupted is resumed, so
running it again only repackages. Training is deterministic on the CPU for a given thread count
(THREADS, recorded): the tensors come out the same; the weights file's metadata also records the
machine and git commit, so its SHA-256 is that of this build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from digitrec.core.data import load_mnist  # noqa: E402
from digitrec.core.files import atomic_write  # noqa: E402
from digitrec.core.metrics import predictions_from_probs, summarize  # noqa: E402
from digitrec.core.pretrained import INDEX, NAMES, PRETRAINED_DIR  # noqa: E402
from digitrec.core.rundir import CHECKPOINT, WEIGHTS, Run  # noqa: E402
from digitrec.nets.predict import evaluate_run  # noqa: E402
from digitrec.outputs.export import OnnxClassifier, check_onnx, export_onnx  # noqa: E402

SEED = 0  # the recipe's `seed`: initial weights and dropout; shuffling and augmentation use SEED + 1
# One thread: the weights then do not depend on the machine's core count (oneDNN's reductions are split
# by thread), and on a shared machine one thread is not slowed by a second waiting for a busy core.
THREADS = 1
BUILD = ROOT / "build" / "pretrained"


def train_command(name: str) -> list[str]:
    return ["digitrec", "train", "--preset", name, "--seed", str(SEED), "--threads", str(THREADS),
            "--out", f"build/pretrained/{name}", "--quiet"]


def train(name: str) -> Path:
    out = BUILD / name
    run = Run(out)
    if run.is_finished():
        print(f"{name}: reusing the finished run in {out}")
        return out
    words = train_command(name) + (["--resume"] if run.has(CHECKPOINT) else [])
    print(f"{name}: {' '.join(words)}", flush=True)
    subprocess.run([sys.executable, "-m", "digitrec", *words[1:]], cwd=ROOT, check=True)
    return out


def package(name: str, out: Path, test) -> dict:
    """Score the run, export and check its ONNX file, copy both files into the package."""
    run = Run(out)
    summary = summarize(evaluate_run(out, test, "test"))
    onnx_path = out / f"{name}.onnx"
    export_onnx(out, onnx_path)
    check = check_onnx(out, onnx_path, test.images)
    if not check["ok"]:
        raise SystemExit(f"{name}: the ONNX export does not match PyTorch: {check}")
    onnx_summary = summarize(predictions_from_probs("test", test, OnnxClassifier(onnx_path).predict_probs(test.images)))
    files = {}
    for kind, data in (("weights", run.read_bytes(WEIGHTS)), ("onnx", onnx_path.read_bytes())):
        file_name = f"{name}.{'safetensors' if kind == 'weights' else 'onnx'}"
        with atomic_write(PRETRAINED_DIR / file_name, "wb") as f:
            f.write(data)
        files[kind] = {"name": file_name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    metrics = run.metrics()
    return {
        "preset": name,
        "seed": SEED,
        "command": " ".join(train_command(name)),
        "recipe": run.config(),
        "trained_on": f"{metrics.get('data', 'mnist:train')}: the 60,000 official MNIST training images, "
                      f"{metrics.get('n_train')} trained on and {metrics.get('n_calibration')} held out to fit the temperature",
        "model": metrics.get("model"),
        "parameters": metrics.get("parameters"),
        "train_seconds": metrics.get("train_seconds"),
        "temperature": metrics.get("calibration", {}).get("temperature"),
        "environment": metrics.get("environment"),
        "test": {
            "data": "mnist:test, the 10,000 official MNIST test images",
            "n": summary["n"], "errors": summary["errors"], "accuracy": summary["accuracy"],
            "accuracy_ci95": summary["accuracy_ci95"], "ece": summary.get("ece"),
            "ece_uncalibrated": summary.get("ece_uncalibrated"),
            "onnx_accuracy": onnx_summary["accuracy"],
            "onnx_max_abs_prob_diff": check["max_abs_prob_diff"],
        },
        "files": files,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=NAMES, action="append", help="this model only (repeatable)")
    args = parser.parse_args()
    names = args.only or list(NAMES)
    index_path = PRETRAINED_DIR / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": {}}
    test = load_mnist("test")
    for name in names:
        index["models"][name] = package(name, train(name), test)
        t = index["models"][name]["test"]
        print(f"{name}: {100 * t['accuracy']:.2f}% on the official test set ({t['errors']} errors), "
              f"ECE {100 * t['ece']:.2f}%; {', '.join(f['name'] + ' ' + f['sha256'] for f in index['models'][name]['files'].values())}")
    index["format"] = "digitrec-pretrained/1"
    index["models"] = {name: index["models"][name] for name in NAMES if name in index["models"]}
    with atomic_write(index_path, "w") as f:
        f.write(json.dumps(index, indent=1, sort_keys=False) + "\n")
    print(f"wrote {index_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
