"""Data readers: the built-in MNIST, Kaggle CSV (good and every kind of bad), IDX, export."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from digitrec.core import data
from digitrec.core.data import MNIST_TEST_LABEL_COUNTS, PIXEL_COLUMNS, TRAIN_COLUMNS, decode_mnist_member, read_idx, read_idx_pair, read_kaggle_csv, write_kaggle_csv
from digitrec.core.files import InputError
from tests.conftest import synthetic_digits


# --- the built-in MNIST ---------------------------------------------------------------------


def test_mnist_has_the_official_sizes_and_counts(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60_000, 28, 28) and mnist_train.images.dtype == np.uint8
    assert mnist_test.images.shape == (10_000, 28, 28)
    assert tuple(np.bincount(mnist_test.labels, minlength=10)) == MNIST_TEST_LABEL_COUNTS
    assert mnist_train.images.max() == 255 and mnist_train.images.min() == 0
    assert list(mnist_test.ids[:3]) == [1, 2, 3]


def test_second_load_is_offline(mnist_train, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run once MNIST is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert len(data.load_mnist("test")) == 10_000


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (__builtin__|builtins)\.print"):
        data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()


def test_mnist_member_with_wrong_hash_is_not_unpickled():
    with pytest.raises(InputError, match="sha256 mismatch; refusing to unpickle"):
        decode_mnist_member(gzip.compress(pickle.dumps(([], [], []))))


# --- Kaggle CSV -------------------------------------------------------------------------------


def _train_csv_text(rows: list[list]) -> str:
    return ",".join(TRAIN_COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)


def _good_rows(n=3):
    rng = np.random.default_rng(0)
    return [[int(rng.integers(10))] + rng.integers(0, 256, 784).tolist() for _ in range(n)]


def test_kaggle_csv_round_trip(tmp_path):
    digits = synthetic_digits(50)
    write_kaggle_csv(tmp_path / "train.csv", digits, with_labels=True)
    write_kaggle_csv(tmp_path / "test.csv", digits, with_labels=False)
    header = (tmp_path / "train.csv").read_text().splitlines()[0]
    assert header == "label," + ",".join(PIXEL_COLUMNS)
    train = read_kaggle_csv(tmp_path / "train.csv", "train")
    test = read_kaggle_csv(tmp_path / "test.csv", "test")
    np.testing.assert_array_equal(train.images, digits.images)
    np.testing.assert_array_equal(train.labels, digits.labels)
    np.testing.assert_array_equal(test.images, digits.images)
    assert test.labels is None and list(test.ids) == list(range(1, 51))


def test_pixel_k_is_row_k_div_28_column_k_mod_28(tmp_path):
    row = [3] + [0] * 784
    row[1 + 30] = 200  # pixel30 -> row 1, column 2
    (tmp_path / "t.csv").write_text(_train_csv_text([row]))
    image = read_kaggle_csv(tmp_path / "t.csv", "train").images[0]
    assert image[1, 2] == 200 and image.sum() == 200


def test_excel_csv_with_bom_and_crlf_is_valid(tmp_path):
    rows = _good_rows()
    text = _train_csv_text(rows).replace("\n", "\r\n")
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    digits = read_kaggle_csv(tmp_path / "excel.csv", "train")
    assert digits.labels.tolist() == [r[0] for r in rows]
    assert digits.images.reshape(3, -1).tolist() == [r[1:] for r in rows]


def test_compressed_csvs_and_kaggles_whole_download_are_read(tmp_path):
    import zipfile

    rows = _good_rows()
    train_text = _train_csv_text(rows)
    test_text = ",".join(PIXEL_COLUMNS) + "\n" + "".join(",".join(map(str, r[1:])) + "\n" for r in rows[:2])
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(train_text.encode()))
    with zipfile.ZipFile(tmp_path / "digit-recognizer.zip", "w") as z:  # what Kaggle's download holds
        z.writestr("train.csv", train_text)
        z.writestr("test.csv", test_text)
        z.writestr("sample_submission.csv", "ImageId,Label\n1,0\n")
    assert read_kaggle_csv(tmp_path / "train.csv.gz", "train").labels.tolist() == [r[0] for r in rows]
    train = read_kaggle_csv(tmp_path / "digit-recognizer.zip", "train")
    test = read_kaggle_csv(tmp_path / "digit-recognizer.zip", "test")
    assert train.images.reshape(3, -1).tolist() == [r[1:] for r in rows] and len(test) == 2
    assert train.source == f"{tmp_path / 'digit-recognizer.zip'}:train.csv"
    assert read_kaggle_csv(tmp_path / "train.csv.gz", "auto").labels.tolist() == [r[0] for r in rows]
    assert read_kaggle_csv(tmp_path / "digit-recognizer.zip", "auto").source.endswith(":train.csv")


def test_spaces_after_the_commas_are_read(tmp_path):
    rows = _good_rows()
    (tmp_path / "spaced.csv").write_text(_train_csv_text(rows).replace(",", ", "))
    assert read_kaggle_csv(tmp_path / "spaced.csv", "train").images.reshape(3, -1).tolist() == [r[1:] for r in rows]


def test_bad_compressed_csvs_get_one_line(tmp_path):
    import zipfile

    cases = {"bad.gz": b"\x1f\x8b\x08\x00garbage", "bad.zip": b"PK\x03\x04garbage",
             "half.csv.gz": gzip.compress(_train_csv_text(_good_rows()).encode())[:500]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.writestr("a.csv", "x")
        z.writestr("b.csv", "y")
    expected = {"bad.gz": "truncated or corrupt gzip file", "bad.zip": "truncated or corrupt zip file (File is not a zip file)",
                "half.csv.gz": "truncated or corrupt gzip file",
                "two.zip": "a zip file must hold one CSV, or one named train.csv (it holds a.csv, b.csv)"}
    for name, message in expected.items():
        with pytest.raises(InputError) as e:
            read_kaggle_csv(tmp_path / name, "train")
        assert str(e.value).startswith(f"{tmp_path / name}: {message}") and "\n" not in str(e.value)


def _bad(tmp_path, text: str | bytes, kind="train") -> str:
    path = tmp_path / "bad.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as e:
        read_kaggle_csv(path, kind)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message[len(str(path)) + 2:]


def test_bad_kaggle_inputs_name_file_row_and_column(tmp_path):
    rows = _good_rows()
    header = ",".join(TRAIN_COLUMNS)

    def body(mutate):
        r = [list(x) for x in rows]
        mutate(r)
        return "".join(",".join(map(str, x)) + "\n" for x in r)

    assert _bad(tmp_path, b"") == "file is empty"
    assert _bad(tmp_path, header + "\n") == "no data rows after the header"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[1].__setitem__(5, "abc"))) == \
        "row 2 (line 3), column pixel4: 'abc' is not a number"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[2].__setitem__(1, ""))) == \
        "row 3 (line 4), column pixel0: empty cell (missing value)"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[0].__setitem__(784, 256))) == \
        "row 1 (line 2), column pixel783: 256 is outside 0..255"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[1].__setitem__(3, -1))) == \
        "row 2 (line 3), column pixel2: -1 is outside 0..255"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[2].__setitem__(0, 10))) == \
        "row 3 (line 4), column label: 10 is outside 0..9"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[0].__setitem__(9, 1.5))) == \
        "row 1 (line 2), column pixel8: 1.5 is not an integer"
    assert _bad(tmp_path, header + "\n" + body(lambda r: r[1].append(7))) == \
        "row 2 (line 3): expected 785 cells, found 786"
    assert _bad(tmp_path, ",".join(TRAIN_COLUMNS[:-1]) + "\n") == "header: missing column 'pixel783'"
    assert _bad(tmp_path, header + ",extra\n") == "header, column 786: unexpected column 'extra'"
    assert _bad(tmp_path, header + ",pixel5\n") == "header, column 786: duplicated column 'pixel5'"
    assert _bad(tmp_path, ",".join(PIXEL_COLUMNS) + "\n" + "0," * 783 + "0\n") == \
        "this is a test file (no 'label' column); a train file is expected here"
    assert _bad(tmp_path, header + "\n" + body(lambda r: None), kind="test") == \
        "this is a train file (it has a 'label' column); a test file is expected here"
    assert _bad(tmp_path, b"label,\xff\xfe" + b"x" * 2000) == "not UTF-8 text (byte 6): is this a CSV file?"
    assert _bad(tmp_path, body(lambda r: None)) == \
        "no header: the first line holds numbers, where a Kaggle CSV starts with label,pixel0,..."
    assert _bad(tmp_path, "," + header + "\n") == \
        "header, column 1: unexpected column '' (an index column, as pandas' to_csv writes without index=False?)"


def test_binary_file_is_an_input_error_not_a_traceback(tmp_path):
    path = tmp_path / "image.csv"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(InputError):
        read_kaggle_csv(path, "train")


def test_cli_bad_csv_exits_2_with_one_error_line(tmp_path):
    (tmp_path / "bad.csv").write_text(",".join(TRAIN_COLUMNS) + "\n" + "1," + "0," * 783 + "999\n")
    done = subprocess.run([sys.executable, "-m", "digitrec.cli", "data", "check", str(tmp_path / "bad.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.csv'}: row 1 (line 2), column pixel783: 999 is outside 0..255"]
    assert "Traceback" not in done.stderr


def test_cli_check_describes_a_good_file(tmp_path):
    digits = synthetic_digits(20)
    write_kaggle_csv(tmp_path / "train.csv", digits, with_labels=True)
    done = subprocess.run([sys.executable, "-m", "digitrec.cli", "data", "check", str(tmp_path / "train.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counts = np.bincount(digits.labels, minlength=10)
    assert "20 images" in done.stdout and "missing values: 0" in done.stdout
    assert "label counts: " + "  ".join(f"{d}:{c}" for d, c in enumerate(counts)) in done.stdout


# --- IDX ----------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_idx_plain_and_gzip(tmp_path, mnist_test):
    images, labels = mnist_test.images[:100], mnist_test.labels[:100].astype(np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    digits = read_idx_pair(str(tmp_path / "t10k-images-idx3-ubyte"), str(tmp_path / "t10k-labels-idx1-ubyte.gz"))
    np.testing.assert_array_equal(digits.images, images)
    np.testing.assert_array_equal(digits.labels, labels)


def test_bad_idx_files(tmp_path):
    (tmp_path / "magic").write_bytes(struct.pack(">II", 1234, 0))
    with pytest.raises(InputError, match="bad IDX magic number 1234"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(InputError, match="promises 2352 bytes of data, file has 2347"):
        read_idx(tmp_path / "short")
    (tmp_path / "images").write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    (tmp_path / "labels").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(InputError, match="4 labels for 3 images"):
        read_idx_pair(str(tmp_path / "images"), str(tmp_path / "labels"))


@pytest.fixture()
def http_server(tmp_path):
    """A loopback HTTP server over tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_idx_from_url_with_pinned_sha256(tmp_path, http_server):
    root, url = http_server
    payload = gzip.compress(_idx_bytes(np.arange(5, dtype=np.uint8)))
    (root / "labels.gz").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    assert read_idx(f"{url}/labels.gz", sha, cache).tolist() == [0, 1, 2, 3, 4]
    assert (cache / "downloads" / sha).is_file()
    with pytest.raises(InputError, match="sha256 mismatch"):
        read_idx(f"{url}/labels.gz", "0" * 64, cache)
    with pytest.raises(InputError, match="a URL needs its --sha256 pinned"):
        read_idx(f"{url}/labels.gz", None, cache)
    (root / "labels.gz").unlink()  # cached by hash: no second download
    assert read_idx(f"{url}/labels.gz", sha, cache).tolist() == [0, 1, 2, 3, 4]


# --- export -----------------------------------------------------------------------------------


def test_kaggle_like_split_is_42k_28k_of_all_70k(mnist_train, mnist_test):
    train, test = data.kaggle_like_split()
    assert (len(train), len(test)) == (42_000, 28_000)
    assert np.array_equal(np.bincount(train.labels, minlength=10) + np.bincount(test.labels, minlength=10),
                          np.bincount(mnist_train.labels, minlength=10) + np.bincount(mnist_test.labels, minlength=10))
    again, _ = data.kaggle_like_split()
    np.testing.assert_array_equal(train.images, again.images)


def test_export_official_split_reads_back(tmp_path, mnist_test):
    train_csv, test_csv, answers_csv = data.export_csv("official", tmp_path)
    test = read_kaggle_csv(test_csv, "test")
    np.testing.assert_array_equal(test.images, mnist_test.images)
    answers = answers_csv.read_text().splitlines()
    assert answers[0] == "ImageId,Label" and len(answers) == 10_001
    assert answers[1] == f"1,{mnist_test.labels[0]}"
    assert train_csv.read_text()[:20].startswith("label,pixel0,pixel1,")
