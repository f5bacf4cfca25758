"""The models that ship inside the package: checked reads, and every front door without a run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import digitrec as dr
from digitrec.cli import main
from digitrec.core import pretrained
from digitrec.core.files import InputError
from digitrec.outputs.export import OnnxClassifier


@pytest.fixture(scope="module")
def photo(tmp_path_factory, mnist_test):
    """MNIST test digit 0 (a 7) as a photo would show it: dark ink on a light page, 4x the size."""
    path = tmp_path_factory.mktemp("photo") / "seven.png"
    Image.fromarray(255 - mnist_test.images[0]).resize((112, 112), Image.Resampling.BICUBIC).save(path)
    return path, int(mnist_test.labels[0])


def test_every_bundled_file_matches_the_digest_recorded_for_it():
    for name in pretrained.NAMES:
        card = pretrained.card(name)
        for kind, file in card["files"].items():
            data = pretrained.path(name, kind).read_bytes()
            assert hashlib.sha256(data).hexdigest() == file["sha256"] and len(data) == file["bytes"]
        assert card["seed"] == 0 and card["recipe"]["preset"] == name and card["test"]["n"] == 10_000
    assert pretrained.DEFAULT in pretrained.NAMES


def test_a_damaged_bundled_file_is_refused(monkeypatch, tmp_path):
    for name in pretrained.NAMES:
        for kind in pretrained.KINDS:
            (tmp_path / pretrained.card(name)["files"][kind]["name"]).write_bytes(pretrained.path(name, kind).read_bytes())
    (tmp_path / pretrained.INDEX).write_bytes((pretrained.PRETRAINED_DIR / pretrained.INDEX).read_bytes())
    target = tmp_path / "fast.onnx"
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(InputError, match=r"fast\.onnx: its SHA-256 is .* not the .* recorded in models\.json; "
                                         r"the file is damaged or was replaced: reinstall digitrec"):
        OnnxClassifier.pretrained("fast")
    with pytest.raises(InputError, match="no pretrained model 'huge'"):
        pretrained.card("huge")


def test_predict_without_a_run_reads_with_the_bundled_model_and_says_which(photo, capsys):
    path, label = photo
    assert main(["predict", str(path), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert [d["digit"] for d in json.loads(out.out)[0]["digits"]] == [label]
    assert out.err.startswith(f"reading with the bundled '{pretrained.DEFAULT}' model (")
    assert main(["predict", "--pretrained", "fast", str(path), str(path), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3 and "the bundled 'fast' model" in out.err


def test_predict_still_takes_a_run_first(tiny_run, photo, capsys):
    path, _ = photo
    assert main(["predict", str(tiny_run), str(path)]) == 0
    assert "bundled" not in capsys.readouterr().err
    assert main(["predict", "--pretrained", "fast", str(tiny_run), str(path)]) == 2
    assert capsys.readouterr().err == f"error: give a run or --pretrained fast, not both ({tiny_run} is a run)\n"
    assert main(["predict", str(tiny_run)]) == 2
    assert capsys.readouterr().err == f"error: {tiny_run} is a run: give the images to read after it\n"


@pytest.mark.slow
def test_the_estimator_and_evaluate_score_a_bundled_model_as_recorded(mnist_test, capsys):
    clf = dr.DigitClassifier.pretrained("fast")
    card = pretrained.card("fast")
    assert clf.run_dir_ is None and clf.metrics_["test"] == card["test"]
    head = mnist_test.subset(np.arange(500), "mnist:test[:500]")
    preds = clf.evaluate(head)
    assert np.array_equal(preds.y_pred, clf.predict(head.images))
    with pytest.raises(ValueError, match="a pretrained classifier has no run folder"):
        clf.report()
    assert main(["evaluate"]) == 2
    assert capsys.readouterr().err == "error: evaluate needs a run or --pretrained NAME (one of them)\n"
    assert main(["evaluate", "--pretrained", "fast"]) == 0
    out = capsys.readouterr().out
    errors = card["test"]["errors"]
    assert out.startswith(f"the bundled 'fast' model:\ntest: accuracy {100 * card['test']['accuracy']:.3f}% "
                          f"({errors} errors in 10000; 95% CI")


def test_the_server_serves_the_bundled_model_without_a_run():
    from fastapi.testclient import TestClient  # the serve extra

    from digitrec.outputs.serve import create_app

    client = TestClient(create_app(None, pretrained="fast"))
    info = client.get("/api/model").json()
    assert info["run"] == "pretrained:fast" and info["accuracy_on"] == "test"
    assert info["accuracy"] == pretrained.card("fast")["test"]["accuracy"]
    assert client.post("/api/predict/pixels", json={"pixels": [0] * 784}).status_code == 200


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"digitrec {dr.__version__}\n"
