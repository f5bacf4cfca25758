"""ONNX export of a run's model, and a classifier that runs the file with onnxruntime alone.

The graph takes `images` float32 (N, 1, 28, 28) = uint8 pixels / 255, white ink on black (the
training normalisation), and returns `logits` and `probs` (N, 10); the batch axis is dynamic. The
logits are already divided by the model's temperature (nets/temperature.py), so `probs` are calibrated.
What a deployment needs to feed it is written into the file's metadata.

`export_onnx(..., int8=True)` writes the same graph quantised to 8 bits by onnxruntime's own
tooling (static, QDQ, calibrated on training images). On an AVX2 CPU without VNNI it runs 1.5-1.7x
as many images/s as the float32 file (3x eager PyTorch) and changes 2-7 of the 10,000 MNIST test
predictions; `quantize` has the settings and the reasons.

torch is imported only inside the functions that export or check: `OnnxClassifier` needs numpy
and onnxruntime and nothing else.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core import pretrained as bundled
from ..core.files import InputError, atomic_write, first_line
from ..core.rundir import Run

if TYPE_CHECKING:
    from ..core.data import Digits

OPSET = 17  # supported by every onnxruntime of the last three years
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
NORMALISATION = "float32 (N, 1, 28, 28) = uint8 pixels / 255, white ink on black, MNIST geometry"
MAX_PROB_DIFF = 1e-4  # largest |P_onnx - P_torch| the export check accepts (float32)
MAX_INT8_DISAGREEMENT = 0.01  # largest share of predictions int8 may change and pass the check
QUANTISATION_IMAGES = 1000  # training images whose activation ranges set the int8 scales


def export_onnx(run_dir: str | os.PathLike, out_path: str | os.PathLike, int8: bool = False,
                calibration: Digits | None = None) -> Path:
    """Write the run's model as ONNX (with logits and probabilities) plus its metadata.

    With `int8`, the graph is quantised with activation ranges measured on `calibration`
    (training images: never the test set), and the metadata says so.
    """
    import onnx  # the onnx package: only to write a file, not to run one

    from ..nets.weights import load_run_model  # torch: only to export or check, never to run a file

    if int8 and (calibration is None or not len(calibration)):
        raise InputError("an int8 export needs calibration images (training images)")
    model, cfg, _ = load_run_model(run_dir)
    onnx_model = onnx.load_model_from_string(onnx_program(model))
    meta = _metadata(Path(run_dir), cfg)
    meta["temperature"] = f"{float(model.temperature):.6g}"  # applied inside the graph; members apply their own
    if int8:
        onnx_model = quantize(onnx_model, calibration.images)
        source = calibration.source or "training data"
        meta.update(precision="int8", calibration=f"{len(calibration)} images from {source}")
    onnx.helper.set_model_props(onnx_model, {k: str(v) for k, v in meta.items()})
    onnx_model.doc_string = "digitrec handwritten-digit classifier"
    onnx.checker.check_model(onnx_model)
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as f:
        f.write(onnx_model.SerializeToString())
    return out_path


def onnx_program(model) -> bytes:
    """A torch model as an ONNX program (no metadata): `images` in, `logits` and `probs` out.

    Batch norms behind a max-pool are folded into their conv first (`fold_pooled_batchnorm`).
    """

    import torch  # torch: only to export, never to run a file

    model = fold_pooled_batchnorm(model)

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


def fold_pooled_batchnorm(model):
    """A copy of `model` where conv -> max-pool -> batch norm -> ReLU becomes conv' -> ReLU -> max-pool.

    conv' has the norm's scale and shift folded in: the exporter folds a batch norm that follows
    its conv directly, not one behind a pool (FastNet, BestNet). Exact when every channel's scale
    is >= 0, as increasing maps commute with max. onnxruntime then fuses each ReLU into its conv,
    and in int8 the max-pool runs on the 8-bit values (its input and output share one scale).
    """

    import torch  # torch: only to export, never to run a file
    from torch import nn  # torch, as above

    model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 3):
            conv, pool, bn, relu = seq[i:i + 4]
            if not (isinstance(conv, nn.Conv2d) and isinstance(pool, nn.MaxPool2d)
                    and isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
            if (scale < 0).any():
                continue
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               conv.dilation, conv.groups, bias=True)
            with torch.no_grad():
                folded.weight.copy_(conv.weight * scale[:, None, None, None])
                folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            seq[i], seq[i + 1], seq[i + 2], seq[i + 3] = folded, nn.ReLU(), pool, nn.Identity()
    return model.eval()


def quantize(onnx_model, calibration_images: np.ndarray):
    """The float32 graph quantised to 8 bits with onnxruntime's static QDQ quantiser.

    Settings, onnxruntime's advice for x86 without VNNI, checked on AVX2: QDQ format, uint8
    activations, int8 per-channel weights with `reduce_range` (7-bit weights, so the AVX2 kernel's
    16-bit pair sums cannot saturate: with the input conv quantised too, full-range weights changed
    0.5% of FastNet's predictions). `float_nodes` stay float32: the input conv block (int8 is 4x
    slower with one input channel) and the logits (8-bit logits would coarsen the probabilities,
    and that layer costs nothing). Softmax is left alone for the same reason. Activation ranges:
    min-max over `calibration_images`, uint8 (N, 28, 28).
    """

    import onnx  # the onnx package: only to write a file, not to run one
    from onnxruntime.quantization import (  # only for an int8 export
        CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch_size: int = 250):
            self.batches = (_to_input(images[i:i + batch_size]) for i in range(0, len(images), batch_size))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    with tempfile.TemporaryDirectory() as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # shape inference and onnxruntime's basic graph clean-up, as the quantiser asks
        quant_pre_process(onnx_model, prepared, skip_symbolic_shape=True)
        graph = onnx.load(prepared).graph
        quantize_static(prepared, out, Batches(calibration_images), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True, op_types_to_quantize=["Conv", "Relu", "MaxPool", "Flatten", "Gemm"],
                        nodes_to_exclude=float_nodes(graph))
        return onnx.load(out)


def float_nodes(graph) -> list[str]:
    """The nodes `quantize` leaves in float32: each input block (a conv with one input channel and
    the ReLU and max-pool after it) and each Gemm with 10 outputs (the logits)."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names = []
    for node in graph.node:
        if node.op_type == "Conv" and shapes[node.input[1]][1] == 1:  # weight (C_out, C_in, k, k)
            names.append(node.name)
            after = consumers.get(node.output[0], [])
            while len(after) == 1 and after[0].op_type in ("Relu", "MaxPool"):
                names.append(after[0].name)
                after = consumers.get(after[0].output[0], [])
        elif node.op_type == "Gemm" and _gemm_outputs(node, shapes) == 10:
            names.append(node.name)
    return names


def _gemm_outputs(node, shapes: dict) -> int:
    """Output features of a Gemm whose weight is an initializer (0 if unknown)."""
    shape = shapes.get(node.input[1])
    if shape is None or len(shape) != 2:
        return 0
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return shape[0] if trans_b else shape[1]


def _to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> the graph's input, float32 (N, 1, 28, 28) in [0, 1]."""
    return images[:, None].astype(np.float32) / 255.0


def _metadata(run_dir: Path, cfg) -> dict:
    from importlib import metadata  # importlib.metadata: ~0.1 s of import, kept off `predict --onnx`

    run = Run(run_dir)
    metrics, headline = run.metrics(), run.headline()
    try:
        version = metadata.version("digitrec")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "preset": cfg.preset,
        "model": metrics.get("model", ""),
        "val_accuracy": metrics.get("val_accuracy", ""),
        "test_accuracy": headline["accuracy"] if headline["on"] == "test" else "",
        "normalisation": NORMALISATION,
        "input": INPUT_NAME,
        "outputs": ",".join(OUTPUT_NAMES),
        "classes": "0,1,2,3,4,5,6,7,8,9",
        "precision": "float32",
        "config": json.dumps(cfg.to_dict()),
        "digitrec_version": version,
        "source_run": run_dir.name,
    }


class OnnxClassifier:
    """Runs an exported model with onnxruntime: uint8 images (N, 28, 28) -> probabilities (N, 10)."""

    def __init__(self, path: str | os.PathLike | bytes, threads: int = 0):
        """`path`: an ONNX file, or the ONNX program itself as bytes (see `from_model`)."""
        import onnxruntime as ort  # the [onnx] extra: only when a file is run

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
            # QDQ propagation would move an int8 graph's first quantise above the float max-pool,
            # into onnxruntime's slow uint8 NCHW pooling (1.5x the int8 time of FastNet); it
            # changes nothing in a float32 graph.
            self.session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                                providers=["CPUExecutionProvider"],
                                                disabled_optimizers=["QDQPropagationTransformer"])
        except Exception as e:  # onnxruntime raises its own exception types for invalid models
            raise InputError(f"{where}: not a readable ONNX model ({first_line(e)})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        names = [o.name for o in self.session.get_outputs()]
        if [i.name for i in self.session.get_inputs()] != [INPUT_NAME] or "probs" not in names:
            raise InputError(f"{where}: not a digitrec model (expects input '{INPUT_NAME}' and output 'probs')")

    @classmethod
    def pretrained(cls, name: str, threads: int = 0) -> "OnnxClassifier":
        """A model that ships inside the package (core/pretrained.py), its SHA-256 checked first."""
        return cls(bundled.read_bytes(name, "onnx"), threads)

    @classmethod
    def from_model(cls, model, threads: int = 0) -> "OnnxClassifier":
        """Run a torch model (e.g. a loaded run's) with onnxruntime, exported in memory (~0.5 s)."""
        return cls(onnx_program(model), threads)

    def predict_probs(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        out = [np.empty((0, 10), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            out.append(self.session.run(["probs"], {INPUT_NAME: _to_input(images[start:start + batch_size])})[0])
        return np.concatenate(out)

    __call__ = predict_probs


def check_onnx(run_dir: str | os.PathLike, onnx_path: str | os.PathLike, images: np.ndarray) -> dict:
    """Compare the ONNX file with the run's PyTorch model on `images` (uint8 (N, 28, 28)).

    A float32 file passes with probabilities within MAX_PROB_DIFF and no prediction changed; an
    int8 file when at most MAX_INT8_DISAGREEMENT of the predictions changed.
    """
    from ..nets.weights import load_run_model  # torch: only to export or check, never to run a file
    from ..nets.predict import predict_probs  # torch, as above

    model, _, _ = load_run_model(run_dir)
    torch_probs = predict_probs(model, images)
    classifier = OnnxClassifier(onnx_path)
    onnx_probs = classifier.predict_probs(images)
    diff = float(np.abs(torch_probs - onnx_probs).max()) if len(images) else 0.0
    disagree = int((torch_probs.argmax(1) != onnx_probs.argmax(1)).sum())
    precision = classifier.metadata.get("precision", "float32")
    if precision == "int8":
        ok = disagree <= MAX_INT8_DISAGREEMENT * len(images)
    else:
        ok = diff < MAX_PROB_DIFF and disagree == 0
    return {"n": len(images), "precision": precision, "max_abs_prob_diff": diff, "disagreements": disagree, "ok": ok}
