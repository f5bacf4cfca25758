"""The run folder (core/rundir.py): its manifest of SHA-256 digests, checked on every read; `digitrec
verify`; runs from before the manifest; the headline accuracy; what `remove_own_files` removes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from digitrec.cli import main
from digitrec.core.files import InputError
from digitrec.core.rundir import (CHECKPOINT, CONFIG, MANIFEST, METRICS, WEIGHTS, Run, evaluation_file,
                                  predictions_file, sha256)
from digitrec.nets.weights import load_run_model


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of a finished run, free to damage."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return Run(tmp_path / "run")


def _flip_a_tensor_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's bytes: still a valid safetensors file
    path.write_bytes(bytes(data))


def test_every_file_a_run_writes_is_in_its_manifest(run):
    digests = run.digests()
    written = {p.relative_to(run.path).as_posix() for p in run.path.rglob("*")
               if p.is_file() and p.name not in (MANIFEST, ".lock")}
    assert written == set(digests), written ^ set(digests)
    for name, allowed in digests.items():
        assert allowed == [sha256((run / name).read_bytes())], name  # settled: one digest each
    assert {CONFIG, METRICS, WEIGHTS, CHECKPOINT, predictions_file("val")} <= set(digests)


def test_weights_whose_bytes_changed_are_refused(run, capsys):
    before = load_run_model(run.path)[0].state_dict()
    _flip_a_tensor_byte(run / WEIGHTS)
    with pytest.raises(InputError, match=r"model\.safetensors: does not match its SHA-256 digest in manifest\.json"):
        load_run_model(run.path)
    # the CLI: one error line naming the file, exit 2, nothing written
    code = main(["evaluate", str(run.path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and str(run / WEIGHTS) in err[0] and "digest" in err[0]
    assert not run.has(predictions_file("test"))
    assert before  # the untouched model loaded


def test_verify_names_each_damaged_file(run, capsys):
    assert main(["verify", str(run.path)]) == 0
    assert "every file matches" in capsys.readouterr().out
    _flip_a_tensor_byte(run / WEIGHTS)
    (run / METRICS).write_text((run / METRICS).read_text().replace('"epochs": 1', '"epochs": 9'))
    assert main(["verify", str(run.path)]) == 2
    out, err = capsys.readouterr()
    assert f"{run / WEIGHTS}: does not match" in out and f"{run / METRICS}: does not match" in out
    assert f"{run / CONFIG}" not in out
    assert err.strip() == f"error: {run.path}: 2 file(s) do not match their digests"


def test_verify_reports_a_missing_file(run, capsys):
    (run / predictions_file("val")).unlink()
    assert main(["verify", str(run.path)]) == 2
    assert "listed in manifest.json but missing" in capsys.readouterr().out


def test_a_run_from_before_the_manifest_loads_and_says_so_once(run, capsys):
    (run / MANIFEST).unlink()
    model, cfg, _ = load_run_model(run.path)
    assert cfg.epochs == 1
    Run(run.path).metrics(), Run(run.path).history()
    err = capsys.readouterr().err
    assert err.count("no digest in manifest.json") == 1
    assert main(["verify", str(run.path)]) == 0
    assert "nothing to check" in capsys.readouterr().out


def test_a_garbled_manifest_is_an_input_error(run):
    (run / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: not a digitrec manifest"):
        run.metrics()


def test_a_kill_between_the_file_and_its_digest_leaves_it_readable(run):
    """While a file is replaced, the manifest lists both digests: the old file, or the new, reads."""
    old = (run / METRICS).read_bytes()
    new = old.replace(b"{", b'{"note": 1, ', 1)
    files = json.loads((run / MANIFEST).read_text())
    files["files"][METRICS] = sorted({sha256(old), sha256(new)})  # as write_bytes leaves it mid-way
    (run / MANIFEST).write_text(json.dumps(files))
    assert run.metrics()["epochs"] == 1  # the old file
    (run / METRICS).write_bytes(new)
    assert run.metrics()["note"] == 1  # the new one


def test_writing_again_keeps_one_digest_per_file(run):
    run.write_json("extra.json", {"a": 1})
    run.write_json("extra.json", {"a": 2})
    assert run.digests()["extra.json"] == [sha256((run / "extra.json").read_bytes())]
    assert run.read_json("extra.json") == {"a": 2}


def test_headline_accuracy_prefers_the_test_set(run, small_train):
    headline = run.headline()
    assert headline["on"] == "validation" and headline["accuracy"] == run.metrics()["val_accuracy"]
    from digitrec.nets.predict import evaluate_run

    preds = evaluate_run(run.path, small_train.subset(np.arange(200), "first 200"))
    assert run.headline() == {"accuracy": preds.accuracy, "on": "test", "n": 200}
    assert run.scored_set() == "test" and run.has(evaluation_file("test"))


def test_remove_own_files_keeps_the_users(run):
    (run / "notes.txt").write_text("mine")
    run.remove_own_files()
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt"]
    assert not run.holds_run()
