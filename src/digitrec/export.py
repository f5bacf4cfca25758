"""ONNX export of a run's model, and a classifier that runs the file with onnxruntime alone.

The graph takes `images` float32 (N, 1, 28, 28) = uint8 pixels / 255, white ink on black (the
training normalisation), and returns `logits` and `probs` (N, 10); the batch axis is dynamic.
What a deployment needs to feed it is written into the file's metadata.

torch is imported only inside `export_onnx` and `check_onnx`: `OnnxClassifier` needs numpy and
onnxruntime and nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from .files import InputError, atomic_write, read_json

OPSET = 17  # supported by every onnxruntime of the last three years
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
NORMALISATION = "float32 (N, 1, 28, 28) = uint8 pixels / 255, white ink on black, MNIST geometry"
MAX_PROB_DIFF = 1e-4  # largest |P_onnx - P_torch| the export check accepts


def export_onnx(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the run's model as ONNX (with logits and probabilities) plus its metadata."""
    import onnx

    from .checkpoint import load_run_model

    model, cfg, _ = load_run_model(run_dir)
    onnx_model = onnx.load_model_from_string(onnx_program(model))
    onnx.helper.set_model_props(onnx_model, {k: str(v) for k, v in _metadata(Path(run_dir), cfg).items()})
    onnx_model.doc_string = "digitrec handwritten-digit classifier"
    onnx.checker.check_model(onnx_model)
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as f:
        f.write(onnx_model.SerializeToString())
    return out_path


def onnx_program(model) -> bytes:
    """A torch model as an ONNX program (no metadata): `images` in, `logits` and `probs` out."""
    import io

    import torch

    class WithProbs(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            logits = self.net(x)  # (N, 10)
            return logits, torch.softmax(logits, dim=1)

    buffer = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated but needs no extra package (dynamo needs onnxscript)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(WithProbs(model).eval(), (torch.zeros(1, 1, 28, 28),), buffer, dynamo=False,
                              opset_version=OPSET, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes={name: batch for name in (INPUT_NAME, *OUTPUT_NAMES)})
    return buffer.getvalue()


def _metadata(run_dir: Path, cfg) -> dict:
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    test = run_dir / "evaluation_test.json"
    try:
        version = metadata.version("digitrec")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "preset": cfg.preset,
        "model": metrics.get("model", ""),
        "val_accuracy": metrics.get("val_accuracy", ""),
        "test_accuracy": read_json(test)["accuracy"] if test.is_file() else "",
        "normalisation": NORMALISATION,
        "input": INPUT_NAME,
        "outputs": ",".join(OUTPUT_NAMES),
        "classes": "0,1,2,3,4,5,6,7,8,9",
        "config": json.dumps(cfg.to_dict()),
        "digitrec_version": version,
        "source_run": run_dir.name,
    }


class OnnxClassifier:
    """Runs an exported model with onnxruntime: uint8 images (N, 28, 28) -> probabilities (N, 10)."""

    def __init__(self, path: str | os.PathLike | bytes, threads: int = 0):
        """`path`: an ONNX file, or the ONNX program itself as bytes (see `from_model`)."""
        import onnxruntime as ort

        where = "the in-memory ONNX program" if isinstance(path, bytes) else path
        if not isinstance(path, bytes):
            path = Path(path)
            if path.is_dir():
                raise InputError(f"{path}: a directory, not an ONNX file (make one with `digitrec export RUN`)")
            if not path.is_file():
                raise InputError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = onnxruntime's choice (one per core)
        try:
            self.session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for invalid models
            raise InputError(f"{where}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        names = [o.name for o in self.session.get_outputs()]
        if [i.name for i in self.session.get_inputs()] != [INPUT_NAME] or "probs" not in names:
            raise InputError(f"{where}: not a digitrec model (expects input '{INPUT_NAME}' and output 'probs')")

    @classmethod
    def from_model(cls, model, threads: int = 0) -> "OnnxClassifier":
        """Run a torch model (e.g. a loaded run's) with onnxruntime, exported in memory (~0.5 s)."""
        return cls(onnx_program(model), threads)

    def predict_probs(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        out = [np.empty((0, 10), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size, None].astype(np.float32) / 255.0  # (B, 1, 28, 28)
            out.append(self.session.run(["probs"], {INPUT_NAME: x})[0])
        return np.concatenate(out)

    __call__ = predict_probs


def check_onnx(run_dir: str | os.PathLike, onnx_path: str | os.PathLike, images: np.ndarray) -> dict:
    """Compare the ONNX file with the run's PyTorch model on `images` (uint8 (N, 28, 28))."""
    from .checkpoint import load_run_model
    from .evaluate import predict_probs

    model, cfg, _ = load_run_model(run_dir)
    torch_probs = predict_probs(model, images, cfg.eval_batch_size)
    onnx_probs = OnnxClassifier(onnx_path).predict_probs(images)
    diff = float(np.abs(torch_probs - onnx_probs).max()) if len(images) else 0.0
    disagree = int((torch_probs.argmax(1) != onnx_probs.argmax(1)).sum())
    return {"n": len(images), "max_abs_prob_diff": diff, "disagreements": disagree,
            "ok": diff < MAX_PROB_DIFF and disagree == 0}
