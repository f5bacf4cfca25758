"""images.py: safe reading, MNIST-style preprocessing, reading numbers, and `digitrec predict`."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec.cli import main
from digitrec.files import InputError
from digitrec.images import (CENTRE, FORMATS, MAX_PIXELS, naive_resize, open_image,
                             read_images, split_digits, to_grey, to_mnist)
from .image_variants import VARIANTS, strip

SUPPORTED = "(PNG, JPEG, GIF, BMP, TIFF, WEBP)"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to claim width x height (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.fixture(scope="module")
def digits(mnist_test):
    """150 MNIST test digits, drawn with a fixed seed (every class is present)."""
    index = np.random.default_rng(0).choice(len(mnist_test), 150, replace=False)
    return mnist_test.images[index], mnist_test.labels[index]


# ---------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_supported_format_opens_from_bytes_and_path(fmt, tmp_path, mnist_test):
    image = Image.fromarray(255 - mnist_test.images[0]).convert("RGB")
    data = encode(image, fmt)
    assert open_image(data, "x").size == (28, 28)
    path = tmp_path / f"digit.{fmt.lower()}"
    path.write_bytes(data)
    assert to_mnist(open_image(path, str(path))) is not None


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "{p}: no such file"),
    (lambda p: p.mkdir(), "{p}: not a file"),
    (lambda p: p.write_bytes(b""), "{p}: file is empty"),
    (lambda p: p.write_text("label,pixel0\n1,0\n"), "{p}: not an image in a supported format " + SUPPORTED),
    (lambda p: p.write_bytes(encode(Image.new("RGB", (8, 8)), "PPM")), "{p}: not an image in a supported format " + SUPPORTED),
    (lambda p: p.write_bytes(encode(Image.new("RGB", (16, 16)), "ICO")), "{p}: not an image in a supported format " + SUPPORTED),
    (lambda p: p.write_bytes(encode(Image.new("RGB", (64, 64), "red"), "PNG")[:70]),
     "{p}: truncated or corrupt PNG image (image file is truncated)"),
    (lambda p: p.write_bytes(png_claiming(10_000, 5_000)),
     "{p}: image too large (50,000,000 pixels; the limit is 40,000,000)"),
    # past twice Pillow's own limit, Pillow raises DecompressionBombError: same message
    (lambda p: p.write_bytes(png_claiming(20_000, 20_000)),
     "{p}: image too large (400,000,000 pixels; the limit is 40,000,000)"),
])
def test_bad_files_get_one_clear_line(tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(InputError) as error:
        open_image(path, str(path))
    assert str(error.value) == message.format(p=path)


def test_truncated_jpeg_is_refused(mnist_test):
    data = encode(Image.fromarray(mnist_test.images[0]).resize((200, 200)), "JPEG")
    with pytest.raises(InputError, match=r"^cut\.jpg: truncated or corrupt JPEG image \("):
        open_image(data[:len(data) // 2], "cut.jpg")


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_raise_only_input_errors(fmt, mnist_test, recwarn):
    """Random byte flips and cuts (a small fuzz): every outcome is an image or an InputError."""
    data = encode(Image.fromarray(255 - mnist_test.images[0]).convert("RGB").resize((64, 64)), fmt)
    rng = np.random.default_rng(0)
    refused = 0
    for _ in range(100):
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            damaged[int(rng.integers(len(damaged)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            damaged = damaged[:int(rng.integers(1, len(damaged)))]
        try:
            to_mnist(open_image(bytes(damaged), "damaged"))
        except InputError as e:
            assert str(e).startswith("damaged: ") and "\n" not in str(e)
            refused += 1
    assert refused > 0
    assert not [w for w in recwarn if "PIL" in w.filename]  # Pillow's metadata warnings are kept quiet


def test_pixel_limit_is_width_times_height():
    assert MAX_PIXELS == 40_000_000
    side = int(MAX_PIXELS ** 0.5)  # a header just under the limit is decoded (and found corrupt)
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_image(png_claiming(side, side), "ok-size.png")


def test_alpha_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black
    image.putpixel((1, 1), (0, 0, 0, 255))
    grey = to_grey(image)
    assert grey[0, 0] == 1.0 and grey[1, 1] == 0.0
    assert to_mnist(Image.new("RGBA", (50, 50), (0, 0, 0, 0))) is None  # empty canvas: nothing drawn


def test_exif_orientation_is_applied(mnist_test):
    upright = Image.fromarray(255 - mnist_test.images[0]).resize((84, 84))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be turned 90 degrees clockwise for display
    photo = open_image(encode(upright.rotate(90, expand=True), "JPEG", exif=exif, quality=95), "phone.jpg")
    assert np.abs(to_mnist(photo).astype(int) - to_mnist(upright)).mean() < 3


def test_sixteen_bit_scans_are_scaled(mnist_test):
    digit = (65535 - mnist_test.images[0].astype(np.int32) * 200).astype(np.uint16)  # dark ink, 16-bit
    out = to_mnist(Image.fromarray(digit))
    assert out is not None and np.abs(out.astype(int) - to_mnist(Image.fromarray(mnist_test.images[0]))).mean() < 2


# ---------------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize("image", [
    Image.new("L", (60, 40), 255), Image.new("L", (60, 40), 0), Image.new("RGB", (60, 40), (200, 180, 90)),
    Image.fromarray(np.random.default_rng(0).integers(230, 256, (80, 80), dtype=np.uint8)),  # paper texture
    Image.fromarray(np.pad(np.zeros((1, 1), np.uint8), 100, constant_values=255)),  # one dust speck
], ids=["white", "black", "coloured", "paper-texture", "speck"])
def test_blank_images_have_no_digit(image):
    assert to_mnist(image) is None
    assert split_digits(image) == []


def test_mnist_digits_come_back_as_themselves(digits):
    images, _ = digits
    ys, xs = np.mgrid[:28, :28]
    for digit in images[:40]:
        out = to_mnist(Image.fromarray(digit))
        assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
        assert np.abs(out.astype(int) - digit).mean() < 4
        mass = out.astype(float)
        assert abs((ys * mass).sum() / mass.sum() - CENTRE) <= 0.5
        assert abs((xs * mass).sum() / mass.sum() - CENTRE) <= 0.5
        rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
        assert 19 <= max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21  # longer side 20 px


# At scale 1 the 20 px digit is 13 px after the page is shrunk to 1024 px: it comes back blurred.
@pytest.mark.parametrize("scale, likeness", [(1, 0.8), (3, 0.9)])
def test_a_small_digit_on_a_big_page_is_found(digits, scale, likeness):
    images, _ = digits
    for digit in images[:5]:
        page = Image.new("RGB", (1600, 1200), (245, 245, 240))  # shrunk to 1024 px wide before reading
        page.paste(Image.fromarray(255 - digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC), (900, 300))
        out = to_mnist(page)
        assert out is not None  # its ink is 0.01-0.05% of the page
        # the same digit, a little blurred by the page's shrinking, perhaps one pixel off
        assert best_shifted_correlation(out, to_mnist(Image.fromarray(digit))) > likeness


def best_shifted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return max(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_polarity_does_not_matter(digits):
    images, _ = digits
    for digit in images[:20]:
        light = to_mnist(Image.fromarray(digit))
        dark = to_mnist(Image.fromarray(255 - digit))
        assert np.abs(light.astype(int) - dark).mean() < 1


def test_label_components_matches_a_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.uniform(0.1, 0.6)
        labels, n = label_components(mask)
        assert n == len(np.unique(labels[mask]))
        assert ((labels > 0) == mask).all()
        expected = flood_fill(mask)  # same partition, whatever the numbering
        pairs = set(zip(labels[mask].tolist(), expected[mask].tolist()))
        assert len(pairs) == n == expected.max()


def flood_fill(mask: np.ndarray) -> np.ndarray:
    labels = np.zeros(mask.shape, int)
    n = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        n += 1
        stack = [start]
        labels[start] = n
        while stack:
            r, c = stack.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not labels[rr, cc]:
                        labels[rr, cc] = n
                        stack.append((rr, cc))
    return labels


# ---------------------------------------------------------------------------------------------
# accuracy on real-looking images


@pytest.fixture(scope="module")
def classify(tiny_run):
    from digitrec.checkpoint import load_run_model
    from digitrec.evaluate import predict_probs

    model, _, _ = load_run_model(tiny_run)
    return lambda images: predict_probs(model, np.stack(images))


# Required accuracy, in points below the same model on the same digits, clean. The model is the
# tiny 1-epoch fixture (~85% clean), so the figures are relative. Measured on 300 digits with it:
# every variant within 4 points of clean except thick strokes (-10); the naive resize reads
# 10-14%, chance level. With a 96% model (1 epoch on 10,000 images) every variant read 95.3-96.7%
# except thick strokes, 92.3%, and the naive resize 10-28%.
ALLOWED_DROP = {name: 0.06 for name in VARIANTS} | {"thick": 0.15}
NAIVE_AT_MOST = 0.35


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_preprocessing_reads_real_looking_images(variant, digits, classify):
    images, labels = digits
    rng = np.random.default_rng(1)
    pictures = [VARIANTS[variant](digit, rng) for digit in images]
    clean = (classify(images).argmax(1) == labels).mean()
    prepared = [to_mnist(p) for p in pictures]
    assert all(p is not None for p in prepared)
    accuracy = (classify(prepared).argmax(1) == labels).mean()
    naive = (classify([naive_resize(p) for p in pictures]).argmax(1) == labels).mean()
    print(f"{variant}: clean {clean:.3f}, preprocessed {accuracy:.3f}, naive resize {naive:.3f}")
    assert accuracy >= clean - ALLOWED_DROP[variant]
    assert naive <= NAIVE_AT_MOST < accuracy


def test_numbers_are_split_left_to_right(digits, classify):
    images, labels = digits
    rng = np.random.default_rng(2)
    parts, truth, strips_split_right = [], [], 0
    for start in range(0, 120, 4):
        k = int(rng.integers(2, 5))
        found = split_digits(strip(list(images[start:start + k]), rng))
        if len(found) == k:
            strips_split_right += 1
            parts += found
            truth += labels[start:start + k].tolist()
    clean = (classify(images[:120]).argmax(1) == labels[:120]).mean()
    # split into the right number of digits: measured 988 of 990 strips (the two misses hold
    # MNIST digits with a speck of ink beside them); 29 of these 30 allows one such miss
    assert strips_split_right >= 29
    assert (classify(parts).argmax(1) == np.array(truth)).mean() >= clean - 0.06


# ---------------------------------------------------------------------------------------------
# read_images and the CLI


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, digits):
    images, labels = digits
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    VARIANTS["coloured"](images[0], rng).save(folder / "a_digit.jpg", quality=90)
    VARIANTS["transparent"](images[1], rng).save(folder / "b_digit.png")
    Image.new("RGB", (40, 40), "white").save(folder / "c_blank.png")
    (folder / "d_broken.png").write_bytes(encode(Image.new("RGB", (64, 64)), "PNG")[:70])
    (folder / "notes.txt").write_text("not an image; ignored inside a folder")
    strip(list(images[2:5]), rng).save(folder / "number.gif")
    return folder, labels


def test_read_images_keeps_going_past_bad_files(image_dir, classify):
    folder, _ = image_dir
    readings = read_images([folder, folder / "missing.png"], lambda x: classify(list(x)))
    names = [Path(r.name).name for r in readings]
    assert names == ["a_digit.jpg", "b_digit.png", "c_blank.png", "d_broken.png", "number.gif", "missing.png"]
    by_name = dict(zip(names, readings))
    assert by_name["c_blank.png"].digits == [] and by_name["c_blank.png"].error is None
    assert by_name["d_broken.png"].error.endswith("truncated or corrupt PNG image (image file is truncated)")
    assert by_name["missing.png"].error == f"{folder / 'missing.png'}: no such file"
    for r in readings:
        assert np.allclose(r.probs.sum(1), 1, atol=1e-5) and r.images.shape == (len(r.digits), 28, 28)


def test_predict_json(image_dir, tiny_run, capsys):
    folder, labels = image_dir
    files = [folder / "a_digit.jpg", folder / "b_digit.png", folder / "c_blank.png"]
    assert main(["predict", str(tiny_run), *map(str, files), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == list(map(str, files))
    for row in rows[:2]:
        top3 = row["digits"][0]["top3"]
        assert len(top3) == 3 and top3[0]["class"] == row["digits"][0]["digit"] == int(row["number"])
        assert top3[0]["probability"] >= top3[1]["probability"] >= top3[2]["probability"]
    assert rows[2] == {"file": str(files[2]), "number": None, "digits": [], "error": "no digit found"}


def test_predict_multi_csv_and_errors(image_dir, tiny_run, capsys, tmp_path):
    folder, labels = image_dir
    code = main(["predict", str(tiny_run), str(folder), "--multi", "--format", "csv",
                 "--show-preprocessed", str(tmp_path / "seen")])
    out, err = capsys.readouterr()
    assert code == 2  # one file failed; the others were still read
    lines = out.splitlines()
    assert lines[0] == "file,number,position,digit,confidence,top2,p2,top3,p3,error"
    number_rows = [line.split(",") for line in lines if "number.gif" in line]
    assert [row[2] for row in number_rows] == ["1", "2", "3"]
    assert len({row[1] for row in number_rows}) == 1 and len(number_rows[0][1]) == 3
    assert any(line.endswith(",no digit found") for line in lines)
    assert f"error: {folder / 'd_broken.png'}: truncated or corrupt PNG image (image file is truncated)" in err
    assert err.rstrip().endswith("error: 1 of 5 images could not be read")
    seen = sorted(p.name for p in (tmp_path / "seen").iterdir())
    assert seen == ["001-a_digit.png", "002-b_digit.png", "005-number-1.png", "005-number-2.png", "005-number-3.png"]
    assert np.asarray(Image.open(tmp_path / "seen" / "001-a_digit.png")).shape == (28, 28)


def test_predict_table_and_empty_folder(image_dir, tiny_run, capsys, tmp_path):
    folder, _ = image_dir
    assert main(["predict", str(tiny_run), str(folder / "c_blank.png"), str(folder / "a_digit.jpg")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "number", "digit", "confidence", "top-3"]
    assert table[1].endswith("no digit found")
    assert len(table) == 3
    assert main(["predict", str(tiny_run), str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: no image files in {tmp_path}\n"
