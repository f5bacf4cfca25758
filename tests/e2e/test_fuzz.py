"""Hostile input, issue 18's readers half: property tests of the CSV, IDX and submission readers and
writers, a short slice of benchmarks/fuzz.py (image reader, both endpoints, a soak), and bad weights
files given to every command that reads them."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import io
import json
import os
import shutil
import struct
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from safetensors.torch import save as st_save

import digitrec.outputs.serve
from digitrec.core.rundir import WEIGHTS as WEIGHTS_FILE
from digitrec.nets.weights import load_weights
from digitrec.cli import main
from digitrec.core.config import config_from_dict, make_config
from digitrec.core.data import Digits, make_digits, read_idx, read_idx_pair, read_kaggle_csv, write_kaggle_csv
from digitrec.core.metrics import Predictions
from digitrec.core.files import InputError
from digitrec.nets.model import build_model
from digitrec.outputs.submit import MAX_IMAGE_ID, read_label_file, score, write_submission

pytestmark = pytest.mark.slow  # property tests over many damaged files: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
# Deterministic and quick in `make test`; HYPOTHESIS_PROFILE=long explores more (a few minutes).
settings.register_profile("digitrec", max_examples=40, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "digitrec"))


def load_benchmark(name: str):
    """A script of benchmarks/ as a module: the test slices run the same code as the long runs."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = load_benchmark("fuzz")


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """One folder for every example (Hypothesis reruns a test many times in one call)."""
    return tmp_path_factory.mktemp("fuzz")


def assert_refusal(error: InputError, path: Path) -> None:
    """digitrec's own error: one line that starts by naming the file."""
    message = str(error)
    assert message.startswith(f"{path}: ") and "\n" not in message, message


# ---------------------------------------------------------------------------------------------
# edits: what a disk, a download or a person does to a valid file

CELLS = st.one_of(st.sampled_from(["", "nan", "NaN", "inf", "-inf", "-1", "256", "10", "0.5", "1e400", "9" * 30,
                                   "0x10", " 7 ", '"', '"3"', "\r", "\n", "label", "pixel0", "ImageId", "\ufeff"]),
                  st.text(max_size=8))
EDITS = st.lists(st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("cell"), st.integers(0, 1 << 20), CELLS),  # one CSV cell rewritten
), min_size=1, max_size=4)


def apply_edits(data: bytes, edits) -> bytes:
    for edit in edits:
        at = edit[1] % (len(data) + 1)
        if edit[0] == "byte" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([edit[2]]) + data[at + 1:]
        elif edit[0] == "cut":
            data = data[:at]
        elif edit[0] == "insert":
            data = data[:at] + edit[2] + data[at:]
        elif edit[0] == "delete":
            data = data[:at] + data[at + edit[2]:]
        elif edit[0] == "cell":
            cells = data.split(b",")
            cells[edit[1] % len(cells)] = edit[2].encode()
            data = b",".join(cells)
    return data


# ---------------------------------------------------------------------------------------------
# Kaggle CSV

def digit_sets(max_rows: int = 4):
    images = st.integers(1, max_rows).flatmap(lambda n: arrays(np.uint8, (n, 28, 28)))
    return images.flatmap(lambda x: st.tuples(st.just(x), arrays(np.int64, len(x), elements=st.integers(0, 9))))


@given(data=digit_sets(), with_labels=st.booleans())
def test_kaggle_csv_round_trips_exactly(work_dir, data, with_labels):
    images, labels = data
    path = work_dir / "round-trip.csv"
    write_kaggle_csv(path, make_digits(images, labels, "hypothesis"), with_labels=with_labels)
    digits = read_kaggle_csv(path, "train" if with_labels else "test")
    np.testing.assert_array_equal(digits.images, images)
    if with_labels:
        np.testing.assert_array_equal(digits.labels, labels)
    else:
        assert digits.labels is None
    np.testing.assert_array_equal(digits.ids, np.arange(1, len(images) + 1))


class ValidFiles(dict):
    def __repr__(self) -> str:  # Hypothesis prints a failing example's arguments: not 30 kB of them
        return f"<valid files: {', '.join(self)}>"


@pytest.fixture(scope="module")
def valid_files(work_dir) -> dict[str, bytes]:
    """Small valid files of each kind the readers take, to be damaged."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    images[:, :10] = 0  # a real file has many zeros: short cells, as in MNIST
    digits = make_digits(images, rng.integers(0, 10, 3), "valid")
    files = ValidFiles()
    for kind in ("train", "test"):
        write_kaggle_csv(work_dir / f"valid-{kind}.csv", digits, with_labels=kind == "train")
        files[kind] = (work_dir / f"valid-{kind}.csv").read_bytes()
    files["idx-images"] = idx_bytes(images)
    files["idx-labels"] = idx_bytes(digits.labels.astype(np.uint8))
    submission = work_dir / "valid-submission.csv"
    write_submission(predictions(np.arange(1, 21), rng.integers(0, 10, 20)), submission)
    files["submission"] = submission.read_bytes()
    return files


@given(edits=EDITS, kind=st.sampled_from(["train", "test"]))
def test_damaged_kaggle_csv_raises_only_input_errors(work_dir, valid_files, edits, kind):
    path = work_dir / "damaged.csv"
    path.write_bytes(apply_edits(valid_files[kind], edits))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would reach the user beside the one error line
            digits = read_kaggle_csv(path, kind)
    except InputError as e:
        assert_refusal(e, path)
    else:
        assert isinstance(digits, Digits) and (digits.labels is not None) == (kind == "train")


@pytest.mark.parametrize("column", ["label", "pixel0", "pixel783"])
def test_huge_csv_cell_is_reported_as_written(work_dir, valid_files, column):
    """A cell of 1e30 was cast to int64: it wrapped round (with a RuntimeWarning) and was reported
    as -9223372036854775808."""
    text = valid_files["train"].decode()
    header, first, rest = text.split("\n", 2)
    cells = first.split(",")
    cells[header.split(",").index(column)] = "1e30"
    path = work_dir / "huge.csv"
    path.write_text("\n".join([header, ",".join(cells), rest]))
    high = 9 if column == "label" else 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as error:
            read_kaggle_csv(path, "train")
    assert str(error.value) == f"{path}: row 1 (line 2), column {column}: 1e+30 is outside 0..{high}"


# ---------------------------------------------------------------------------------------------
# IDX

def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@given(array=st.one_of(arrays(np.uint8, st.tuples(st.integers(0, 5), st.integers(1, 30), st.integers(1, 30))),
                       arrays(np.uint8, st.integers(0, 50))),
       compress=st.booleans())
def test_idx_round_trips_exactly(work_dir, array, compress):
    path = work_dir / ("round-trip-idx.gz" if compress else "round-trip-idx")
    path.write_bytes(gzip.compress(idx_bytes(array)) if compress else idx_bytes(array))
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@given(edits=EDITS.filter(lambda edits: all(edit[0] != "cell" for edit in edits)), compress=st.booleans(),
       damaged=st.sampled_from(["idx-images", "idx-labels"]))
def test_damaged_idx_files_raise_only_input_errors(work_dir, valid_files, edits, compress, damaged):
    paths = {}
    for kind in ("idx-images", "idx-labels"):
        data = valid_files[kind]
        if kind == damaged:  # the compressed stream or the bytes inside it
            data = apply_edits(gzip.compress(data), edits) if compress else apply_edits(data, edits)
        paths[kind] = work_dir / kind
        paths[kind].write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            digits = read_idx_pair(str(paths["idx-images"]), str(paths["idx-labels"]))
    except InputError as e:
        assert_refusal(e, paths[damaged])
    else:
        assert len(digits.labels) == len(digits.images) and digits.labels.max() <= 9


# ---------------------------------------------------------------------------------------------
# submissions

def predictions(ids: np.ndarray, labels: np.ndarray) -> Predictions:
    n = len(ids)
    return Predictions("test", np.asarray(ids, np.int64), np.full(n, -1), np.asarray(labels, np.int64),
                       np.full((n, 10), 0.1, np.float32), np.zeros((n, 28, 28), np.uint8))


@given(rows=st.lists(st.tuples(st.integers(1, MAX_IMAGE_ID), st.integers(0, 9)), min_size=1, max_size=50,
                     unique_by=lambda row: row[0]))
def test_submission_round_trips_exactly(work_dir, rows):
    ids, labels = (np.array(column, dtype=np.int64) for column in zip(*rows))
    path = write_submission(predictions(ids, labels), work_dir / "submission.csv")
    frame = read_label_file(path)
    assert list(frame.columns) == ["ImageId", "Label"]
    np.testing.assert_array_equal(frame["ImageId"].to_numpy(), ids)
    np.testing.assert_array_equal(frame["Label"].to_numpy(), labels)
    assert score(path, path) == {"accuracy": 1.0, "correct": len(rows), "n": len(rows)}


@pytest.mark.parametrize("image_id", ["1e30", str(2 ** 53), str(2 ** 53 + 1), str(2 ** 63)])
def test_huge_image_id_is_refused(work_dir, image_id):
    """1e30 was cast to int64 with a RuntimeWarning; ids past 2^53 were rounded, so that
    2^53 + 1 and 2^53 were 'the same ImageId twice'."""
    path = work_dir / "huge-id.csv"
    path.write_text(f"ImageId,Label\n{image_id},3\n{2 ** 53 - 1},4\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as error:
            read_label_file(path)
    assert str(error.value).startswith(f"{path}: row 1 (line 2), column ImageId: '")
    assert str(error.value).endswith("' is not an integer from 1 to 2^53 - 1")


@given(edits=EDITS)
def test_damaged_submission_raises_only_input_errors(work_dir, valid_files, edits):
    answers = work_dir / "answers.csv"
    answers.write_bytes(valid_files["submission"])
    path = work_dir / "damaged-submission.csv"
    path.write_bytes(apply_edits(valid_files["submission"], edits))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = score(path, answers)
    except InputError as e:
        assert str(e).startswith((f"{path}: ", f"{answers}: ")) and "\n" not in str(e), str(e)
    else:
        assert 0 <= result["correct"] <= result["n"] == 20


# ---------------------------------------------------------------------------------------------
# a slice of the long fuzz run (benchmarks/fuzz.py), and a short soak

def test_fuzz_slice_image_reader():
    result = fuzz.fuzz_images(400, seed=1)
    assert result.failures == []
    assert 0 < result.refused < result.cases == 400  # both outcomes reached: read and refused


@pytest.fixture(scope="module")
def client(tiny_run):
    with fuzz.app_client(tiny_run) as c:
        yield c


def test_fuzz_slice_upload_endpoint(client):
    result = fuzz.fuzz_upload(client, 150, seed=1)
    assert result.failures == []
    assert 0 < result.refused < result.cases == 150


def test_fuzz_slice_pixels_endpoint(client):
    result = fuzz.fuzz_pixels(client, 300, seed=1)
    assert result.failures == []
    assert 0 < result.refused < result.cases == 300


def test_soak_slice_has_no_errors(tiny_run):
    result = fuzz.soak(tiny_run, seconds=4, concurrency=16, sample_every=2, warmup_seconds=1)
    assert result.errors == 0, result.error_samples
    assert result.requests > 100 and 0 < result.valid < result.requests
    assert len(result.memory) >= 2 and result.memory[-1][1] - result.memory[0][1] < 100  # MB


def test_uploads_are_decoded_one_per_core_at_most(tiny_run, monkeypatch):
    """A 70 KB PNG can hold 36 megapixels (~0.5 GB while decoded): the server's memory is bounded
    only if it decodes no more uploads at once than it has cores, however many arrive together."""
    real_open_image, lock = digitrec.outputs.serve.open_image, threading.Lock()
    decoding, most, threads = 0, 0, set()

    def slow_open_image(data, name):
        nonlocal decoding, most
        with lock:
            decoding += 1
            most = max(most, decoding)
            threads.add(threading.get_ident())
        time.sleep(0.05)  # long enough for the other uploads to arrive
        with lock:
            decoding -= 1
        return real_open_image(data, name)

    monkeypatch.setattr(digitrec.outputs.serve, "open_image", slow_open_image)
    app, png = digitrec.outputs.serve.create_app(tiny_run), fuzz.seed_images()["png"]
    n = 3 * (os.cpu_count() or 1) + 2

    async def upload_all():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/api/predict", files={"file": ("a.png", png, "image/png")})
                                          for _ in range(n)))

    responses = asyncio.run(upload_all())
    assert {r.status_code for r in responses} == {200}
    assert most == len(threads) == min(n, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# a bad weights file, given to every command that reads it

def weights_blob(model: torch.nn.Module, config: dict, **meta) -> bytes:
    return st_save({k: v.contiguous() for k, v in model.state_dict().items()},
                   metadata={"config": json.dumps(config), **{k: json.dumps(v) for k, v in meta.items()}})


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _nan_tensors(good: bytes) -> bytes:
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    return good[:header_end] + b"\xff" * (len(good) - header_end)  # every float a NaN


BAD_WEIGHTS = {  # name: (the bad file from the good one and the run's config, what the message says)
    "truncated": (lambda good, cfg: good[:len(good) // 2], "not a readable safetensors file"),
    "garbled header": (lambda good, cfg: good[:8] + b"\x00\xff" * 50 + good[108:], "not a readable safetensors file"),
    "garbled tensors": (lambda good, cfg: _nan_tensors(good), "holds NaN or infinite values"),
    "empty": (lambda good, cfg: b"", "not a readable safetensors file"),
    "another format (torch pickle)": (lambda good, cfg: _pickled(build_model(config_from_dict(cfg)).state_dict()),
                                      "not a readable safetensors file"),
    "another project's safetensors": (lambda good, cfg: st_save({"weight": torch.zeros(3)}, metadata={"format": "pt"}),
                                      "no config in its metadata"),
    "foreign config": (lambda good, cfg: weights_blob(build_model(config_from_dict(cfg)), {**cfg, "dropout_rate": 0.3}),
                       "its config is not one this digitrec can build (unknown config field(s): dropout_rate)"),
    "wrong shapes": (lambda good, cfg: weights_blob(build_model(make_config("fast")), cfg),
                     "its tensors do not fit the 'reference' model its config describes"),
    "bad ensemble members": (lambda good, cfg: weights_blob(build_model(config_from_dict(cfg)), cfg, members=[1, 2]),
                             "its 'members' metadata is not a list of configs"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mnist_test) -> dict[str, Path]:
    """Small valid inputs for the reading commands: IDX pair, test CSV, a scanned digit."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "images-idx3-ubyte").write_bytes(idx_bytes(mnist_test.images[:5]))
    (folder / "labels-idx1-ubyte").write_bytes(idx_bytes(mnist_test.labels[:5].astype(np.uint8)))
    write_kaggle_csv(folder / "test.csv", mnist_test.subset(np.arange(5)), with_labels=False)
    Image.fromarray(255 - mnist_test.images[0]).resize((112, 112)).save(folder / "digit.png")
    return {"folder": folder, "idx": folder / "images-idx3-ubyte", "labels": folder / "labels-idx1-ubyte",
            "csv": folder / "test.csv", "png": folder / "digit.png"}


def reading_commands(run: Path, good_run: Path, inputs: dict, out: Path) -> dict[str, list[str]]:
    return {
        "evaluate": ["evaluate", str(run), "--idx", str(inputs["idx"]), str(inputs["labels"])],
        "submit": ["submit", str(run), str(inputs["csv"]), "-o", str(out / "submission.csv")],
        "predict": ["predict", str(run), str(inputs["png"]), "--show-preprocessed", str(out / "preprocessed")],
        "export": ["export", str(run), "-o", str(out / "model.onnx"), "--check-images", "10"],
        "ensemble": ["ensemble", str(good_run), str(run), "-o", str(out / "ensemble")],
        "serve": ["serve", str(run), "--port", "9"],  # fails while loading, before it listens
    }


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for folder in folders for p in folder.rglob("*")}


@pytest.mark.parametrize("damage", list(BAD_WEIGHTS))
def test_bad_weights_file_is_one_error_line_exit_2_nothing_written(damage, tiny_run, inputs, tmp_path, capsys,
                                                                   monkeypatch):
    make_bad, expected = BAD_WEIGHTS[damage]
    good_run, run, out = tmp_path / "good", tmp_path / "bad", tmp_path / "out"
    shutil.copytree(tiny_run, good_run)
    shutil.copytree(tiny_run, run)
    out.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    (run / "manifest.json").unlink()  # the reader's own checks (a folder without digests: tests/core/test_rundir.py)
    weights = run / WEIGHTS_FILE
    weights.write_bytes(make_bad(weights.read_bytes(), cfg))
    monkeypatch.chdir(out)  # default outputs would land here
    monkeypatch.setenv("DIGITREC_SERVE_RUN", "")  # serve sets it; restored afterwards
    threads = torch.get_num_threads()  # serve's app sets one torch thread before loading
    before = snapshot(tmp_path, inputs["folder"])
    try:
        for command, argv in reading_commands(run, good_run, inputs, out).items():
            code = main(argv)
            captured = capsys.readouterr()
            lines = [line for line in captured.err.splitlines() if not line.startswith("note: ")]
            assert code == 2, (command, captured.err)
            assert len(lines) == 1 and lines[0].startswith("error: "), (command, captured.err)
            assert f"{weights}: " in lines[0] and expected in lines[0], (command, lines[0])
            assert captured.out == "", (command, captured.out)
            assert snapshot(tmp_path, inputs["folder"]) == before, command
    finally:
        torch.set_num_threads(threads)


def test_weights_of_a_huge_model_are_refused_before_it_is_built(tmp_path, monkeypatch):
    """Metadata claiming a model of ~10^13 parameters is checked on the meta device, never allocated."""
    built = []
    monkeypatch.setattr("digitrec.nets.weights.build_model", lambda cfg: built.append(cfg) or build_model(cfg))
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(st_save({"weight": torch.zeros(3)},
                             metadata={"config": json.dumps(make_config("fast", width=1_000_000).to_dict())}))
    with pytest.raises(InputError, match=r"its tensors do not fit the 'fast' model its config describes: "
                                         r"\d+ missing \(first: '[a-z0-9.]+'\), 1 unexpected \(first: 'weight'\)$"):
        load_weights(path)
    assert len(built) == 1  # once, on the meta device


@pytest.mark.parametrize("damage", ["truncated", "garbled", "foreign", "wrong shape"])
def test_report_with_a_bad_predictions_file_is_one_error_line(damage, tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "manifest.json").unlink()  # the reader's own checks (a folder without digests: tests/core/test_rundir.py)
    path = run / "predictions_val.npz"
    good = path.read_bytes()
    foreign, wrong_shape = io.BytesIO(), io.BytesIO()
    np.savez(foreign, weights=np.zeros(3))
    with np.load(path) as z:
        np.savez(wrong_shape, **{**z, "probs": z["probs"][:, :5]})
    path.write_bytes({"truncated": good[:len(good) // 2], "garbled": good[:200] + bytes(400) + good[600:],
                      "foreign": foreign.getvalue(), "wrong shape": wrong_shape.getvalue()}[damage])
    before = snapshot(run)
    assert main(["report", str(run)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a digitrec predictions file ("), lines
    assert snapshot(run) == before
