"""Calibrated confidence: the temperature is fitted on held-out images, saved with the weights, and
applied by every path that shows a probability (evaluate, predict, serve, ONNX, ensembles)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from digitrec.nets.predict import fit_model_temperature as calibrate
from digitrec.nets.temperature import fit_temperature, nll, softmax, temperatures_off
from digitrec.core.rundir import WEIGHTS as WEIGHTS_FILE
from digitrec.nets.weights import load_run_model, load_weights
from digitrec.cli import main
from digitrec.core.config import config_from_dict, make_config
from digitrec.core.metrics import Predictions, predictions_from_probs, reliability as calibration
from digitrec.nets.predict import evaluate_run, predict, predict_probs
from digitrec.core.files import InputError, read_json
from digitrec.outputs.images import read_images
from digitrec.nets.model import FastNet
from digitrec.outputs.report import write_report
from digitrec.core.splits import split_calibration, split_validation
from digitrec.training.ensemble import train_ensemble


def _sampled(n: int = 20000, scale: float = 1.0, seed: int = 0):
    """Logits (N, 10) whose labels are drawn from softmax(logits): calibrated exactly at T = 1.
    Returned multiplied by `scale`: scale > 1 is overconfident (the fit should find T = scale)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 10))
    probs = softmax(logits).astype(np.float64)
    labels = (rng.random((n, 1)) > probs.cumsum(1)).sum(1).clip(0, 9)
    return logits * scale, labels


def _ece(logits, labels, temperature=1.0) -> float:
    probs = softmax(logits, temperature)
    preds = Predictions("x", np.arange(len(labels)), labels, probs.argmax(1), probs, np.zeros((len(labels), 28, 28), np.uint8))
    return calibration(preds)["ece"]


@pytest.mark.parametrize("scale", [3.0, 0.4])  # overconfident, underconfident (label smoothing's side)
def test_fit_recovers_the_temperature_and_lowers_nll_and_ece(scale):
    logits, labels = _sampled(scale=scale)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(scale, rel=0.05)
    assert nll(logits, labels, t) < nll(logits, labels) - 0.01
    assert _ece(logits, labels, t) < 0.01 < _ece(logits, labels)
    assert fit_temperature(logits, labels) == t  # deterministic
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()  # no prediction changes


def test_fit_stays_within_its_bounds_on_degenerate_sets():
    separable = np.eye(10)[np.arange(100) % 10] * 5  # every image right: sharper is always better
    assert fit_temperature(separable, np.arange(100) % 10) == pytest.approx(0.05, rel=1e-6)
    with pytest.raises(ValueError):
        fit_temperature(np.empty((0, 10)), np.empty(0, np.int64))


def test_calibrate_sets_the_models_temperature_and_changes_no_prediction(mnist_test):
    torch.manual_seed(0)
    model = FastNet(8).eval()
    digits = mnist_test.subset(np.arange(300))
    before = predict_probs(model, digits.images)
    fitted = calibrate(model, digits)
    after = predict_probs(model, digits.images)
    assert float(model.temperature) == pytest.approx(fitted["temperature"]) and fitted["temperature"] != 1.0
    assert (after.argmax(1) == before.argmax(1)).all()
    assert fitted["nll_after"] <= fitted["nll_before"] and fitted["n"] == 300
    with temperatures_off(model):
        assert np.allclose(predict_probs(model, digits.images), before, atol=1e-6)
    assert float(model.temperature) == pytest.approx(fitted["temperature"])  # restored after the block


def test_a_state_dict_from_before_temperatures_loads_strictly_at_1():
    """Old weights and old checkpoints (resume) hold no temperature: they load, at temperature 1."""
    torch.manual_seed(0)
    trained = FastNet(8)
    old = {k: v for k, v in trained.state_dict().items() if k != "temperature"}
    model = FastNet(8)
    model.temperature.fill_(2.0)
    model.load_state_dict(old)  # strict
    assert float(model.temperature) == 1.0 and "temperature" not in old


def test_calibration_hold_out_is_disjoint_seeded_and_the_same_for_every_member():
    labels = np.arange(1000) % 10
    cfg = make_config("fast", calibration_fraction=0.05)
    train_idx, val_idx = split_validation(labels, cfg)
    train, held = split_calibration(train_idx, cfg)
    assert len(held) == 50 and len(train) == 950 and not np.intersect1d(train, held).size
    again = split_calibration(train_idx, make_config("fast", calibration_fraction=0.05, seed=3, val_seed=9))
    assert np.array_equal(again[1], held)  # members differ in seed and val_seed, not in the hold-out
    other = split_calibration(train_idx, make_config("fast", calibration_fraction=0.05, calibration_seed=1))
    assert not np.array_equal(other[1], held)
    assert len(split_calibration(train_idx, make_config("seed"))[1]) == 0


def test_old_configs_hold_out_no_calibration_images():
    old = make_config("fast").to_dict()
    del old["calibration_fraction"], old["calibration_seed"]
    assert config_from_dict(old).calibration_fraction == 0.0
    assert make_config("fast").calibration_fraction == make_config("best").calibration_fraction == 0.05


# ---------------------------------------------------------------------------------------------
# a trained run: the shared tiny run (seed recipe) is calibrated on its validation split


def _weights(run_dir):
    """The tensors and the raw metadata of a run's weights file."""
    with safe_open(str(run_dir / WEIGHTS_FILE), "pt") as f:
        meta = f.metadata()
    return load_file(str(run_dir / WEIGHTS_FILE)), meta


def test_the_run_stores_its_temperature_in_the_weights(tiny_run):
    model, _, meta = load_run_model(tiny_run)
    fitted = read_json(tiny_run / "metrics.json")["calibration"]
    assert fitted["on"] == "validation split" and fitted["n"] == 300
    assert float(model.temperature) == pytest.approx(fitted["temperature"]) != 1.0
    assert meta["metrics"]["calibration"]["temperature"] == fitted["temperature"]
    assert fitted["nll_after"] <= fitted["nll_before"]
    assert "temperature" in load_file(str(tiny_run / WEIGHTS_FILE))


def test_an_old_weights_file_without_a_temperature_loads_at_1(tiny_run, tmp_path, mnist_test):
    tensors, meta = _weights(tiny_run)
    del tensors["temperature"]  # as digitrec wrote it before calibration
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    old, _, _ = load_weights(tmp_path / "old.safetensors")
    model, _, _ = load_run_model(tiny_run)
    assert float(old.temperature) == 1.0
    with temperatures_off(model):
        expected = predict_probs(model, mnist_test.images[:50])
    assert np.allclose(predict_probs(old, mnist_test.images[:50]), expected, atol=1e-6)


def test_a_temperature_that_is_not_positive_is_refused(tiny_run, tmp_path):
    tensors, meta = _weights(tiny_run)
    tensors["temperature"] = torch.tensor(0.0)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="bad.safetensors: tensor 'temperature' is not a positive temperature"):
        load_weights(tmp_path / "bad.safetensors")


def test_evaluate_applies_it_and_keeps_the_uncalibrated_probabilities(tiny_run, tmp_path, mnist_test):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    digits = mnist_test.subset(np.arange(1000))
    preds = evaluate_run(run, digits)
    model, _, _ = load_run_model(run)
    t = float(model.temperature)
    with temperatures_off(model):
        logits = torch.cat([model(torch.from_numpy(digits.images[i:i + 500]).unsqueeze(1).float() / 255)
                            for i in range(0, 1000, 500)]).detach().numpy()
    assert np.allclose(preds.probs, softmax(logits, t), atol=1e-5)
    assert np.allclose(preds.probs_uncalibrated, softmax(logits), atol=1e-5)
    assert (preds.probs.argmax(1) == preds.probs_uncalibrated.argmax(1)).all()
    saved = Predictions.load(run / "predictions_test.npz")
    assert np.array_equal(saved.probs_uncalibrated, preds.probs_uncalibrated)
    summary = read_json(run / "evaluation_test.json")
    assert summary["ece"] == pytest.approx(calibration(preds)["ece"])
    assert summary["ece_uncalibrated"] == pytest.approx(calibration(preds.uncalibrated())["ece"])
    # the report's reliability diagram shows both
    html = (write_report(run)).read_text()
    assert f"uncalibrated (every temperature 1): {100 * summary['ece_uncalibrated']:.2f}%" in html
    assert f"Temperature {read_json(run / 'metrics.json')['calibration']['temperature']:.3f}" in html


def test_old_predictions_files_load_without_uncalibrated_probabilities(tmp_path, mnist_test):
    digits = mnist_test.subset(np.arange(5))
    probs = np.full((5, 10), 0.1, np.float32)
    predictions_from_probs("test", digits, probs).save(tmp_path / "p.npz")
    assert Predictions.load(tmp_path / "p.npz").probs_uncalibrated is None


def test_predict_on_images_shows_calibrated_confidence(tiny_run, mnist_test, tmp_path, capsys):
    image = mnist_test.images[0]
    Image.fromarray(image).save(tmp_path / "digit.png")
    assert main(["predict", str(tiny_run), str(tmp_path / "digit.png"), "--format", "json"]) == 0
    confidence = json.loads(capsys.readouterr().out)[0]["digits"][0]["confidence"]
    model, _, _ = load_run_model(tiny_run)
    calibrated = read_images([tmp_path / "digit.png"], lambda x: predict_probs(model, x))[0].probs.max()
    with temperatures_off(model):
        raw = read_images([tmp_path / "digit.png"], lambda x: predict_probs(model, x))[0].probs.max()
    assert confidence == pytest.approx(calibrated, abs=1e-6) and calibrated != raw


def test_serve_answers_with_calibrated_probabilities(tiny_run, mnist_test):
    from fastapi.testclient import TestClient

    from digitrec.outputs.serve import create_app

    model, _, _ = load_run_model(tiny_run)
    images = mnist_test.images[:4]
    calibrated = predict_probs(model, images)
    with temperatures_off(model):
        raw = predict_probs(model, images)
    with TestClient(create_app(tiny_run)) as client:
        answers = [client.post("/api/predict/pixels", json={"pixels": image.ravel().tolist()}).json()["probabilities"]
                   for image in images]
    assert np.allclose(answers, calibrated, atol=1e-6)
    assert np.abs(np.array(answers) - raw).max() > 1e-4


def test_onnx_export_applies_the_temperature(tiny_run, tmp_path, mnist_test):
    from digitrec.outputs.export import OnnxClassifier, export_onnx

    path = export_onnx(tiny_run, tmp_path / "m.onnx")
    model, _, _ = load_run_model(tiny_run)
    images = mnist_test.images[:200]
    onnx_probs = OnnxClassifier(path).predict_probs(images)
    assert np.abs(onnx_probs - predict_probs(model, images)).max() < 1e-5
    with temperatures_off(model):
        assert np.abs(onnx_probs - predict_probs(model, images)).max() > 1e-3
    assert float(OnnxClassifier(path).metadata["temperature"]) == pytest.approx(float(model.temperature), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# a hold-out run and an ensemble whose members share it


@pytest.fixture(scope="module")
def held_out_ensemble(tmp_path_factory, mnist_train):
    """Two `fast` members (width 8, 1 epoch on 1,000 images), 20% held out for calibration."""
    out = tmp_path_factory.mktemp("calib") / "ens"
    cfg = make_config("fast", width=8, epochs=1, calibration_fraction=0.2, alternate_deskew=False)
    train_ensemble(cfg, mnist_train.subset(np.arange(1000), "mnist:train[:1000]"), out, size=2, quiet=True)
    return out


def test_a_hold_out_is_left_out_of_training_and_calibrates(held_out_ensemble):
    member = held_out_ensemble / "member-0"
    metrics = read_json(member / "metrics.json")
    assert metrics["n_calibration"] == 200 and metrics["n_train"] == 800 and metrics["n_val"] == 0
    assert metrics["calibration"]["on"] == "calibration hold-out" and metrics["calibration"]["n"] == 200
    held = Predictions.load(member / "predictions_calibration.npz")
    assert len(held.ids) == 200 and held.probs_uncalibrated is not None


def test_the_ensemble_calibrates_its_members_and_its_average(held_out_ensemble, mnist_test):
    ensemble, _, meta = load_run_model(held_out_ensemble)
    members = [load_run_model(held_out_ensemble / f"member-{i}")[0] for i in range(2)]
    for loaded, member in zip(ensemble.members, members):  # each member keeps its own temperature
        assert float(loaded.temperature) == float(member.temperature) != 1.0
    fitted = read_json(held_out_ensemble / "metrics.json")["calibration"]
    assert fitted["on"] == "members' shared calibration hold-out" and fitted["n"] == 200
    assert float(ensemble.temperature) == pytest.approx(fitted["temperature"]) != 1.0
    images = mnist_test.images[:100]
    mean = np.mean([predict_probs(m, images) for m in members], 0)
    expected = softmax(np.log(mean), fitted["temperature"])
    assert np.allclose(predict_probs(ensemble, images), expected, atol=1e-5)


def test_uncalibrated_probabilities_are_those_of_every_temperature_1(held_out_ensemble, mnist_test):
    """A member (a TTA model: one temperature, on its views' average) undoes its temperature on its
    logits; the ensemble, whose members have temperatures of their own, is asked again."""
    digits = mnist_test.subset(np.arange(100))
    for model in (load_run_model(held_out_ensemble / "member-0")[0], load_run_model(held_out_ensemble)[0]):
        with temperatures_off(model):
            plain = predict_probs(model, digits.images)
        preds = predict(model, digits, "test")
        assert np.allclose(preds.probs_uncalibrated, plain, atol=1e-6)
        assert not np.allclose(preds.probs, plain, atol=1e-3)
