"""Evaluation record and metrics, submission format, scoring and the evaluate/submit/score CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from digitrec.core.data import write_answers_csv, write_kaggle_csv
from digitrec.core.metrics import Predictions, confident_mistakes, confusion_matrix, summarize, wilson_interval
from digitrec.nets.predict import evaluate_run
from digitrec.core.files import InputError
from digitrec.outputs.submit import score, write_submission


def _record(y_true, probs):
    probs = np.asarray(probs, dtype=np.float32)
    n = len(y_true)
    return Predictions("t", np.arange(1, n + 1), np.asarray(y_true), probs.argmax(1), probs,
                       np.zeros((n, 28, 28), np.uint8))


def test_confident_mistakes_rank_by_gap_between_predicted_and_true():
    eye = np.eye(10) * 0.0
    probs = eye.copy()[:4]
    probs[0, [3, 5]] = [0.9, 0.1]  # true 5, predicted 3: gap 0.8
    probs[1, [2, 7]] = [0.6, 0.4]  # true 7, predicted 2: gap 0.2
    probs[2, [1, 4]] = [0.99, 0.01]  # true 4, predicted 1: gap 0.98
    probs[3, 6] = 1.0  # correct
    mistakes = confident_mistakes(_record([5, 7, 4, 6], probs), top=6)
    assert [(m["id"], m["pred"], m["true"]) for m in mistakes] == [(3, 1, 4), (1, 3, 5), (2, 2, 7)]
    assert mistakes[0]["gap"] == pytest.approx(0.98)


def test_summary_invariants_on_a_real_run(tiny_run, mnist_test):
    preds = evaluate_run(tiny_run, mnist_test.subset(np.arange(2000)), "part")
    assert np.allclose(preds.probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(preds.probs.argmax(1), preds.y_pred)
    summary = summarize(preds)
    cm = np.array(summary["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 2000
    assert summary["accuracy"] == pytest.approx(np.trace(cm) / 2000)
    assert summary["errors"] == 2000 - np.trace(cm)
    low, high = summary["accuracy_ci95"]
    assert low < summary["accuracy"] < high
    assert [r["support"] for r in summary["per_class"]] == cm.sum(1).tolist()
    gaps = [m["gap"] for m in summary["confident_mistakes"]]
    assert gaps == sorted(gaps, reverse=True) and len(gaps) == 6
    loaded = Predictions.load(tiny_run / "predictions_part.npz")
    assert np.array_equal(loaded.probs, preds.probs) and np.array_equal(loaded.images, preds.images)
    assert (tiny_run / "evaluation_part.json").is_file()


def test_confusion_matrix_rows_are_truth():
    assert confusion_matrix(np.array([1, 1, 2]), np.array([1, 2, 2]))[1].tolist()[:3] == [0, 1, 1]


def test_wilson_interval_is_sound_near_100_percent():
    low, high = wilson_interval(9967, 10000)
    assert low < 0.9967 < high < 1.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_submission_format(tmp_path):
    preds = _record([0, 1, 2], np.eye(10)[[4, 1, 9]])
    path = write_submission(preds, tmp_path / "sub.csv")
    assert path.read_text() == "ImageId,Label\n1,4\n2,1\n3,9\n"


def _write(path, text):
    path.write_text(text)
    return path


def test_score_and_its_errors(tmp_path):
    answers = _write(tmp_path / "answers.csv", "ImageId,Label\n1,4\n2,1\n3,9\n4,0\n")
    assert score(_write(tmp_path / "s.csv", "ImageId,Label\n1,4\n2,1\n3,8\n4,0\n"), answers)["accuracy"] == 0.75
    shuffled = _write(tmp_path / "s2.csv", "ImageId,Label\n4,0\n3,9\n2,1\n1,4\n")  # order does not matter
    assert score(shuffled, answers)["accuracy"] == 1.0
    cases = {
        "ImageId,Label\n1,4\n2,1\n3,9\n": "3 rows, but",
        "ImageId,Label\n1,4\n2,1\n3,9\n5,0\n": "no row for ImageId 4",
        "Id,Label\n1,4\n2,1\n3,9\n4,0\n": "header must be exactly 'ImageId,Label'",
        "ImageId,Label\n1,4\n2,1\n2,9\n4,0\n": "row 3 (line 4), column ImageId: ImageId 2 appears twice",
        "ImageId,Label\n1,4\n2,x\n3,9\n4,0\n": "row 2 (line 3), column Label: 'x' is not 0..9",
        "ImageId,Label\n1,4\n2,1\n3,12\n4,0\n": "row 3 (line 4), column Label: '12' is not 0..9",
        "": "file is empty",
    }
    for text, message in cases.items():
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            score(_write(tmp_path / "bad.csv", text), answers)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "digitrec.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_submit_score_and_evaluate_on_kaggle_files(tiny_run, mnist_test, tmp_path):
    test = mnist_test.subset(np.arange(500))
    write_kaggle_csv(tmp_path / "test.csv", test, with_labels=False)
    write_answers_csv(tmp_path / "answers.csv", test)

    done = _cli("submit", tiny_run, tmp_path / "test.csv", "-o", tmp_path / "submission.csv")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 501
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 501))

    scored = _cli("score", tmp_path / "submission.csv", tmp_path / "answers.csv")
    evaluated = _cli("evaluate", tiny_run, "--test", tmp_path / "test.csv", "--answers", tmp_path / "answers.csv",
                     "--name", "kaggle500")
    assert scored.returncode == 0 and evaluated.returncode == 0, scored.stderr + evaluated.stderr
    accuracy = scored.stdout.split()[1]  # "accuracy 83.400% (417 of 500)"
    assert f"kaggle500: accuracy {accuracy}" in evaluated.stdout
    assert "most confident mistakes" in evaluated.stdout and "confusion matrix" in evaluated.stdout

    # a train file given where the test file belongs: one error line, exit 2, no submission written
    write_kaggle_csv(tmp_path / "train.csv", test, with_labels=True)
    bad = _cli("submit", tiny_run, tmp_path / "train.csv", "-o", tmp_path / "never.csv")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert not (tmp_path / "never.csv").exists()
    assert _cli("evaluate", tmp_path / "no-such-run").stderr.strip() == f"error: {tmp_path / 'no-such-run'}: no such run directory"
