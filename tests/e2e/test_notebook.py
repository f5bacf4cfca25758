"""The reference notebook, executed in a real Jupyter kernel on the small sample (about a minute)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real Jupyter kernel runs the notebook: `make test`, not `make check`

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "digit_recognizer.py"
FIGURE_CELLS = ("label_counts", "augmentation", "curves", "confusion", "top_errors", "calibration")


def load_execute():
    spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.execute


@pytest.fixture(scope="module")
def executed(tmp_path_factory, mnist_train):  # mnist_train: the MNIST cache is filled before the kernel starts
    work = tmp_path_factory.mktemp("notebook")
    env = {"DIGITREC_SMALL": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        nb = load_execute()(NOTEBOOK, work / "digit_recognizer.ipynb", cwd=work, timeout=600)
    return nb, work


def tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def test_every_cell_ran_without_error(executed):
    nb, work = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code)
    assert [o for c in code for o in c.outputs if o.output_type == "error"] == []
    assert (work / "digit_recognizer.ipynb").is_file()


def test_figure_cells_show_one_png_each(executed):
    nb, _ = executed
    for tag in FIGURE_CELLS:
        pngs = [o for o in tagged(nb, tag).outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, (tag, [o.output_type for o in tagged(nb, tag).outputs])


def test_the_submission_has_kaggles_header_and_one_row_per_test_image(executed):
    _, work = executed
    lines = (work / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert len(lines) == 1 + 1000  # the small sample's test rows
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 1001))
    assert {int(line.split(",")[1]) for line in lines[1:]} <= set(range(10))


def test_the_notebook_is_text_in_percent_format_without_outputs():
    text = NOTEBOOK.read_text()
    assert "format_name: percent" in text and "# %% [markdown]" in text
    assert '"outputs"' not in text
    assert "/kaggle/input/digit-recognizer" in text and "DIGITREC_SMALL" in text
