"""Installable where users are: ranges in pyproject, exact versions in constraints.txt, extras that
say when they are missing, `make test` doing its own set-up, and a CLI front door for users."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from digitrec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_dependencies_are_ranges_that_keep_the_users_torch(project):
    for requirement in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        assert "==" not in requirement, f"exact pin in pyproject.toml: {requirement}"
    assert "torch>=2.6" in project["dependencies"]
    core = {requirement_name(r) for r in project["dependencies"]}
    for server_or_onnx in ("fastapi", "uvicorn", "onnx", "onnxruntime", "orjson", "ipykernel"):
        assert server_or_onnx not in core
    assert set(project["optional-dependencies"]) >= {"serve", "onnx", "notebook", "test"}


def test_constraints_pin_every_dependency_exactly(project, constraints):
    named = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for requirement in named:
        name = requirement_name(requirement)
        if name != "digitrec":  # serve's own reference to digitrec[onnx]
            assert name in constraints, f"{name} has no exact version in constraints.txt"
    assert constraints["torch"] == "2.13.0"


def test_make_installs_every_extra_at_the_constrained_versions():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert '-e ".[serve,onnx,notebook,test]"' in makefile
    assert re.search(r"^test: .*\bbrowser\b", makefile, re.M)


def test_ci_only_calls_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test" in script
    assert not re.search(r"apt-get|pip install|npm install", script)


def test_make_test_says_how_to_get_the_browser_when_it_cannot_install_it():
    # no apt-get and no sudo on PATH: make cannot install it, so it says which command to run
    out = subprocess.run(["/usr/bin/make", "-s", "-C", str(ROOT), "browser", "BROWSER=/nonexistent/chromium"],
                         capture_output=True, text=True, env={"PATH": "/nonexistent"}, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == ("make test needs /nonexistent/chromium for the browser tests; "
                                          "install it with: sudo apt-get install chromium")
    present = subprocess.run(["/usr/bin/make", "-s", "-C", str(ROOT), "browser", f"BROWSER={sys.executable}"],
                             capture_output=True, text=True, env={"PATH": "/nonexistent"}, timeout=60)
    assert (present.returncode, present.stdout, present.stderr) == (0, "", "")


@pytest.mark.parametrize("argv, module, extra", [
    (["serve", "RUN"], "fastapi", "serve"),
    (["predict", "--onnx", "model.onnx", "digit.png"], "onnxruntime", "onnx"),
])
def test_a_command_whose_extra_is_missing_names_it(argv, module, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    for name in [m for m in sys.modules if m in ("digitrec.outputs.serve", "digitrec.outputs.export")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: digitrec {argv[0]} needs {module}, from the '{extra}' extra: "
                                       f"pip install 'digitrec[{extra}]'\n")


def test_help_tells_a_user_what_digitrec_does_and_where_to_start(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.split("\n\n")[1].startswith("digitrec recognises handwritten digits.")
    assert "Command line: parse arguments" not in text  # that line is for developers
    assert "start here:\n  digitrec run --preset fast" in text
    assert "import digitrec as dr" in text
