"""The Python front door: `import digitrec as dr`, the estimator, input checks and notebook figures."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import numpy as np
import torch
import pandas as pd
import pytest

import digitrec as dr
from digitrec.core.data import PIXEL_COLUMNS, as_digits
from digitrec.core.metrics import Predictions, summarize
from digitrec.core.figures import Figure


@pytest.fixture(scope="module")
def data(mnist_train, mnist_test):
    return mnist_train.subset(np.arange(2000), "mnist:train[:2000]"), mnist_test.subset(np.arange(500), "mnist:test[:500]")


@pytest.fixture(scope="module")
def clf(data, tmp_path_factory):
    """One fitted estimator for the module: preset fast, 1 epoch, 2,000 images (a few seconds)."""
    train, _ = data
    return dr.DigitClassifier(preset="fast", epochs=1, out=tmp_path_factory.mktemp("api") / "fast",
                              verbose=False).fit(train)


def test_import_is_light_and_leaves_matplotlib_alone():
    code = ("import sys, matplotlib; calls = []\n"
            "matplotlib.use = lambda *a, **k: calls.append(a)\n"
            "import digitrec as dr\n"
            "dr.plot_digits\n"  # loads figures.py
            "assert calls == [], calls\n"
            "assert 'torch' not in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
            "print(dr.__version__, sorted(dr.__all__) == sorted(set(dr.__all__)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [dr.__version__, "True"]
    assert "DigitClassifier" in dr.__all__ and "__version__" in dr.__all__
    for name in set(dr.__all__) - {"__version__", "PRESETS"}:
        doc = getattr(dr, name).__doc__ or ""
        assert doc.strip(), f"{name} has no docstring"
        assert ">>> " in doc, f"{name}'s docstring has no example"


def test_fit_returns_self_with_learned_attributes(clf):
    assert isinstance(clf, dr.DigitClassifier)
    assert clf.config_.preset == "fast" and clf.config_.epochs == 1
    assert list(clf.history_.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert clf.history_["epoch"].tolist() == [1]
    assert (clf.run_dir_ / "model.safetensors").is_file()
    assert clf.val_predictions_ is None  # fast holds out nothing
    assert not clf.model_.training
    assert list(clf.classes_) == list(range(10))


def test_predict_proba_predict_and_score_agree(clf, data):
    _, test = data
    probs = clf.predict_proba(test)
    assert probs.shape == (500, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    preds = clf.predict(test)
    assert preds.dtype == np.int64 and (preds == probs.argmax(1)).all()
    assert clf.score(test) == pytest.approx((preds == test.labels).mean())
    assert clf.score(test) > 0.5  # one epoch on 2,000 images learns something
    # the same images in every form a notebook holds give the same answer
    assert (clf.predict(test.images.reshape(500, 784)) == preds).all()
    assert (clf.predict(test.images / 255.0) == preds).all()
    frame = pd.DataFrame(test.images.reshape(500, 784), columns=PIXEL_COLUMNS)
    assert (clf.predict(frame) == preds).all()
    assert clf.score(frame.assign(label=test.labels)[["label", *PIXEL_COLUMNS]]) == clf.score(test)


def test_evaluate_saves_predictions_the_report_reads(clf, data):
    _, test = data
    preds = clf.evaluate(test)
    assert isinstance(preds, Predictions) and preds.name == "test"
    assert preds.accuracy == pytest.approx(clf.score(test))
    assert (clf.run_dir_ / "predictions_test.npz").is_file()
    assert summarize(preds)["errors"] == sum(n for _, _, n in preds.most_confused(100))
    html = preds._repr_html_()
    assert f"{100 * preds.accuracy:.3f}%" in html and "<table>" in html
    assert "accuracy" in repr(preds)
    page = clf.report().read_text()
    assert "accuracy on the test set (500 images" in page


def test_submit_writes_kaggle_rows_in_order(clf, data, tmp_path):
    _, test = data
    frame = pd.DataFrame(test.images[:20].reshape(20, 784), columns=PIXEL_COLUMNS)
    path = clf.submit(frame, tmp_path / "submission.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 21
    assert [int(line.split(",")[1]) for line in lines[1:]] == clf.predict(test.images[:20]).tolist()
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 21))


def test_load_round_trips(clf, data):
    _, test = data
    again = dr.DigitClassifier.load(clf.run_dir_)
    assert again.config_ == clf.config_
    np.testing.assert_array_equal(again.predict_proba(test), clf.predict_proba(test))
    pd.testing.assert_frame_equal(again.history_, clf.history_)
    assert repr(again).startswith("DigitClassifier(preset='fast', out=")
    params = again.get_params()
    assert params["epochs"] == 1 and dr.DigitClassifier(**params).get_params() == params  # scikit-learn's clone
    assert again.set_params(epochs=2).config["epochs"] == 2


def test_refit_without_out_makes_a_fresh_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = data[0].subset(np.arange(300))
    clf = dr.DigitClassifier(preset="fast", epochs=1, batch_size=100, verbose=False)
    first = clf.fit(train).run_dir_
    second = clf.fit(train).run_dir_  # re-running the cell
    assert first != second
    assert first.parent.resolve() == (tmp_path / "runs").resolve()
    assert (first / "model.safetensors").is_file() and (second / "model.safetensors").is_file()


def test_an_occupied_out_needs_overwrite_or_resume(data, tmp_path):
    train = data[0].subset(np.arange(300))
    out = tmp_path / "run"
    params = dict(preset="fast", epochs=1, batch_size=100, verbose=False, out=out)
    dr.DigitClassifier(**params).fit(train)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as e:
        dr.DigitClassifier(**params).fit(train)
    assert str(e.value) == (f"{out}: already holds a run; pass overwrite=True to replace it, "
                            "resume=True to continue it, or another out")
    before = (out / "model.safetensors").stat().st_mtime_ns
    clf = dr.DigitClassifier(**params, overwrite=True).fit(train)
    assert (out / "model.safetensors").stat().st_mtime_ns != before
    assert (out / "notes.txt").read_text() == "mine"  # only digitrec's own files go
    resumed = dr.DigitClassifier(**params, resume=True).fit(train)  # a finished run resumes to itself
    assert resumed.history_["epoch"].tolist() == [1]
    np.testing.assert_array_equal(resumed.predict_proba(train.images[:50]), clf.predict_proba(train.images[:50]))
    with pytest.raises(ValueError, match="^overwrite=True and resume=True exclude each other$"):
        dr.DigitClassifier(**params, overwrite=True, resume=True).fit(train)
    with pytest.raises(ValueError, match=r"^resume=True needs out= \(the run folder to continue\)$"):
        dr.DigitClassifier(preset="fast", resume=True).fit(train)


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((3, 27, 27), np.uint8), None, "images must have shape (N, 28, 28) or (N, 784), got (3, 27, 27)"),
    (np.full((2, 784), 300), None, "integer images must be in 0..255, got values from 300 to 300"),
    (np.full((2, 784), 3.0), None,
     "float images must be in [0, 1], got values from 3 to 3 (divide 0..255 pixels by 255, or pass uint8)"),
    (np.full((2, 784), np.nan), None, "images contain NaN or infinite values"),
    (np.array([["a"] * 784]), None, "images must be numbers (uint8 0..255 or float 0..1), got dtype <U1"),
    (np.zeros((0, 784), np.uint8), None, "no images (an empty array)"),
    ({"pixels": 1}, None, "cannot read digits from a dict: pass images as a numpy array (N, 28, 28) or (N, 784), "
                          "a Kaggle-layout DataFrame, a CSV or image path, or 'mnist'"),
    (np.zeros((2, 784), np.uint8), [1, 10], "labels must be integers 0..9, got 10 at position 1"),
    (np.zeros((2, 784), np.uint8), [1], "labels must have one entry per image: got shape (1,) for 2 images"),
    (pd.DataFrame({"label": [1], "pixel0": [0]}), None,
     "a DataFrame needs Kaggle's columns pixel0..pixel783 (and 'label' to train); missing 783, the first pixel1"),
])
def test_bad_inputs_get_one_clear_value_error(clf, images, labels, message):
    with pytest.raises(ValueError) as e:
        clf.score(images, labels) if labels is not None else clf.predict(images)
    assert str(e.value) == message


def test_fit_needs_labels_and_a_known_config():
    with pytest.raises(ValueError) as e:
        dr.DigitClassifier(preset="fast").fit(np.zeros((5, 28, 28), np.uint8))
    assert str(e.value) == "array: no labels; pass y= or a DataFrame with a 'label' column"
    with pytest.raises(ValueError, match=r"^unknown config field\(s\): epoch$"):
        dr.DigitClassifier(preset="fast", epoch=3)
    with pytest.raises(ValueError, match="^unknown preset 'quick'"):
        dr.DigitClassifier(preset="quick")
    with pytest.raises(ValueError, match=r"^this DigitClassifier is not fitted yet"):
        dr.DigitClassifier().predict(np.zeros((1, 28, 28), np.uint8))


def test_runtime_keywords_choose_where_to_train_not_the_recipe(data, tmp_path):
    train, _ = data
    clf = dr.DigitClassifier(preset="fast", epochs=1, device="cpu", precision="bf16", out=tmp_path / "bf16",
                             verbose=False).fit(train.subset(np.arange(1024)))
    assert clf.metrics_["runtime"]["precision"] == "bf16" and "device" not in clf.config_.to_dict()
    with pytest.raises(ValueError, match=r"^threads are the process's to set"):
        dr.DigitClassifier(threads=4)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device 'cuda' is not available here \(available: cpu"):
            dr.DigitClassifier(device="cuda").fit(train)


def test_as_digits_reads_every_layout_alike(data):
    _, test = data
    images = test.images[:4]
    for layout in (images, images.reshape(4, 784), images[:, None], images[..., None], images / 255.0,
                   images.astype(np.int64), pd.DataFrame(images.reshape(4, 784), columns=PIXEL_COLUMNS)):
        np.testing.assert_array_equal(as_digits(layout).images, images)
    assert as_digits(images[0]).images.shape == (1, 28, 28)  # one image
    assert as_digits(images, [1, 2, 3, 4]).labels.tolist() == [1, 2, 3, 4]


def test_figures_are_returned_not_shown_and_pyplot_stays_empty(clf, data):
    import matplotlib.pyplot as plt

    train, test = data
    plt.close("all")
    rc_before = dict(matplotlib.rcParams)
    preds = clf.evaluate(test)
    figures = [preds.plot_confusion_matrix(), preds.plot_confusion_matrix(normalise=True), preds.plot_top_losses(6),
               preds.plot_calibration(), clf.plot_history(), dr.plot_digits(test, n=16),
               dr.plot_label_counts(train), dr.plot_augmentations(train, "seed", rows=2)]
    assert plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == rc_before  # the house style never leaks into the user's settings
    for fig in figures:
        assert isinstance(fig, Figure)
        png = fig._repr_png_()  # what Jupyter shows, once, as the cell's value
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert len(figures[2].axes[0].texts) >= 6 * 11  # six mistakes: a caption and ten digit names each
    mistakes = preds.top_losses(6)
    assert [m["gap"] for m in mistakes] == sorted((m["gap"] for m in mistakes), reverse=True)
    assert plt.get_fignums() == []


def test_history_plot_shows_one_cycle_rate_at_every_step(clf):
    fig = clf.plot_history()
    lr_axes = fig.axes[2]
    (line,) = lr_axes.get_lines()
    n_steps = (2000 - 100) // 128  # fast's batch, drop_last; 5% of the 2,000 held out for calibration
    assert len(line.get_xdata()) == n_steps
    rates = line.get_ydata()
    assert rates[0] == pytest.approx(clf.history_["lr"][0])  # the first step's rate is the epoch's recorded one
    assert len(set(np.round(rates, 12))) > n_steps // 2  # it changes within the epoch


def test_paths_and_the_builtin_mnist_are_data_too(clf, data, tmp_path):
    from PIL import Image

    _, test = data
    assert len(as_digits("mnist", mnist_split="test")) == 10_000
    assert as_digits("mnist:test").source == "mnist:test"
    # a "photo": the digit large, dark ink on white paper, as a PNG file
    photo = Image.fromarray(255 - test.images[0]).resize((280, 280), Image.BILINEAR)
    photo.save(tmp_path / "digit.png")
    assert clf.predict(tmp_path / "digit.png").shape == (1,)
    assert clf.predict([str(tmp_path / "digit.png")] * 2).shape == (2,)
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="blank.png: no digit found$"):
        clf.predict(tmp_path / "blank.png")
