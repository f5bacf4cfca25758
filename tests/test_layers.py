"""The shape of the code: the layers of src/digitrec/, and what each may import.

core (no torch) <- nets <- training <- outputs <- the front doors (cli, estimator, the package).
A module imports its own layer or lower ones, never a higher one; no import cycle, counting imports
inside functions; an import inside a function says why it is there (a comment on its line); the
core imports without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "digitrec"
LAYERS = {"core": 0, "nets": 1, "training": 2, "outputs": 3}
FRONT = 4  # cli.py, estimator.py, __init__.py, __main__.py


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], FRONT) if len(parts) > 1 else FRONT


def _imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported digitrec module, line, inside a function, the source line) of every import in `path`."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                targets = [target]
                if not child.module:  # `from . import distributed`
                    targets = [f"{target}.{alias.name}" for alias in child.names]
                for t in targets:
                    found.append((t, child.lineno, in_function, lines[child.lineno - 1]))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name, child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, nested)

    visit(tree, False)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer():
    folders = {p.parent.name for p in SOURCES if p.parent != PACKAGE}
    assert folders <= set(LAYERS), f"a folder outside the layers: {folders - set(LAYERS)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_layer_imports_a_higher_one(path):
    module = _module_name(path)
    higher = [(t, line) for t, line, _, _ in _imports(path)
              if t.startswith("digitrec.") and _layer(t) > _layer(module)]
    assert not higher, f"{module} (layer {_layer(module)}) imports higher layers: {higher}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_inside_functions_say_why(path):
    """An import inside a function keeps a heavy dependency off a path; its line says which."""
    silent = [(line, text.strip()) for t, line, inside, text in _imports(path)
              if inside and "#" not in text and not t.startswith("__future__")]
    # a parenthesised import continues on the next lines: its comment sits on the first
    assert not silent, f"imports inside functions without a comment saying why: {silent}"


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        module = _module_name(path)
        graph[module] = {t for t, *_ in _imports(path) if t.startswith("digitrec.") and t != module
                         and t in {_module_name(p) for p in SOURCES}}
    done: set[str] = set()

    def visit(module: str, trail: list[str]):
        if module in trail:
            cycle = trail[trail.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if target.startswith(module + "."):  # a package's __init__ naming its own modules
                continue
            visit(target, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_core_imports_without_torch():
    core = sorted(_module_name(p) for p in (PACKAGE / "core").glob("*.py"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core)
            + "heavy = sorted(m for m in ('torch', 'cv2') if m in sys.modules)\n"
            + "print(','.join(heavy))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing the core loaded {done.stdout.strip()}"


def test_the_onnx_paths_never_load_torch():
    """The CLI's module and the ONNX classifier import without torch (`submit --onnx`, `predict --onnx`)."""
    code = ("import sys\nimport digitrec.cli, digitrec.outputs.export, digitrec.outputs.submit\n"
            "print('torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
