"""Ensembles and test-time augmentation: averaged probabilities, ensemble runs that every command
accepts, resumable member training, TTA views, and one-line errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from digitrec.nets.weights import load_run_model
from digitrec.cli import main
from digitrec.core.config import make_config
from digitrec.core.data import write_answers_csv, write_kaggle_csv
from digitrec.core.metrics import Predictions
from digitrec.nets.augment import TTA_VIEWS
from digitrec.nets.predict import predict_probs, tta_probs
from digitrec.outputs.export import check_onnx, export_onnx
from digitrec.core.files import InputError, read_json, write_json
from digitrec.nets.model import Deskew, Ensemble, FastNet, ReferenceNet as SeedNet
from digitrec.outputs.report import write_report
from digitrec.training.ensemble import combine_runs, member_config, train_ensemble

CFG = make_config(epochs=1)


@pytest.fixture(scope="module")
def train_500(mnist_train):
    return mnist_train.subset(np.arange(500), "mnist:train[:500]")


@pytest.fixture(scope="module")
def ens_run(tmp_path_factory, train_500):
    """An ensemble of 2 seed-recipe members, 1 epoch on 500 images each (a few seconds)."""
    out = tmp_path_factory.mktemp("ens") / "ens"
    train_ensemble(CFG, train_500, out, size=2, quiet=True)
    return out


@pytest.fixture(scope="module")
def test_100(mnist_test):
    return mnist_test.subset(np.arange(100), "mnist:test[:100]")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err == f"error: {message}\n"


# ---------------------------------------------------------------------------------------------
# the model


def test_ensemble_probabilities_are_the_members_mean():
    torch.manual_seed(0)
    members = [SeedNet().eval(), FastNet(8).eval(), SeedNet().eval()]
    ensemble = Ensemble(members).eval()
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)  # (16, 10)
        logits = ensemble(x)
    assert logits.shape == (16, 10)
    assert torch.allclose(logits.softmax(1), mean, atol=1e-6)
    assert torch.allclose(logits.exp().sum(1), torch.ones(16), atol=1e-6)  # log-probabilities already
    assert not torch.allclose(mean, members[0](x).softmax(1), atol=1e-3)  # the members do disagree
    assert list(ensemble.state_dict())[:2] == ["temperature", "members.0.temperature"]
    assert list(ensemble.state_dict())[2] == "members.0.features.0.weight"


# ---------------------------------------------------------------------------------------------
# ensemble runs


def test_members_have_their_own_seeds_and_validation_splits(ens_run):
    assert member_config(CFG, 1) == make_config(epochs=1, seed=CFG.seed + 1, val_seed=CFG.val_seed + 1)
    configs = [read_json(ens_run / f"member-{i}" / "config.json") for i in range(2)]
    assert [(c["seed"], c["val_seed"]) for c in configs] == [(0, 2), (1, 3)]
    val_ids = [Predictions.load(ens_run / f"member-{i}" / "predictions_val.npz").ids for i in range(2)]
    assert len(val_ids[0]) == len(val_ids[1]) == 50 and set(val_ids[0]) != set(val_ids[1])
    assert read_json(ens_run / "config.json") == configs[0]


def test_metrics_list_the_members(ens_run):
    metrics = read_json(ens_run / "metrics.json")
    members = [read_json(ens_run / f"member-{i}" / "metrics.json") for i in range(2)]
    assert [m["run"] for m in metrics["members"]] == ["member-0", "member-1"]
    assert [m["val_accuracy"] for m in metrics["members"]] == [m["val_accuracy"] for m in members]
    assert [m["seed"] for m in metrics["members"]] == [0, 1]
    assert metrics["train_seconds"] == pytest.approx(sum(m["train_seconds"] for m in members), abs=0.01)
    assert metrics["parameters"] == sum(m["parameters"] for m in members) == 2 * 887_530
    assert metrics["data"] == "mnist:train[:500]" and metrics["model"] == "ensemble of 2 (seed)"
    assert metrics["label_counts"] == members[0]["label_counts"]
    assert "val_accuracy" not in metrics  # no image was held out from every member


def test_load_run_model_rebuilds_the_ensemble(ens_run, test_100):
    model, cfg, meta = load_run_model(ens_run)
    members = [load_run_model(ens_run / f"member-{i}")[0] for i in range(2)]
    assert isinstance(model, Ensemble) and len(model.members) == 2 and not model.training
    assert cfg == member_config(CFG, 0) and len(meta["members"]) == 2
    for loaded, member in zip(model.members, members):
        saved = member.state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    mean = np.mean([predict_probs(m, test_100.images) for m in members], axis=0)
    assert np.abs(predict_probs(model, test_100.images) - mean).max() < 1e-6


def test_ensemble_command_combines_runs(ens_run, tmp_path, capsys, test_100):
    out = tmp_path / "again"
    code, stdout, _ = run_cli(capsys, "ensemble", ens_run / "member-1", ens_run / "member-0", "-o", out)
    assert code == 0 and f"written to {out}" in stdout
    model, cfg, _ = load_run_model(out)
    assert cfg.seed == 1  # the config is the first run's
    runs = [(out / m["run"]).resolve() for m in read_json(out / "metrics.json")["members"]]
    assert runs == [(ens_run / "member-1").resolve(), (ens_run / "member-0").resolve()]  # relative to the ensemble
    same = predict_probs(load_run_model(ens_run)[0], test_100.images)
    assert np.abs(predict_probs(model, test_100.images) - same).max() < 1e-6  # order does not matter


def test_every_command_accepts_an_ensemble_run(ens_run, tmp_path, capsys, test_100):
    from fastapi.testclient import TestClient

    from digitrec.outputs.serve import create_app

    run = tmp_path / "ens"
    combine_runs([ens_run / "member-0", ens_run / "member-1"], run)
    write_kaggle_csv(tmp_path / "test.csv", test_100, with_labels=False)
    write_answers_csv(tmp_path / "answers.csv", test_100)
    model = load_run_model(run)[0]

    code, stdout, err = run_cli(capsys, "evaluate", run, "--test", tmp_path / "test.csv",
                                "--answers", tmp_path / "answers.csv")
    assert code == 0, err
    preds = Predictions.load(run / "predictions_test.npz")
    assert np.abs(preds.probs - predict_probs(model, test_100.images)).max() < 1e-6
    accuracy = (preds.y_pred == test_100.labels).mean()
    assert f"test: accuracy {100 * accuracy:.3f}%" in stdout

    code, stdout, err = run_cli(capsys, "evaluate", run, "--test", tmp_path / "test.csv",
                                "--answers", tmp_path / "answers.csv", "--tta")
    assert code == 0, err
    tta = Predictions.load(run / "predictions_test-tta.npz")
    assert tta.name == "test-tta" and "test-tta: accuracy" in stdout
    assert np.abs(tta.probs - tta_probs(model, test_100.images)).max() < 1e-6
    assert np.array_equal(Predictions.load(run / "predictions_test.npz").probs, preds.probs)  # not overwritten
    assert read_json(run / "evaluation_test-tta.json")["n"] == 100

    code, _, err = run_cli(capsys, "submit", run, tmp_path / "test.csv", "-o", tmp_path / "sub.csv")
    assert code == 0, err
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label" and [int(x.split(",")[1]) for x in lines[1:]] == preds.y_pred.tolist()
    code, _, err = run_cli(capsys, "submit", run, tmp_path / "test.csv", "-o", tmp_path / "sub-tta.csv", "--tta")
    assert code == 0, err
    lines = (tmp_path / "sub-tta.csv").read_text().splitlines()
    assert [int(x.split(",")[1]) for x in lines[1:]] == tta.y_pred.tolist()
    assert (run / "predictions_submission-tta.npz").is_file()

    page = write_report(run).read_text()
    assert f"{100 * accuracy:.3f}%" in page and "1,775,060 parameters" in page
    assert "<td>2 members, 1 each</td>" in page  # epochs: an ensemble has no history.csv of its own

    onnx_path = export_onnx(run, tmp_path / "ens.onnx")
    check = check_onnx(run, onnx_path, test_100.images)
    assert check["ok"] and check["disagreements"] == 0

    info = TestClient(create_app(run)).get("/api/model").json()
    assert info["parameters"] == 2 * 887_530 and info["accuracy"] == pytest.approx(accuracy)


def test_train_ensemble_resumes_keeps_finished_members_and_retrains_missing_ones(ens_run, tmp_path, train_500):
    out = shutil.copytree(ens_run, tmp_path / "ens")
    kept = (out / "member-0" / "model.safetensors").stat().st_mtime_ns
    shutil.rmtree(out / "member-1")
    for name in ("model.safetensors", "metrics.json"):
        (out / name).unlink()
    with pytest.raises(InputError, match=r"already holds a run; use --resume or another --out$"):
        train_ensemble(CFG, train_500, out, size=2, quiet=True)

    metrics = train_ensemble(CFG, train_500, out, size=2, resume=True, quiet=True)
    assert (out / "member-0" / "model.safetensors").stat().st_mtime_ns == kept
    retrained = load_run_model(out / "member-1")[0].state_dict()
    original = load_run_model(ens_run / "member-1")[0].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in retrained.items())  # same seed, same weights
    assert len(metrics["members"]) == 2 and isinstance(load_run_model(out)[0], Ensemble)

    # a finished ensemble: nothing to do, unless asked for a different one
    assert train_ensemble(CFG, train_500, out, size=2, resume=True, quiet=True) == read_json(out / "metrics.json")
    with pytest.raises(InputError, match=r"holds a finished ensemble of 2, not 3$"):
        train_ensemble(CFG, train_500, out, size=3, resume=True, quiet=True)
    with pytest.raises(InputError, match=r"config differs from the run being resumed \(lr\)$"):
        train_ensemble(make_config(epochs=1, lr=0.01), train_500, out, size=2, resume=True, quiet=True)

    # members finished on other images are not kept
    (out / "model.safetensors").unlink()
    other = train_500.subset(np.arange(1, 500), "mnist:train[1:500]")
    with pytest.raises(InputError, match=r"member-0: finished on other data than mnist:train\[1:500\]$"):
        train_ensemble(CFG, other, out, size=2, resume=True, quiet=True)


def test_train_ensemble_cli(tmp_path, capsys, train_500):
    write_kaggle_csv(tmp_path / "train.csv", train_500.subset(np.arange(300)), with_labels=True)
    out = tmp_path / "cli-ens"
    code, stdout, err = run_cli(capsys, "train", "--train", tmp_path / "train.csv", "--ensemble", "2",
                                "--epochs", "1", "--threads", "1", "--quiet", "--out", out)
    assert code == 0, err
    assert "members' validation accuracy: " in stdout and stdout.count("%") >= 2
    assert len(load_run_model(out)[0].members) == 2
    assert [m["val_seed"] for m in read_json(out / "metrics.json")["members"]] == [2, 3]
    assert_one_line_error(capsys, ["train", "--train", tmp_path / "train.csv", "--ensemble", "2", "--epochs", "1",
                                   "--quiet", "--out", out],
                          f"{out}: already holds a run; use --resume or another --out")
    code, stdout, err = run_cli(capsys, "train", "--train", tmp_path / "train.csv", "--ensemble", "2",
                                "--quiet", "--out", out, "--resume")
    assert code == 0, err  # finished: the saved config is reused and nothing is trained


def test_alternate_deskew_deskews_the_odd_members(tmp_path, capsys, train_500):
    assert [member_config(make_config("best"), i).deskew for i in range(4)] == [False, True, False, True]
    assert [member_config(make_config("best", deskew=True), i).deskew for i in range(2)] == [True, True]
    assert not member_config(make_config("fast"), 1).deskew  # only where the preset asks for it
    write_kaggle_csv(tmp_path / "train.csv", train_500.subset(np.arange(300)), with_labels=True)
    out = tmp_path / "mixed"
    code, stdout, err = run_cli(capsys, "train", "--train", tmp_path / "train.csv", "--preset", "fast",
                                "--alternate-deskew", "--val-fraction", "0.1", "--ensemble", "2", "--epochs", "1",
                                "--threads", "1", "--out", out)
    assert code == 0, err
    assert "member 2/2: seed 1, val_seed 3, deskewed inputs" in stdout
    assert [any(isinstance(x, Deskew) for x in m.modules()) for m in load_run_model(out)[0].members] == [False, True]
    assert [m["deskew"] for m in read_json(out / "metrics.json")["members"]] == [False, True]
    assert read_json(out / "member-1" / "config.json")["deskew"] is True
    assert_one_line_error(capsys, ["train", "--train", tmp_path / "train.csv", "--alternate-deskew", "--quiet",
                                   "--out", tmp_path / "seed"],
                          "deskew and alternate_deskew need model 'fast' or 'best' (seed is the reference)")


# ---------------------------------------------------------------------------------------------
# test-time augmentation


@pytest.fixture(scope="module")
def member(ens_run):
    return load_run_model(ens_run / "member-0")[0]


@pytest.fixture(scope="module")
def framed(mnist_test):
    """Test images with an empty 1-pixel frame, so a 1-pixel roll loses no ink."""
    images = mnist_test.images[:200]
    empty = (images[:, [0, -1], :].max(axis=(1, 2)) == 0) & (images[:, :, [0, -1]].max(axis=(1, 2)) == 0)
    return images[empty][:40]


def test_tta_identity_view_is_plain_prediction(member, framed):
    assert TTA_VIEWS[0] == (0, 0, 0)
    plain = predict_probs(member, framed)
    assert np.abs(tta_probs(member, framed, views=[(0, 0, 0)]) - plain).max() < 1e-6


def test_tta_probabilities_are_the_mean_over_views(member, framed):
    probs = tta_probs(member, framed)
    assert probs.shape == (len(framed), 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    each = [tta_probs(member, framed, views=[view]) for view in TTA_VIEWS]
    assert np.abs(probs - np.mean(each, axis=0)).max() < 1e-6
    assert np.abs(probs - each[0]).max() > 1e-3  # the views are not all the identity
    assert np.abs(tta_probs(member, framed, batch_size=7) - probs).max() < 1e-6


@pytest.mark.parametrize("view, axis, pixels", [((1, 0, 0), 2, 1), ((-1, 0, 0), 2, -1),
                                                ((0, 1, 0), 1, 1), ((0, -1, 0), 1, -1)])
def test_tta_shifts_move_the_digit_by_whole_pixels(member, framed, view, axis, pixels):
    moved = np.roll(framed, pixels, axis=axis)  # (dx, dy): right and down
    assert np.abs(tta_probs(member, framed, views=[view]) - predict_probs(member, moved)).max() < 1e-4


def test_tta_rotations_are_in_degrees(member, framed):
    quarter = {k: predict_probs(member, np.ascontiguousarray(np.rot90(framed, k, axes=(1, 2)))) for k in (1, 3)}
    plus, minus = (tta_probs(member, framed, views=[(0, 0, d)]) for d in (90, -90))
    assert {k for k, p in quarter.items() if np.abs(plus - p).max() < 1e-4} | {
        k for k, p in quarter.items() if np.abs(minus - p).max() < 1e-4} == {1, 3}


# ---------------------------------------------------------------------------------------------
# bad input


def test_combine_errors(ens_run, tmp_path, capsys):
    m0, m1 = ens_run / "member-0", ens_run / "member-1"
    out = tmp_path / "out"
    assert_one_line_error(capsys, ["ensemble", m0, "-o", out], "an ensemble needs at least 2 runs, got 1")
    assert_one_line_error(capsys, ["ensemble", m0, tmp_path / "nope", "-o", out],
                          f"{tmp_path / 'nope'}: no such run directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, ["ensemble", m0, tmp_path / "empty", "-o", out],
                          f"{tmp_path / 'empty'}: no model.safetensors (is the run finished?)")
    assert_one_line_error(capsys, ["ensemble", m0, m0, "-o", out], f"{m0}: given twice")
    assert_one_line_error(capsys, ["ensemble", m0, ens_run, "-o", out],
                          f"{ens_run}: is an ensemble already; combine its members instead")
    assert_one_line_error(capsys, ["ensemble", m0, m1, "-o", ens_run],
                          f"{ens_run}: already holds a run; choose another output directory")
    sha = read_json(m0 / "metrics.json")["data_sha256"]
    other = shutil.copytree(m1, tmp_path / "other")
    write_json(other / "metrics.json", {**read_json(other / "metrics.json"), "data_sha256": "ab" * 32})
    assert_one_line_error(capsys, ["ensemble", m0, other, "-o", out],
                          f"the runs were trained on different data: {m0} on mnist:train[:500] (sha256 {sha[:12]}), "
                          f"{other} on mnist:train[:500] (sha256 abababababab)")
    assert not out.exists()


def test_combine_judges_data_by_its_hash_not_its_name(ens_run, tmp_path):
    m0, m1 = ens_run / "member-0", ens_run / "member-1"
    renamed = shutil.copytree(m1, tmp_path / "renamed")  # the same images read from a file of another name
    write_json(renamed / "metrics.json", {**read_json(renamed / "metrics.json"), "data": "train.csv"})
    metrics = combine_runs([m0, renamed], tmp_path / "ens")
    assert metrics["data_sha256"] == read_json(m0 / "metrics.json")["data_sha256"]


def test_cli_option_errors(ens_run, tmp_path, capsys, test_100):
    write_kaggle_csv(tmp_path / "test.csv", test_100, with_labels=False)
    assert_one_line_error(capsys, ["submit", "--onnx", "--tta", tmp_path / "m.onnx", tmp_path / "test.csv"],
                          "--tta needs the run's PyTorch model; it cannot be combined with --onnx")
    assert_one_line_error(capsys, ["train", "--ensemble", "1", "--epochs", "1", "--out", tmp_path / "one"],
                          "an ensemble needs at least 2 members, got 1")
    assert not (tmp_path / "one").exists()
