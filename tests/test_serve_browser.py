"""The draw-a-digit page end to end: a real uvicorn server on loopback, Debian's chromium, headless.

Draws stroke by stroke with mouse events, undoes, clears, uploads a file, taps on a phone-sized
screen, and checks that what the page shows is what the API answers for the same image.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

from digitrec.outputs.serve import create_app

CHROMIUM = os.environ.get("DIGITREC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # a shared 2-core machine can be slow; a broken page fails well within this


@pytest.fixture(scope="module")
def server_url(tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} missing: install Debian's chromium (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_errors():
    return []


def wait_until(page, condition: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll a JS expression with page.evaluate (the page's CSP forbids the eval wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        page.wait_for_timeout(50)


def open_page(browser, url, page_errors, **context_args):
    page = browser.new_context(**context_args).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page_errors.append(m.text))  # CSP violations land here
    page.goto(url)
    wait_until(page, "document.getElementById('model').textContent.includes('parameters')")
    return page


def shown(page) -> dict:
    """What the page shows: the label, the ten bars' probabilities, and the 28x28 image."""
    return page.evaluate("""() => {
        const bars = [...document.querySelectorAll('#bars .bar')];
        const seen = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
        const image = [];
        for (let i = 0; i < 784; i++) image.push(seen[4 * i]);
        return {label: document.getElementById('label').textContent,
                probabilities: bars.map(b => b.dataset.p === undefined ? null : Number(b.dataset.p)),
                widths: bars.map(b => b.querySelector('.fill').style.width),
                image: image};
    }""")


def wait_for_answer(page):
    wait_until(page, "document.querySelectorAll('#bars .bar[data-p]').length === 10")


def drawing_png(page) -> bytes:
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def api_answer(url, data: bytes, name="drawing.png") -> dict:
    response = httpx.post(f"{url}/api/predict", files={"file": (name, data, "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def assert_page_shows(page, answer):
    view = shown(page)
    assert view["label"] == str(answer["label"])
    assert np.allclose(view["probabilities"], answer["probabilities"], atol=1e-9)
    assert sum(view["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert view["image"] == np.asarray(answer["image"]).ravel().tolist()
    top = page.locator("#bars .bar.top")
    assert top.count() == 1 and top.get_attribute("data-digit") == str(answer["label"])


def stroke(page, box, points, steps=12):
    """One pen-down-to-pen-up stroke through `points` given as fractions of the pad."""
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=steps)
    page.mouse.up()


def settle(page):
    """Wait until the page has shown the answer to its newest request (aria-busy goes back to false)."""
    wait_until(page, "document.querySelector('.result').getAttribute('aria-busy') === 'false'")


def test_draw_undo_clear(browser, server_url, page_errors, tmp_path):
    page = open_page(browser, server_url, page_errors, viewport={"width": 900, "height": 800})
    model_line = page.locator("#model").text_content()
    assert "887,530 parameters" in model_line and "on the validation set" in model_line
    box = page.locator("#pad").bounding_box()

    # live: pausing half-way through a stroke, pen still down, already brings an answer
    x = box["x"] + 0.5 * box["width"]
    page.mouse.move(x, box["y"] + 0.15 * box["height"])
    page.mouse.down()
    page.mouse.move(x, box["y"] + 0.5 * box["height"], steps=6)
    wait_for_answer(page)
    assert page.locator("#label").text_content().isdigit()

    # ... and the stroke goes on to make a "1"
    page.mouse.move(x, box["y"] + 0.85 * box["height"], steps=6)
    page.mouse.up()
    settle(page)
    one = api_answer(server_url, drawing_png(page))
    assert_page_shows(page, one)
    assert all(w.endswith("%") for w in shown(page)["widths"])

    # a second stroke turns it into a "7"-like shape; the answer follows the drawing
    stroke(page, box, [(0.3, 0.15), (0.5, 0.15)])
    settle(page)
    seven = api_answer(server_url, drawing_png(page))
    assert_page_shows(page, seven)
    assert seven["image"] != one["image"]
    page.screenshot(path=str(tmp_path / "draw.png"), full_page=True)
    assert (tmp_path / "draw.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # undo removes the last stroke: back to the "1"
    page.click("#undo")
    settle(page)
    assert_page_shows(page, one)

    # clear empties everything
    page.click("#clear")
    assert page.locator("#label").text_content() == "\u2013"
    assert page.locator("#bars .bar[data-p]").count() == 0
    assert page.locator("#undo").is_disabled() and page.locator("#clear").is_disabled()
    assert page_errors == []


def test_upload_a_file(browser, server_url, page_errors, tmp_path, mnist_test):
    page = open_page(browser, server_url, page_errors)
    digit = 255 - np.asarray(Image.fromarray(mnist_test.images[0]).resize((200, 200)))  # dark on white
    path = tmp_path / "scan.png"
    Image.fromarray(np.pad(digit, 40, constant_values=255)).save(path)
    page.set_input_files("#file", str(path))
    wait_until(page, "document.getElementById('status').textContent === 'from scan.png'")
    assert_page_shows(page, api_answer(server_url, path.read_bytes(), "scan.png"))

    # a file that is not an image: the server's one-line message, shown as an error
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#status.error")
    refusal = httpx.post(f"{server_url}/api/predict", files={"file": ("notes.png", bad.read_bytes())}, timeout=30)
    assert refusal.status_code == 400
    assert page.locator("#status").text_content() == refusal.json()["detail"]
    assert refusal.json()["detail"].startswith("notes.png: not an image")
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)
    assert page_errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]


def test_phone_touch(browser, server_url, page_errors, tmp_path):
    page = open_page(browser, server_url, page_errors, viewport={"width": 390, "height": 844},
                     device_scale_factor=3, is_mobile=True, has_touch=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box = page.locator("#pad").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] >= 250
    assert page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # a dot, drawn by touch
    settle(page)
    wait_for_answer(page)
    assert_page_shows(page, api_answer(server_url, drawing_png(page)))
    page.screenshot(path=str(tmp_path / "phone.png"))
    assert page_errors == []
