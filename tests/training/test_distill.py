"""Distillation (recipe field distill_from): the loss's target, the teacher recorded, resume, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from digitrec.cli import main
from digitrec.core.config import make_config
from digitrec.core.data import write_kaggle_csv
from digitrec.core.files import InputError, Interrupted
from digitrec.training.distill import distillation_loss
from digitrec.training.train import StopRequest, fit
from tests.conftest import synthetic_digits


def _tiny(**kw):
    return make_config(**{"model": "fast", "width": 8, "epochs": 2, "batch_size": 32, **kw})


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def _stop_after_epoch(stop: StopRequest):
    """An on_epoch hook that asks the run to stop, as SIGTERM would: it checkpoints and raises Interrupted."""
    return lambda epoch, model: setattr(stop, "signum", 15)


@pytest.fixture(scope="module")
def digits():
    return synthetic_digits(320, seed=5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    fit(_tiny(seed=3), digits, out, quiet=True)
    return out


def test_distillation_changes_the_loss_target():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    teacher = torch.randn(8, 10).log_softmax(1)
    cfg = make_config(label_smoothing=0.1)
    assert torch.equal(distillation_loss(logits, y, cfg), F.cross_entropy(logits, y, label_smoothing=0.1))
    soft = -(teacher.exp() * logits.log_softmax(1)).sum(1).mean()
    only_teacher = make_config(distill_from="t", distill_weight=1.0)
    assert torch.allclose(distillation_loss(logits, y, only_teacher, teacher), soft)
    half = make_config(distill_from="t", label_smoothing=0.1)  # weight 0.5 by default
    expected = 0.5 * F.cross_entropy(logits, y, label_smoothing=0.1) + 0.5 * soft
    assert torch.allclose(distillation_loss(logits, y, half, teacher), expected)
    # the soft part is smallest where the student's probabilities are the teacher's, not the labels'
    at_teacher = distillation_loss(teacher.clone(), y, only_teacher, teacher)
    at_labels = distillation_loss(10 * F.one_hot(y, 10).float(), y, only_teacher, teacher)
    assert at_teacher < at_labels
    hot = make_config(distill_from="t", distill_weight=1.0, distill_temperature=4.0)
    softened = -((teacher / 4).softmax(1) * (logits / 4).log_softmax(1)).sum(1).mean() * 16
    assert torch.allclose(distillation_loss(logits, y, hot, teacher), softened)


@pytest.mark.parametrize("field, value, message", [
    ("distill_weight", 0.0, r"distill_weight must be in \(0, 1\]"),
    ("distill_weight", 1.5, r"distill_weight must be in \(0, 1\]"),
    ("distill_temperature", 0.0, "distill_temperature must be positive"),
])
def test_bad_distillation_fields_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        make_config(distill_from="t", **{field: value})


def test_a_distilled_run_learns_otherwise_and_records_its_teacher(tmp_path, digits, teacher):
    plain = fit(_tiny(), digits, tmp_path / "plain", quiet=True)
    distilled = fit(_tiny(distill_from=str(teacher)), digits, tmp_path / "distilled", quiet=True)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "distilled")
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert "distillation" not in plain
    assert distilled["distillation"]["teacher"] == str(teacher.resolve())
    assert len(distilled["distillation"]["teacher_sha256"]) == 64
    config = json.loads((tmp_path / "distilled" / "config.json").read_text())
    assert (config["distill_from"], config["distill_weight"], config["distill_temperature"]) == (str(teacher), 0.5, 1.0)


def test_a_stopped_distilled_run_resumes_to_the_same_weights(tmp_path, digits, teacher):
    cfg = _tiny(distill_from=str(teacher), epochs=3)
    fit(cfg, digits, tmp_path / "whole", quiet=True)
    stop = StopRequest()
    with pytest.raises(Interrupted):
        fit(cfg, digits, tmp_path / "stopped", quiet=True, stop=stop, on_epoch=_stop_after_epoch(stop))
    fit(cfg, digits, tmp_path / "stopped", resume=True, quiet=True)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_teacher(tmp_path, digits):
    teacher = tmp_path / "teacher"
    fit(_tiny(seed=3, epochs=1), digits, teacher, quiet=True)
    cfg = _tiny(distill_from=str(teacher), epochs=2)
    stop = StopRequest()
    with pytest.raises(Interrupted):
        fit(cfg, digits, tmp_path / "student", quiet=True, stop=stop, on_epoch=_stop_after_epoch(stop))
    for child in teacher.iterdir():
        child.unlink()
    fit(_tiny(seed=4, epochs=1), digits, teacher, quiet=True)  # another teacher in the same folder
    with pytest.raises(InputError, match="the teacher's weights changed since this run started"):
        fit(cfg, digits, tmp_path / "student", resume=True, quiet=True)


def test_a_bad_teacher_is_one_line_and_exit_2(tmp_path, capsys, digits):
    write_kaggle_csv(tmp_path / "train.csv", digits, with_labels=True)
    (tmp_path / "empty").mkdir()
    common = ["train", "--train", str(tmp_path / "train.csv"), "--epochs", "1", "--quiet"]
    missing, empty, out = tmp_path / "missing", tmp_path / "empty", tmp_path / "out"
    cases = [(missing, f"{missing}: no such run directory (distill_from names the teacher's run folder)"),
             (empty, f"{empty}: no model.safetensors; distill_from needs a finished run or ensemble"),
             (out, f"{out}: a run cannot be its own teacher (distill_from is --out)")]
    out.mkdir()
    for teacher_dir, message in cases:
        code = main(common + ["--distill-from", str(teacher_dir), "--out", str(out)])
        assert code == 2
        assert capsys.readouterr().err == f"error: {message}\n"
        assert not (out / "config.json").exists()
    code = main(common + ["--distill-from", str(empty), "--distill-weight", "2", "--out", str(tmp_path / "o2")])
    assert code == 2
    assert capsys.readouterr().err == "error: distill_weight must be in (0, 1]\n"
