"""Installable where users are: ranges in pyproject, exact versions in constraints.txt, extras that
say when they are missing, `make test` doing its own set-up, and a CLI front door for users."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from digitrec.cli import main

pytestmark = pytest.mark.slow  # builds and installs the package: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]


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


def test_make_installs_every_extra_at_the_constrained_versions(project):
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', makefile)
    assert installed, "the Makefile installs digitrec in editable mode with its extras"
    assert set(installed.group(1).split(",")) == set(project["optional-dependencies"])
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


# ---------------------------------------------------------------------------------------------
# the built distribution: what the wheel holds, and the wheel installed where no source tree is

WHEEL_MAX_BYTES = 4 << 20  # the code, the page and four model files (two nets, each as safetensors and ONNX): ~1.5 MB
PACKAGE_FILES = {  # a few of what must be inside, one of each kind
    "digitrec/__init__.py", "digitrec/cli.py", "digitrec/core/pretrained.py", "digitrec/nets/model.py",
    "digitrec/outputs/serve.py", "digitrec/outputs/static/index.html", "digitrec/outputs/static/app.js",
    "digitrec/outputs/static/style.css", "digitrec/outputs/static/favicon.svg",
    "digitrec/pretrained/models.json", "digitrec/pretrained/fast.safetensors", "digitrec/pretrained/best.safetensors",
    "digitrec/pretrained/fast.onnx", "digitrec/pretrained/best.onnx",
}


def notebook_install_cell() -> str:
    """The notebook's first code cell: the one that installs digitrec."""
    import jupytext  # the notebook extra: only these tests read the notebook

    nb = jupytext.read(ROOT / "notebooks" / "digit_recognizer.py")
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_the_install_cell_says_in_one_sentence_how_to_provide_digitrec_when_it_finds_none(tmp_path):
    # -S: no site-packages, so no digitrec; an empty folder stands in for /kaggle/input/; no DIGITREC_SOURCE
    out = subprocess.run([sys.executable, "-S", "-c", notebook_install_cell()], capture_output=True, text=True,
                         env={"DIGITREC_KAGGLE_INPUT": str(tmp_path)}, timeout=60)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == ("digitrec is not installed: attach a Kaggle dataset holding a digitrec wheel (made with "
                          "`make dist`, see docs/notebook.md) or set DIGITREC_SOURCE in this cell to a wheel or "
                          "VCS URL.\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `make dist` builds: the sdist first, then the wheel from the unpacked sdist (so nothing
    left in the checkout's build/ folder can slip in), without build isolation (no network)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (path,) = out.glob("digitrec-*.whl")
    return path


def test_the_wheel_holds_the_code_the_page_and_the_models_and_nothing_else(wheel, project):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert PACKAGE_FILES <= set(names), sorted(PACKAGE_FILES - set(names))
    for name in names:
        top = name.split("/")[0]
        assert top == "digitrec" or top == f"digitrec-{project['version']}.dist-info", name
        assert not re.search(r"__pycache__|\.pyc$|(^|/)tests?/|(^|/)runs/|\.ipynb|build/", name), name
    assert wheel.stat().st_size < WHEEL_MAX_BYTES, f"{wheel.name}: {wheel.stat().st_size:,} bytes"
    meta = zipfile.ZipFile(wheel).read(f"digitrec-{project['version']}.dist-info/METADATA").decode()
    assert f"Version: {project['version']}" in meta
    assert "Requires-Dist: torch>=2.6" in meta and "License-Expression: MIT" in meta
    for extra in ("serve", "onnx", "notebook"):
        assert f"Provides-Extra: {extra}" in meta
    assert "digitrec = digitrec.cli:main" in zipfile.ZipFile(wheel).read(
        f"digitrec-{project['version']}.dist-info/entry_points.txt").decode()


def test_the_sdist_holds_the_source_the_licence_and_the_models_and_no_runs_or_builds(wheel, project):
    import tarfile

    (sdist,) = wheel.parent.glob("digitrec-*.tar.gz")
    top = f"digitrec-{project['version']}/"
    names = {name.removeprefix(top) for name in tarfile.open(sdist).getnames()}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/digitrec/cli.py",
            "src/digitrec/pretrained/models.json", "src/digitrec/pretrained/best.onnx"} <= names
    assert not [n for n in names if re.match(r"(runs|build|dist|\.venv|notebooks/runs)/|.*\.ipynb$|.*__pycache__", n)]


def dependencies_path(tmp: Path) -> Path:
    """A folder of links to every installed distribution of this environment but digitrec: the clean
    environment's dependencies (torch included), without copying gigabytes or reaching a package index."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    farm = tmp / "dependencies"
    farm.mkdir()
    for entry in site.iterdir():
        if not re.match(r"(digitrec|__editable__|_?_?pycache__)|.*\.pth$", entry.name):
            (farm / entry.name).symlink_to(entry)
    return farm


@pytest.mark.slow
def test_the_wheel_installs_by_the_notebooks_cell_and_works_without_the_source_tree(wheel, project, tmp_path):
    """A new virtual environment whose only dependencies are already-installed ones (torch, numpy, ...;
    pip must resolve the wheel's requirements against them, offline), the wheel installed by the
    notebook's install cell from a folder standing in for /kaggle/input/, then every front door run
    from a folder outside the checkout."""
    from PIL import Image

    from digitrec.core.data import load_mnist

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(f"{dependencies_path(tmp_path)}\n")
    kaggle_input = tmp_path / "kaggle-input" / "digitrec-wheel"
    kaggle_input.mkdir(parents=True)
    (kaggle_input / wheel.name).write_bytes(wheel.read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "DIGITREC_KAGGLE_INPUT": str(tmp_path / "kaggle-input"), "PIP_NO_INDEX": "1",
           "DIGITREC_CACHE": os.environ.get("DIGITREC_CACHE", ""), "OMP_NUM_THREADS": "2"}
    env = {k: v for k, v in env.items() if v}

    def run(*argv, check=True):
        out = subprocess.run([str(a) for a in argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert not check or out.returncode == 0, f"{argv}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out

    torch_before = run(python, "-c", "import torch; print(torch.__version__, torch.__file__)").stdout
    installed = run(python, "-c", notebook_install_cell())
    assert f"installing digitrec from {(kaggle_input / wheel.name).as_uri()}" in installed.stdout
    assert run(python, "-c", "import torch; print(torch.__version__, torch.__file__)").stdout == torch_before

    where = run(python, "-c", "import digitrec, sys; print(digitrec.__file__); print(digitrec.__version__); "
                              "print(any('src' in p and 'digitrec' in p for p in sys.path))").stdout.split()
    assert where[0].startswith(purelib) and where[1:] == [project["version"], "False"]
    assert run(venv / "bin" / "digitrec", "--version").stdout == f"digitrec {project['version']}\n"

    # a digit as a photo: dark ink on a light page, four times MNIST's size
    test = load_mnist("test")
    digit, label = test.images[0], int(test.labels[0])
    Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BICUBIC).save(work / "digit.png")
    read = run(venv / "bin" / "digitrec", "predict", "digit.png", "--format", "csv")
    assert read.stdout.splitlines()[1].split(",")[1] == str(label), read.stdout
    assert "reading with the bundled 'best' model" in read.stderr

    # a short training on a small Kaggle CSV, then the run reads the same photo (the run-first form)
    small = test.subset(np.arange(1500), "mnist:test[:1500]")  # 11 steps of 128: one-cycle needs a few
    pd.DataFrame(small.to_frame()).to_csv(work / "train.csv", index=False)
    run(venv / "bin" / "digitrec", "train", "--train", "train.csv", "--preset", "fast", "--epochs", "1",
        "--out", "run", "--quiet")
    assert run(venv / "bin" / "digitrec", "predict", "run", "digit.png").returncode == 0
    # the installed `fast` scores what its card records on the official test set
    scores = run(python, "-c", "import digitrec as dr; clf = dr.DigitClassifier.pretrained('fast'); "
                               "print(clf.score('mnist'), clf.metrics_['test']['accuracy'])").stdout.split()
    assert float(scores[0]) == float(scores[1]) > 0.99
