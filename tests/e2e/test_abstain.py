"""'Not sure' as an answer: the threshold check, the coverage curve, and abstention in every interface
(the CLI's three formats, the JSON API, DigitClassifier.predict). The web page: test_serve_browser.py."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():  # starlette's test client nags about its httpx dependency
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import digitrec as dr
from digitrec.cli import main
from digitrec.core.data import make_digits
from digitrec.core.metrics import UNSURE, abstain, check_min_confidence, coverage_curve, predictions_from_probs
from digitrec.outputs.serve import create_app

BAD_THRESHOLDS = ["1.5", "-0.1", "abc", "nan", "inf", ""]


def bad_threshold_message(value) -> str:
    return f"min_confidence must be a number from 0 to 1 (a probability), got {value!r}"


# ---------------------------------------------------------------------------------------------
# the library


def test_check_min_confidence():
    assert [check_min_confidence(v) for v in (0, 1, 0.99, "0.5", " 1e-1 ", np.float32(0.25))] == [0, 1, 0.99, 0.5, 0.1, 0.25]
    for value in [*BAD_THRESHOLDS, float("nan"), 2, True, None, [0.5]]:
        with pytest.raises(ValueError) as e:
            check_min_confidence(value)
        assert str(e.value) == bad_threshold_message(value)


def test_abstain_and_coverage_curve():
    probs = np.array([[0.95, 0.05] + [0] * 8, [0.1, 0.9] + [0] * 8, [0.6, 0.4] + [0] * 8, [0.3, 0.7] + [0] * 8],
                     dtype=np.float32)
    assert abstain(probs, None).tolist() == abstain(probs, 0).tolist() == [0, 1, 0, 1]
    assert abstain(probs, 0.9).tolist() == [0, 1, UNSURE, UNSURE]  # exactly P is answered
    digits = make_digits(np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 1, 1]), "four")
    preds = predictions_from_probs("four", digits, probs)  # the third (0.6, predicted 0) is the one mistake
    rows = coverage_curve(preds, [0, 0.65, 0.9, 0.99])
    assert [(r["answered"], r["coverage"], r["accuracy"], r["errors"]) for r in rows] == [
        (4, 1.0, 0.75, 1), (3, 0.75, 1.0, 0), (2, 0.5, 1.0, 0), (0, 0.0, None, 0)]
    assert rows[0]["accuracy"] == preds.accuracy
    low, high = rows[1]["accuracy_ci95"]
    assert 0 < low < 1 == high


# ---------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def photos(tmp_path_factory, mnist_test):
    """Two photos of single digits and one of a three-digit number: dark ink on white paper."""
    folder = tmp_path_factory.mktemp("abstain")

    def paper(images):
        ink = np.concatenate([np.pad(x, 6) for x in images], axis=1)
        big = Image.fromarray(255 - ink).resize((ink.shape[1] * 4, ink.shape[0] * 4), Image.Resampling.BILINEAR)
        return Image.fromarray(np.pad(np.asarray(big), 30, constant_values=255))

    paper([mnist_test.images[0]]).save(folder / "a.png")
    paper([mnist_test.images[1]]).save(folder / "b.png")
    paper(list(mnist_test.images[2:5])).save(folder / "number.png")
    return folder


def predict(capsys, tiny_run, files, *flags) -> tuple[int, str, str]:
    code = main(["predict", str(tiny_run), *map(str, files), *flags])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def number_threshold(tiny_run, photos):
    """A threshold between the number's digits' confidences: some of its digits are sure, some not."""
    from digitrec.nets.predict import predict_probs  # torch: only for this fixture
    from digitrec.nets.weights import load_run_model  # torch: only for this fixture
    from digitrec.outputs.images import read_images  # OpenCV: only for this fixture

    model = load_run_model(tiny_run)[0]
    (reading,) = read_images([photos / "number.png"], lambda x: predict_probs(model, x), multi=True)
    confidence = np.sort(reading.probs.max(1))
    assert len(confidence) == 3 and confidence[0] < confidence[-1]
    return float((confidence[0] + confidence[-1]) / 2), reading


def test_predict_json_marks_unsure_digits(capsys, tiny_run, photos, number_threshold):
    threshold, reading = number_threshold
    code, out, _ = predict(capsys, tiny_run, [photos / "number.png"], "--multi", "--format", "json",
                           "--min-confidence", str(threshold))
    assert code == 0
    (row,) = json.loads(out)
    doubtful = reading.probs.max(1) < threshold
    assert row["best_guess"] == reading.number and row["unsure"] is True
    assert row["number"] == "".join("?" if d else str(k) for k, d in zip(reading.digits, doubtful))
    assert "?" in row["number"] and row["number"] != "???"
    for digit, best, d in zip(row["digits"], reading.digits, doubtful):
        assert (digit["digit"], digit["best_guess"], digit["unsure"]) == (None if d else best, best, bool(d))
        assert digit["top3"][0]["class"] == best
    # without a threshold, or at 0, every digit is answered
    for flags in ([], ["--min-confidence", "0"]):
        (row,) = json.loads(predict(capsys, tiny_run, [photos / "number.png"], "--multi", "--format", "json", *flags)[1])
        assert row["number"] == row["best_guess"] == reading.number and row["unsure"] is False


def test_predict_csv_and_table_mark_unsure_digits(capsys, tiny_run, photos, number_threshold):
    threshold, reading = number_threshold
    doubtful = reading.probs.max(1) < threshold
    shown = "".join("?" if d else str(k) for k, d in zip(reading.digits, doubtful))
    files = [photos / "number.png"]
    _, out, _ = predict(capsys, tiny_run, files, "--multi", "--format", "csv", "--min-confidence", str(threshold))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["number"], r["digit"], r["unsure"], r["best_guess"]) for r in rows] == [
        (shown, "" if d else str(k), "true" if d else "false", str(k)) for k, d in zip(reading.digits, doubtful)]
    _, out, _ = predict(capsys, tiny_run, files, "--multi", "--min-confidence", str(threshold))
    lines = out.splitlines()
    assert lines[1].split()[1] == shown
    for position, (line, k, p, d) in enumerate(zip(lines[1:], reading.digits, reading.probs.max(1), doubtful)):
        words = line.split()[2 if position == 0 else 0:]
        assert words[:3] == ["?" if d else str(k), f"{p:.4f}", str(k)]  # digit, confidence, then the best guess first
        assert line.endswith(f"not sure (below {threshold:g})") == d


def test_predict_single_digits_at_one(capsys, tiny_run, photos):
    """At 1, every digit short of certain is unsure; the best guesses stay."""
    _, out, _ = predict(capsys, tiny_run, [photos / "a.png", photos / "b.png"], "--format", "json", "--min-confidence", "1")
    for row in json.loads(out):
        assert row["number"] == "?" and row["unsure"] is True and row["best_guess"].isdigit()


@pytest.mark.parametrize("value", BAD_THRESHOLDS)
def test_predict_refuses_a_bad_threshold(capsys, tiny_run, photos, value):
    code, out, err = predict(capsys, tiny_run, [photos / "a.png"], "--min-confidence", value)
    assert (code, out, err) == (2, "", f"error: {bad_threshold_message(value)}\n")


# ---------------------------------------------------------------------------------------------
# the JSON API


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run), raise_server_exceptions=False) as c:
        yield c


def test_api_abstains(client, photos, mnist_test):
    data = (photos / "a.png").read_bytes()
    plain = client.post("/api/predict", files={"file": ("a.png", data, "image/png")}).json()
    best, confidence = int(np.argmax(plain["probabilities"])), max(plain["probabilities"])
    assert (plain["label"], plain["best_guess"], plain["unsure"]) == (best, best, False)
    assert plain["confidence"] == pytest.approx(confidence)
    for threshold, unsure in ((confidence / 2, False), (min(1.0, confidence + 1e-4), True)):
        answer = client.post(f"/api/predict?min_confidence={threshold}", files={"file": ("a.png", data, "image/png")}).json()
        assert (answer["label"], answer["best_guess"], answer["unsure"]) == (None if unsure else best, best, unsure)
        assert answer["probabilities"] == plain["probabilities"]
    pixels = {"pixels": mnist_test.images[0].ravel().tolist()}
    answer = client.post("/api/predict/pixels?min_confidence=1", json=pixels).json()
    assert answer["label"] is None and answer["unsure"] is True and answer["best_guess"] == int(np.argmax(answer["probabilities"]))
    assert client.post("/api/predict/pixels?min_confidence=0", json=pixels).json()["unsure"] is False


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan", ""])
def test_api_refuses_a_bad_threshold(client, photos, mnist_test, value):
    for response in (client.post("/api/predict/pixels", params={"min_confidence": value},
                                 json={"pixels": mnist_test.images[0].ravel().tolist()}),
                     client.post("/api/predict", params={"min_confidence": value},
                                 files={"file": ("a.png", (photos / "a.png").read_bytes(), "image/png")})):
        assert (response.status_code, response.json()) == (422, {"detail": bad_threshold_message(value)})


# ---------------------------------------------------------------------------------------------
# the estimator


def test_estimator_predict_abstains(tiny_run, mnist_test):
    clf = dr.DigitClassifier.load(tiny_run)
    images = mnist_test.images[:300]
    probs = clf.predict_proba(images)
    threshold = float(np.median(probs.max(1)))
    labels = clf.predict(images, min_confidence=threshold)
    assert labels.dtype == np.int64
    assert ((labels == UNSURE) == (probs.max(1) < threshold)).all()
    assert 0 < (labels == UNSURE).sum() < len(labels)
    sure = labels != UNSURE
    assert (labels[sure] == probs.argmax(1)[sure]).all()
    assert (clf.predict(images) == probs.argmax(1)).all() and (clf.predict_proba(images) == probs).all()
    with pytest.raises(ValueError, match=r"^min_confidence must be a number from 0 to 1 \(a probability\), got 1.5$"):
        clf.predict(images, min_confidence=1.5)
