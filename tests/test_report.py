"""The HTML report and the run comparison: content from the run's files, self-contained, readable in a browser."""

from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from digitrec.cli import main
from digitrec.core.metrics import Predictions, reliability as calibration, summarize
from digitrec.nets.predict import evaluate_run
from digitrec.core.files import InputError, read_json, write_json
from digitrec.core.metrics import most_confused_pairs
from digitrec.core.rundir import Run
from digitrec.outputs.report import write_comparison, write_report

SECTIONS = ["summary", "data", "curves", "confusion", "per-class", "mistakes", "calibration"]
FIGURES = {"label_distribution", "samples", "augmented", "training_curves", "confusion_counts",
           "confusion_normalised", "mistakes", "reliability"}
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*">')
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html", "figures"))
    return dst


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b64, validate=True) for b64 in IMG.findall(page)]


@pytest.fixture(scope="module")
def run_with_test(tiny_run, mnist_test, tmp_path_factory):
    """The tiny run plus predictions on 600 official test images, and its report."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("report") / "tiny")
    evaluate_run(run_dir, mnist_test.subset(np.arange(600), "mnist:test[:600]"), "test")
    path = write_report(run_dir)
    return run_dir, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def val_only_run(tiny_run, tmp_path_factory):
    """A run without test predictions, whose metrics carry markup that must come out escaped."""
    run_dir = copy_run(tiny_run, tmp_path_factory.mktemp("report") / "val<&>only")
    metrics = read_json(run_dir / "metrics.json")
    metrics["data"] = '<script>alert("x")</script>'
    write_json(run_dir / "metrics.json", metrics)
    path = write_report(run_dir)
    return run_dir, path.read_text(encoding="utf-8")


def test_report_has_every_section_and_the_run_numbers(run_with_test):
    run_dir, page = run_with_test
    assert (run_dir / "report.html").is_file()
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in page
    summary = summarize(Predictions.load(run_dir / "predictions_test.npz"), 24)
    metrics = read_json(run_dir / "metrics.json")
    head = section(page, "summary")
    low, high = summary["accuracy_ci95"]
    assert f"{100 * summary['accuracy']:.3f}% accuracy on the test set (600 images" in head
    assert f"{summary['errors']} errors in 600 images" in head
    assert f"95% confidence interval {100 * low:.2f}% to {100 * high:.2f}%" in head
    assert "887,530 parameters" in head
    assert metrics["environment"]["torch"] in head and metrics["data"] in head
    assert "<th scope=\"row\">rotation_deg</th><td>10.0</td>" in head  # the resolved config
    per_class = section(page, "per-class")
    for row in summary["per_class"]:
        assert f"<td>{row['precision']:.4f}</td><td>{row['recall']:.4f}</td><td>{row['f1']:.4f}</td>" in per_class
    ece = calibration(Predictions.load(run_dir / "predictions_test.npz"))["ece"]
    assert f"Expected calibration error: {100 * ece:.2f}%" in section(page, "calibration")


def test_every_embedded_image_decodes_and_matches_its_png_file(run_with_test):
    run_dir, page = run_with_test
    pngs = embedded_pngs(page)
    assert len(pngs) == len(IMG.findall(page)) == page.count("<img ") == len(FIGURES)
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.format == "PNG" and image.width > 100 and image.height > 100
    files = {p.stem: p.read_bytes() for p in (run_dir / "figures").glob("*.png")}
    assert set(files) == FIGURES
    assert sorted(files.values()) == sorted(pngs)


def test_report_loads_nothing_from_outside(run_with_test):
    _, page = run_with_test
    assert '<meta name="viewport"' in page
    assert "default-src 'none'; img-src data:; style-src 'unsafe-inline'" in page
    assert "<script" not in page and "<link" not in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []


def test_mistakes_are_the_summarize_ranking_with_24_shown(run_with_test):
    run_dir, page = run_with_test
    expected = summarize(Predictions.load(run_dir / "predictions_test.npz"), 24)["confident_mistakes"]
    assert len(expected) == 24
    shown = [int(i) for i in re.findall(r"<tr><td>(\d+)</td>", section(page, "mistakes"))]
    assert shown == [m["id"] for m in expected]


def test_confusion_section_lists_the_largest_off_diagonal_cells(run_with_test):
    run_dir, page = run_with_test
    cm = np.array(summarize(Predictions.load(run_dir / "predictions_test.npz"))["confusion_matrix"])
    true, pred, count = most_confused_pairs(cm)[0]
    off = cm - np.diag(np.diag(cm))
    assert count == off.max() > 0 and off[true, pred] == count
    assert f"<tr><td>{true}</td><td>{pred}</td><td>{count}</td>" in section(page, "confusion")


def test_most_confused_pairs_order_and_no_zero_cells():
    cm = np.diag([50] * 10)
    cm[3, 5], cm[8, 1], cm[4, 9] = 7, 2, 7
    assert most_confused_pairs(cm) == [(3, 5, 7), (4, 9, 7), (8, 1, 2)]
    assert most_confused_pairs(np.diag([5] * 10)) == []


def test_without_test_predictions_the_report_scores_validation_and_escapes_markup(val_only_run):
    run_dir, page = val_only_run
    summary = summarize(Predictions.load(run_dir / "predictions_val.npz"))
    head = section(page, "summary")
    assert f"{100 * summary['accuracy']:.3f}% accuracy on the validation hold-out ({summary['n']} images, " \
           "predictions_val.npz; no test predictions in this run)" in head
    assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in head
    assert "<script" not in page
    assert "<h1>digitrec run val&lt;&amp;&gt;only</h1>" in page


def test_a_run_missing_pieces_gets_a_report_that_says_what_is_missing(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "partial")
    for name in ("metrics.json", "predictions_val.npz"):
        (run_dir / name).unlink()
    (run_dir / "history.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n")
    page = write_report(run_dir).read_text()
    for section_id in SECTIONS:
        assert f'<section id="{section_id}">' in page
    assert "No predictions yet (neither predictions_test.npz nor predictions_val.npz)" in page
    assert "No metrics.json: the run has not finished" in page
    assert "No finished epoch yet" in page
    assert "No label counts" in page
    assert "<img " not in page and not list((run_dir / "figures").glob("*.png"))


def test_unlabelled_predictions_show_samples_and_say_scores_are_missing(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "unlabelled")
    val = Predictions.load(run_dir / "predictions_val.npz")
    Predictions("test", val.ids, np.full_like(val.y_true, -1), val.y_pred, val.probs, val.images).save(
        run_dir / "predictions_test.npz")
    page = write_report(run_dir).read_text()
    assert "The predictions in predictions_test.npz have no labels" in page
    assert section(page, "confusion").count("Needs labelled predictions.") == 1
    assert sorted(p.stem for p in (run_dir / "figures").glob("*.png")) == [
        "augmented", "label_distribution", "samples", "training_curves"]


def test_not_a_run_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as e:
        write_report(tmp_path / "nope")
    assert str(e.value) == f"{tmp_path / 'nope'}: no such run directory"
    with pytest.raises(InputError) as e:
        write_report(tmp_path)
    assert str(e.value) == f"{tmp_path}: not a digitrec run (no config.json)"
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config.json: not valid JSON"):
        write_report(tmp_path)


def test_cli_report_prints_the_path_and_rejects_bad_input(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path / "cli")
    (run_dir / "predictions_val.npz").unlink()  # a fast report: no scored sections
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out == f"report: {run_dir / 'report.html'}\n"
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: not a digitrec run (no config.json)\n"
    assert main(["report", str(run_dir), "--top", "0"]) == 2
    assert capsys.readouterr().err == "error: top mistakes must be at least 1, not 0\n"


def test_calibration_bins_and_expected_calibration_error():
    # 100 images at confidence 0.95 with 95 right, 50 at 0.6 all right: ECE = (50 / 150) * 0.4
    probs = np.full((150, 10), 0.05 / 9, dtype=np.float32)
    probs[:100, 0] = 0.95
    probs[100:, 0], probs[100:, 1:] = 0.6, 0.4 / 9
    y_true = np.zeros(150, dtype=np.int64)
    y_true[:5] = 1
    preds = Predictions("val", np.arange(1, 151), y_true, probs.argmax(1), probs, np.zeros((150, 28, 28), np.uint8))
    calib = calibration(preds)
    assert calib["n_bins"] == 15 and len(calib["bins"]) == 15
    assert sum(b["count"] for b in calib["bins"]) == 150
    assert calib["ece"] == pytest.approx(50 / 150 * 0.4, abs=1e-6)
    full = [b for b in calib["bins"] if b["count"]]
    assert [(b["count"], round(b["accuracy"], 6)) for b in full] == [(50, 1.0), (100, 0.95)]
    assert calib["bins"][0]["accuracy"] is None  # empty bins carry no made-up numbers
    # a confidence of exactly 1 falls in the last bin, 1/15 on the upper edge of the first
    probs = np.eye(10, dtype=np.float32)[[0, 1]]
    edge = Predictions("val", np.arange(1, 3), np.array([0, 1]), np.array([0, 1]), probs, np.zeros((2, 28, 28), np.uint8))
    assert calibration(edge)["bins"][-1]["count"] == 2 and calibration(edge)["ece"] == pytest.approx(0)
    unlabelled = Predictions("test", edge.ids, np.array([-1, -1]), edge.y_pred, probs, edge.images)
    with pytest.raises(InputError, match="predictions 'test' have no labels"):
        calibration(unlabelled)


@pytest.fixture(scope="module")
def comparison(run_with_test, val_only_run, tmp_path_factory):
    runs = [run_with_test[0], val_only_run[0]]
    return runs, write_comparison(runs, tmp_path_factory.mktemp("compare") / "compare.html")


def test_comparison_tabulates_each_run_and_overlays_curves(comparison, run_with_test, tmp_path, capsys):
    runs, path = comparison
    page = path.read_text()
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", page)
    assert len(rows) == 2
    assert rows[0].startswith("tiny</td><td>seed</td><td>seed</td><td>887,530</td><td>1 / 1</td>")
    assert rows[1].startswith("val&lt;&amp;&gt;only</td>")
    for row, run_dir, name in zip(rows, runs, ["test", "val"]):
        acc = summarize(Predictions.load(run_dir / f"predictions_{name}.npz"))["accuracy"]
        assert f"<td>{100 * acc:.3f}%</td>" in row
    (png,) = embedded_pngs(page)
    Image.open(io.BytesIO(png)).load()
    assert "default-src 'none'" in page and "<script" not in page

    # the same name twice: label the runs by their full paths
    twin = copy_run(run_with_test[0], tmp_path / "other" / "tiny")
    assert main(["compare", str(run_with_test[0]), str(twin), "-o", str(tmp_path / "twins.html")]) == 0
    assert capsys.readouterr().out == f"comparison: {tmp_path / 'twins.html'}\n"
    twins = (tmp_path / "twins.html").read_text()
    assert f"<tr><td>{twin}</td>" in twins and f"<tr><td>{run_with_test[0]}</td>" in twins
    with pytest.raises(InputError, match="compare needs at least one run directory"):
        write_comparison([], tmp_path / "none.html")
    assert main(["compare", str(tmp_path), "-o", str(tmp_path / "bad.html")]) == 2
    assert not (tmp_path / "bad.html").exists()


def test_pages_in_headless_chromium_load_every_image_and_request_nothing(run_with_test, comparison):
    from playwright.sync_api import sync_playwright

    pages = [run_with_test[0] / "report.html", comparison[1]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for path in pages:
                url = path.resolve().as_uri()
                for viewport in ({"width": 1280, "height": 900}, {"width": 390, "height": 844}):  # laptop, phone
                    page = browser.new_page(viewport=viewport)
                    errors, requests = [], []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.on("request", lambda r: requests.append(r.url))
                    page.goto(url, wait_until="load")
                    images = page.evaluate(
                        "Array.from(document.images, i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
                    page_width = page.evaluate("document.documentElement.scrollWidth")
                    page.close()
                    assert errors == [], (path, errors)
                    assert [u for u in requests if u != url and not u.startswith("data:")] == [], (path, requests)
                    assert images and all(done and natural > 0 for done, natural, _ in images), (path, images)
                    # nothing wider than the screen: images shrink and tables scroll in their own box
                    assert page_width <= viewport["width"], (path, viewport, page_width)
                    assert all(0 < shown <= viewport["width"] for _, _, shown in images)
        finally:
            browser.close()


def test_a_run_without_hold_out_shows_dashes_and_one_cycle_rates_per_step(small_train, tmp_path):
    from digitrec.core.config import make_config
    from digitrec.outputs.report import learning_rate_steps
    from digitrec.training.train import fit

    run_dir = tmp_path / "fast"
    cfg = make_config("fast", epochs=2)  # no hold-out, one-cycle schedule
    fit(cfg, small_train.subset(np.arange(1000)), run_dir, quiet=True)
    page = write_report(run_dir).read_text()
    rows = re.findall(r"<tr><td>(\d)</td>(.*?)</tr>", section(page, "curves"))
    assert [int(epoch) for epoch, _ in rows] == [1, 2]
    for _, cells in rows:
        values = re.findall(r"<td>(.*?)</td>", cells)
        assert values[2:4] == ["—", "—"]  # val loss, val acc
        assert "nan" not in cells
    assert "held out no validation images" in section(page, "curves")
    n_steps = 1000 // 128
    positions, rates = learning_rate_steps(cfg, 1000, 2)
    assert len(rates) == 2 * n_steps and positions[0] == 1 and positions[n_steps] == 2
    history = Run(run_dir).history()
    assert [rates[0], rates[n_steps]] == pytest.approx([row["lr"] for row in history])  # each epoch's first step
    assert len(set(rates.round(12))) == len(rates)  # a new rate every step
    assert learning_rate_steps(make_config("seed"), 1000, 2) is None  # the plateau rate only moves between epochs
