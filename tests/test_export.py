"""export.py: ONNX export matches PyTorch, carries its metadata, and runs without torch (`--onnx`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from digitrec.nets.weights import load_run_model, save_weights
from digitrec.cli import main
from digitrec.core.config import MODELS, make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.nets.predict import predict_probs
from digitrec.outputs.export import MAX_PROB_DIFF, OnnxClassifier, check_onnx, export_onnx
from digitrec.core.files import InputError, read_json
from digitrec.nets.model import build_model


@pytest.fixture(scope="module")
def onnx_path(tiny_run, tmp_path_factory):
    return export_onnx(tiny_run, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_matches_pytorch_on_the_test_set(tiny_run, onnx_path, mnist_test):
    images = mnist_test.images[:1000]
    check = check_onnx(tiny_run, onnx_path, images)
    assert check["n"] == 1000 and check["disagreements"] == 0
    assert check["max_abs_prob_diff"] < MAX_PROB_DIFF == 1e-4
    assert check["ok"]


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_batch_axis_is_dynamic(onnx_path, tiny_run, mnist_test, batch):
    model, _, _ = load_run_model(tiny_run)
    images = mnist_test.images[:batch]
    probs = OnnxClassifier(onnx_path).predict_probs(images, batch_size=batch)
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    assert np.abs(probs - predict_probs(model, images)).max() < MAX_PROB_DIFF


def test_metadata_describes_the_model(onnx_path, tiny_run):
    meta = OnnxClassifier(onnx_path).metadata
    metrics = read_json(tiny_run / "metrics.json")
    assert meta["preset"] == "seed" and meta["model"] == "seed"
    assert float(meta["val_accuracy"]) == metrics["val_accuracy"]
    assert meta["normalisation"].startswith("float32 (N, 1, 28, 28) = uint8 pixels / 255, white ink on black")
    assert meta["classes"] == "0,1,2,3,4,5,6,7,8,9"
    assert read_json_text(meta["config"])["epochs"] == 1


def read_json_text(text: str) -> dict:
    import json

    return json.loads(text)


def test_bad_onnx_files(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path / 'none.onnx'}: no such ONNX file$"):
        OnnxClassifier(tmp_path / "none.onnx")
    with pytest.raises(InputError, match=r"a directory, not an ONNX file \(make one with `digitrec export RUN`\)$"):
        OnnxClassifier(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match=rf"^{junk}: not a readable ONNX model \("):
        OnnxClassifier(junk)


def test_export_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(tiny_run), "--format", "onnx", "-o", str(out), "--check-images", "500"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}; onnxruntime vs PyTorch on 500 MNIST test images: max |probability difference| ")
    assert printed.rstrip().endswith(", 0 different predictions")
    assert out.is_file()
    assert main(["export", str(tmp_path / "no-run"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'no-run'}: no such run directory\n"


# Runs the CLI in a fresh interpreter and fails if torch was imported along the way.
NO_TORCH_RUNNER = textwrap.dedent("""
    import sys
    from digitrec.cli import main
    code = main(sys.argv[1:])
    assert "torch" not in sys.modules, "torch was imported"
    sys.exit(code)
""")


def run_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH_RUNNER, *args], capture_output=True, text=True, timeout=120)


def test_submit_with_onnx_needs_no_torch_and_matches(tiny_run, onnx_path, mnist_test, tmp_path):
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, mnist_test.subset(np.arange(300)), with_labels=False)
    result = run_without_torch("submit", "--onnx", str(onnx_path), str(test_csv), "-o", str(tmp_path / "onnx.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'onnx.csv'} (300 rows)\n"
    assert main(["submit", str(tiny_run), str(test_csv), "-o", str(tmp_path / "torch.csv")]) == 0
    assert (tmp_path / "onnx.csv").read_text() == (tmp_path / "torch.csv").read_text()


def test_predict_with_onnx_needs_no_torch(onnx_path, tiny_run, mnist_test, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(255 - mnist_test.images[0]).resize((90, 90)).save(image)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = run_without_torch("predict", "--onnx", str(onnx_path), str(image), "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert main(["predict", str(tiny_run), str(image), "--format", "csv"]) == 0
    row_onnx = result.stdout.splitlines()[1].split(",")
    row_torch = capsys.readouterr().out.splitlines()[1].split(",")
    assert row_onnx[:4] == [str(image), str(mnist_test.labels[0]), "1", str(mnist_test.labels[0])]
    assert row_onnx[:4] + row_onnx[5:6] + row_onnx[7:8] == row_torch[:4] + row_torch[5:6] + row_torch[7:8]
    assert abs(float(row_onnx[4]) - float(row_torch[4])) < MAX_PROB_DIFF
    result = run_without_torch("predict", "--onnx", str(onnx_path), str(tmp_path / "broken.png"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "error: 1 of 1 images could not be read"


@pytest.mark.parametrize("model_name, deskew, tta", [(name, False, False) for name in MODELS]
                         + [("best", True, False), ("fast", False, True)])
def test_every_architecture_exports(model_name, deskew, tta, tmp_path, mnist_test):
    """Untrained weights are enough: the ops and the batch axis are what could break."""
    cfg = make_config("seed", model=model_name, deskew=deskew, tta=tta)
    save_weights(tmp_path / "model.safetensors", build_model(cfg), cfg)
    check = check_onnx(tmp_path, export_onnx(tmp_path, tmp_path / "m.onnx"), mnist_test.images[:300])
    assert check["ok"] and check["disagreements"] == 0
    model, _, _ = load_run_model(tmp_path)
    for batch in (1, 7):  # the views are batched with the images: the batch axis must stay dynamic
        images = mnist_test.images[:batch]
        probs = OnnxClassifier(tmp_path / "m.onnx").predict_probs(images, batch_size=batch)
        assert np.abs(probs - predict_probs(model, images)).max() < MAX_PROB_DIFF


# int8: the same graph quantised by onnxruntime, calibrated on training images

@pytest.fixture(scope="module")
def int8_path(tiny_run, mnist_train, tmp_path_factory):
    calibration = mnist_train.subset(np.arange(500), "mnist:train[:500]")
    return export_onnx(tiny_run, tmp_path_factory.mktemp("int8") / "int8.onnx", int8=True, calibration=calibration)


def test_int8_agrees_with_pytorch(tiny_run, int8_path, mnist_test):
    check = check_onnx(tiny_run, int8_path, mnist_test.images[:1000])
    assert check["precision"] == "int8" and check["ok"]
    assert check["disagreements"] <= 10  # >= 99% the same predictions
    probs = OnnxClassifier(int8_path).predict_probs(mnist_test.images[:100], batch_size=32)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_int8_file_is_quantised_and_says_so(int8_path, onnx_path):
    import onnx

    meta, meta_fp32 = OnnxClassifier(int8_path).metadata, OnnxClassifier(onnx_path).metadata
    assert meta["precision"] == "int8" and meta_fp32["precision"] == "float32"
    assert meta["calibration"] == "500 images from mnist:train[:500]"
    assert {k: v for k, v in meta.items() if k != "calibration"} == {**meta_fp32, "precision": "int8"}
    ops = [node.op_type for node in onnx.load(int8_path).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert int8_path.stat().st_size < 0.35 * onnx_path.stat().st_size  # 8-bit weights


def test_int8_needs_calibration_images(tiny_run, tmp_path):
    with pytest.raises(InputError, match=r"^an int8 export needs calibration images \(training images\)$"):
        export_onnx(tiny_run, tmp_path / "x.onnx", int8=True)
    assert not (tmp_path / "x.onnx").exists()


def test_int8_export_cli_and_submit_without_torch(tiny_run, mnist_test, tmp_path, capsys):
    out = tmp_path / "m8.onnx"
    assert main(["export", str(tiny_run), "--int8", "-o", str(out), "--check-images", "300"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (int8); onnxruntime vs PyTorch on 300 MNIST test images: ")
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, mnist_test.subset(np.arange(200)), with_labels=False)
    result = run_without_torch("submit", "--onnx", str(out), str(test_csv), "-o", str(tmp_path / "s.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 's.csv'} (200 rows)\n"


def test_int8_ensemble(tiny_run, mnist_train, mnist_test, tmp_path):
    import shutil

    from digitrec.training.ensemble import combine_runs

    shutil.copytree(tiny_run, tmp_path / "copy")
    combine_runs([tiny_run, tmp_path / "copy"], tmp_path / "ens")
    path = export_onnx(tmp_path / "ens", tmp_path / "ens8.onnx", int8=True,
                       calibration=mnist_train.subset(np.arange(200)))
    check = check_onnx(tmp_path / "ens", path, mnist_test.images[:500])
    assert check["ok"] and check["disagreements"] <= 5


def test_batchnorm_folds_through_the_pool():
    """conv -> pool -> BN -> ReLU becomes conv' -> ReLU -> pool: same outputs; a negative scale stays put."""
    import torch

    from digitrec.outputs.export import fold_pooled_batchnorm

    torch.manual_seed(0)
    model = build_model(make_config("fast")).eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    bns[1].weight.data[0] = -1.0  # max does not commute with a decreasing map: this block stays
    folded = fold_pooled_batchnorm(model)
    remaining = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(remaining) == 1 and remaining[0].weight[0] == -1.0
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]) == 3  # the input is kept
