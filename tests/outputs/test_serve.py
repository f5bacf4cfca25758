"""The web app's JSON API, in process: answers match the model, bad input never gets a 5xx."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():  # starlette's test client nags about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from digitrec.nets.weights import load_run_model
from digitrec.cli import build_parser, main
from digitrec.nets.predict import evaluate_run, predict_probs
from digitrec.core.files import InputError, read_json
from digitrec.outputs.images import NO_DIGIT, open_image, to_mnist
from digitrec.outputs.serve import create_app


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_run_model(tiny_run)[0]


def png_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt)
    return buf.getvalue()


def scanned(digit: np.ndarray) -> bytes:
    """An MNIST digit as a user would upload it: dark ink on white paper, 10x larger, off-centre."""
    page = np.full((400, 360), 255, dtype=np.uint8)
    page[60:340, 30:310] = 255 - np.asarray(Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR))
    return png_bytes(page)


def post_pixels(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/api/predict/pixels", content=data, headers={"content-type": content_type})


def upload(client, data: bytes, name="digit.png", mime="image/png"):
    return client.post("/api/predict", files={"file": (name, data, mime)})


# ---------------------------------------------------------------------------------------------
# metadata


def test_health_and_model_metadata(client, tiny_run):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/api/model").json()
    metrics = read_json(tiny_run / "metrics.json")
    assert info["run"] == tiny_run.name
    assert (info["preset"], info["model"], info["parameters"]) == ("seed", "reference", 887_530)
    # no evaluation_test.json in a fresh run: the validation accuracy, and said so
    assert info["accuracy"] == metrics["val_accuracy"]
    assert info["accuracy_on"] == "validation" and info["accuracy_n"] == metrics["n_val"]
    assert "environment" in metrics and "environment" not in info["metrics"]  # no machine details
    del metrics["environment"]
    assert info["metrics"] == metrics and info["max_body_bytes"] == 1 << 20


def test_model_metadata_reports_test_accuracy_once_evaluated(tiny_run, tmp_path, mnist_test):
    run_dir = tmp_path / "evaluated"
    shutil.copytree(tiny_run, run_dir)
    preds = evaluate_run(run_dir, mnist_test.subset(np.arange(500)), "test")
    info = TestClient(create_app(run_dir)).get("/api/model").json()
    assert info["accuracy_on"] == "test" and info["accuracy_n"] == 500
    assert info["accuracy"] == pytest.approx(float((preds.y_pred == preds.y_true).mean()))


# ---------------------------------------------------------------------------------------------
# predictions


def test_pixels_answer_is_the_models_answer(client, model, mnist_test):
    images = mnist_test.images[:12]
    expected = predict_probs(model, images)
    for image, probs in zip(images, expected):
        flat = post_pixels(client, {"pixels": image.ravel().tolist()})
        square = post_pixels(client, {"pixels": image.tolist()})
        assert flat.status_code == square.status_code == 200
        answer = flat.json()
        assert answer == square.json()
        assert answer["image"] == image.tolist()  # taken as given: no cropping or centring
        assert np.allclose(answer["probabilities"], probs, atol=1e-6)
        assert answer["label"] == int(np.argmax(answer["probabilities"]))
        assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_pixels_accept_floats_and_round_them(client):
    pixels = np.zeros(784)
    pixels[300:320] = 127.6
    answer = post_pixels(client, {"pixels": pixels.tolist()}).json()
    assert np.asarray(answer["image"]).ravel()[300:320].tolist() == [128] * 20


SHAPE = "pixels: must be 784 numbers or 28 rows of 28 numbers"


@pytest.mark.parametrize("body, detail", [
    ({"pixels": [0] * 783}, f"{SHAPE}, got shape [783]"),
    ({"pixels": [[0] * 28] * 27}, f"{SHAPE}, got shape [27, 28]"),
    ({"pixels": [[[0] * 28] * 28]}, f"{SHAPE}, got shape [1, 28, 28]"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27]}, f"{SHAPE} (ragged or nested input)"),
    ({"pixels": ["0"] * 784}, "pixels: must be numbers (not strings, booleans or null)"),
    ({"pixels": [True] * 784}, "pixels: must be numbers (not strings, booleans or null)"),
    ({"pixels": [None] * 784}, "pixels: must be numbers (not strings, booleans or null)"),
    ({"pixels": [256] + [0] * 783}, "pixels: must be in 0..255"),
    ({"pixels": [-1] + [0] * 783}, "pixels: must be in 0..255"),
    ({"pixels": [10 ** 30] + [0] * 783}, "pixels: must be in 0..255"),
    ({"pixels": [10 ** 400] + [0] * 783}, "pixels: must be in 0..255"),
    ({"pixels": [0] * 783 + ["x"]}, "pixels: must be numbers (not strings, booleans or null)"),
    ('{"pixels": [NaN' + ", 0" * 783 + "]}", "pixels: must be in 0..255"),
    ('{"pixels": [Infinity' + ", 0" * 783 + "]}", "pixels: must be in 0..255"),
    ({"pixels": "0" * 784}, "pixels: Input should be a valid list"),
    ({"pixel": [0] * 784}, "pixels: Field required"),
    ([0] * 784, "body: Input should be a valid dictionary or object to extract fields from"),
    ('{"pixels": [0, 0', "malformed JSON at character 16: Expecting ',' delimiter"),
    ('{"pixels": [0,]}', "malformed JSON at character 14: Expecting value"),
])
def test_pixels_bad_input_is_422_with_a_clear_message(client, body, detail):
    response = post_pixels(client, body)
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


def test_pixels_body_is_json_when_declared_so_or_undeclared(client):
    body = json.dumps({"pixels": [0] * 784})
    for content_type in ("application/json; charset=utf-8", "application/vnd.digits+json"):
        assert post_pixels(client, body, content_type).status_code == 200
    response = client.post("/api/predict/pixels", content=body.encode(), headers={"content-type": ""})
    assert response.status_code == 200


def test_pixels_request_body_is_documented(client):
    operation = client.get("/openapi.json").json()["paths"]["/api/predict/pixels"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["pixels"] and "784 values" in schema["properties"]["pixels"]["description"]
    assert "Prediction" in json.dumps(operation["responses"]["200"])


def test_pixels_need_a_json_body(client):
    assert post_pixels(client, b"").json() == {"detail": "body: Field required"}
    response = post_pixels(client, json.dumps({"pixels": [0] * 784}), "text/plain")
    assert response.status_code == 422
    assert response.json()["detail"] == "body: Input should be a valid dictionary or object to extract fields from"


def test_upload_goes_through_the_same_preprocessing_as_predict(client, model, mnist_test):
    for digit in mnist_test.images[:4]:
        data = scanned(digit)
        expected_image = to_mnist(open_image(data, "digit.png"))  # what `digitrec predict` computes
        answer = upload(client, data).json()
        assert answer["image"] == expected_image.tolist()
        assert np.allclose(answer["probabilities"], predict_probs(model, expected_image[None])[0], atol=1e-6)
    # a JPEG photo of the same kind reads too
    photo = png_bytes(Image.open(io.BytesIO(scanned(mnist_test.images[0]))), "JPEG")
    assert upload(client, photo, "photo.jpg", "image/jpeg").status_code == 200


def test_upload_of_a_good_mnist_digit_reads_it(client, mnist_test):
    # the fixture model is ~83% accurate: check agreement with the direct answer, not the truth
    answers = [upload(client, scanned(d)).json()["label"] for d in mnist_test.images[:20]]
    assert np.mean(np.array(answers) == mnist_test.labels[:20]) >= 0.6


def truncated_png() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))[:300]


def bomb_png() -> bytes:
    """8000 x 6000 = 48 megapixels in a few kilobytes: over MAX_PIXELS (40 M)."""
    return png_bytes(Image.new("1", (8000, 6000), 1))


def images_error(data: bytes, name: str) -> str:
    """The message `digitrec predict` gives for a file it cannot read (images.open_image)."""
    with pytest.raises(InputError) as e:
        open_image(data, name)
    return str(e.value)


@pytest.mark.parametrize("name, make", [
    ("notes.png", lambda: b"hello, not an image"),
    ("empty.png", lambda: b""),
    ("huge.png", bomb_png),
    ("cut.png", truncated_png),
])
def test_upload_bad_images_are_400_with_predicts_message(client, name, make):
    data = make()
    response = upload(client, data, "../../somewhere/" + name)  # only the base name is ever used
    detail = response.json()["detail"]
    assert response.status_code == 400 and detail == images_error(data, name)
    assert detail.startswith(f"{name}: ") and "\n" not in detail


def test_upload_without_a_digit_is_400(client):
    response = upload(client, png_bytes(np.full((50, 50), 255, np.uint8)), "blank.png")
    assert (response.status_code, response.json()) == (400, {"detail": f"blank.png: {NO_DIGIT}"})


def test_upload_needs_the_file_field(client):
    response = client.post("/api/predict", files={"image": ("d.png", b"x", "image/png")})
    assert (response.status_code, response.json()) == (422, {"detail": "file: Field required"})
    response = client.post("/api/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code in (400, 422) and response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# safety


def test_body_limit_answers_413(tiny_run):
    limit = 20_000
    app = create_app(tiny_run, max_body_bytes=limit)
    small = TestClient(app)
    detail = {"detail": f"request body too large: the limit is {limit} bytes"}
    big_json = json.dumps({"pixels": [255.0000001] * 784 * 2})
    assert len(big_json) > limit
    response = post_pixels(small, big_json)
    assert (response.status_code, response.json()) == (413, detail)
    response = upload(small, b"\0" * (limit + 1))
    assert (response.status_code, response.json()) == (413, detail)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b"x" * 4096

    response = small.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert (response.status_code, response.json()) == (413, detail)
    assert post_pixels(small, {"pixels": [0] * 784}).status_code == 200  # under the limit: fine


def test_declared_oversize_body_is_refused_before_reading_it(tiny_run):
    import asyncio

    app = create_app(tiny_run)
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "raw_path": b"/api/predict",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "headers": [(b"content-length", str(10 ** 9).encode()), (b"content-type", b"image/png")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "request body too large: the limit is 1048576 bytes"}


def test_uploads_stay_in_memory(client, monkeypatch):
    # the multipart parser spools parts to a SpooledTemporaryFile: rolling over would write to disk
    rollovers = []
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: rollovers.append(self))
    noise = np.random.default_rng(1).integers(0, 256, (1044, 1000), dtype=np.uint8)
    data = png_bytes(noise)  # incompressible: a PNG just under the 1 MiB body limit
    assert 1_040_000 < len(data) < (1 << 20) - 500
    response = upload(client, data, "noise.png")
    assert response.status_code in (200, 400) and rollovers == []
    with pytest.raises(ValueError, match="max_body_bytes must be at most 1048576"):
        create_app("unused", max_body_bytes=(1 << 20) + 1)


def test_page_is_self_contained_under_a_strict_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son\w+\s*=", html) and " style=" not in html  # no inline handlers or styles
    assert "http://" not in html and "https://" not in html  # nothing from another origin
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text


def test_api_docs_work_offline(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(a.startswith("/") for a in assets), assets  # no CDN
    assert all(client.get(a).status_code == 200 for a in assets)
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/predict", "/api/predict/pixels", "/api/model", "/healthz"} <= set(paths)


def test_other_errors_are_json_too(client):
    assert client.get("/nope").json() == {"detail": "Not Found"}
    response = client.get("/api/predict")
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})


def test_fuzz_no_malformed_body_gets_a_5xx(client):
    rng = np.random.default_rng(2026)
    good_png = scanned(np.eye(28, dtype=np.uint8) * 255)
    json_values = [None, True, 0, -1, 1e308, "x", [], {}, [[]], [0] * 784, [[0] * 28] * 28, {"pixels": None}]

    def random_json():
        value = json_values[rng.integers(len(json_values))]
        for _ in range(rng.integers(0, 4)):
            value = [value] * int(rng.integers(1, 30)) if rng.random() < 0.5 else {"pixels": value}
        return json.dumps(value).encode()

    def mutate(data: bytes) -> bytes:
        data = bytearray(data)
        for _ in range(rng.integers(1, 20)):
            op = rng.integers(3)
            at = int(rng.integers(len(data))) if data else 0
            if op == 0 and data:
                data[at] = rng.integers(256)
            elif op == 1:
                data[at:at + int(rng.integers(1, 50))] = b""
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 50)))
        return bytes(data)

    statuses = []
    for i in range(300):
        kind = i % 6
        if kind == 0:
            response = post_pixels(client, rng.bytes(int(rng.integers(0, 3000))))
        elif kind == 1:
            response = post_pixels(client, random_json())
        elif kind == 2:
            response = post_pixels(client, mutate(json.dumps({"pixels": [7] * 784}).encode()))
        elif kind == 3:
            response = upload(client, mutate(good_png), mime=["image/png", "text/plain", ""][i % 3])
        elif kind == 4:
            response = upload(client, rng.bytes(int(rng.integers(0, 5000))), name=rng.bytes(8).hex())
        else:
            boundary = "b" + rng.bytes(6).hex()
            body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n".encode()
            body = mutate(body + good_png + f"\r\n--{boundary}--\r\n".encode())
            response = client.post("/api/predict", content=body,
                                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code < 500, (i, response.status_code, response.text)
        assert isinstance(response.json()["detail" if response.status_code != 200 else "label"], (str, int))
        statuses.append(response.status_code)
    assert {400, 422} <= set(statuses)  # the fuzz reached both kinds of refusal


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_serves_on_loopback_by_default(capsys):
    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert main(["serve", "/no/such/run"]) == 2
    assert capsys.readouterr().err == "error: /no/such/run: no such run directory\n"


@pytest.mark.slow
def test_cli_serves_with_several_worker_processes(tiny_run, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "digitrec.cli", "serve", str(tiny_run), "--port", str(port),
                               "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "server did not answer in 90 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/api/predict/pixels", json={"pixels": [0] * 784}).json()
        assert len(answer["probabilities"]) == 10 and answer["image"] == [[0] * 28] * 28
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        workers = [c for c in children if b"digitrec" in Path(f"/proc/{c}/cmdline").read_bytes()
                   or b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) >= 2, children
    finally:
        server.terminate()
        server.wait(30)
    assert "with 2 worker process(es)" in server.stdout.read()
    assert main(["serve", str(tiny_run), "--workers", "0"]) == 2
