"""The models that ship inside the package: which there are, their files, and checked reads.

`src/digitrec/pretrained/` holds, for each name in NAMES, the PyTorch weights (`<name>.safetensors`,
rebuildable by nets/weights.py) and the same network exported to ONNX (`<name>.onnx`, run by
outputs/export.py's OnnxClassifier without torch), plus `models.json`: each file's SHA-256 and size,
the recipe, seed and command that trained it, and what it scored on the official MNIST test set.
`make pretrained` (scripts/make_pretrained.py) writes all of it; docs/models/<name>.md are the cards.

Every read here checks the file's bytes against the digest in models.json, so a damaged or swapped
file is refused with one line instead of reading digits with another model.

    >>> from digitrec.core import pretrained
    >>> pretrained.NAMES
    ('fast', 'best')
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .files import InputError

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
INDEX = "models.json"
NAMES = ("fast", "best")
# What `digitrec predict` and `serve` read with when no run is given; docs/models/README.md has the
# photo benchmark behind the choice.
DEFAULT = "best"
KINDS = {"weights": "safetensors", "onnx": "onnx"}  # kind -> file suffix


def index() -> dict:
    """models.json: {"models": {name: {"files": {kind: {"name", "sha256", "bytes"}}, ...}}, ...}."""
    path = PRETRAINED_DIR / INDEX
    if not path.is_file():
        raise InputError(f"{path}: missing; this digitrec was built without its pretrained models "
                         "(make pretrained writes them)")
    return json.loads(path.read_text(encoding="utf-8"))


def card(name: str) -> dict:
    """What models.json says about model `name`: recipe, seed, command, test scores, files."""
    models = index()["models"]
    if name not in models:
        raise InputError(f"no pretrained model {name!r} (known: {', '.join(models)})")
    return models[name]


def path(name: str, kind: str = "weights") -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return PRETRAINED_DIR / card(name)["files"][kind]["name"]


def read_bytes(name: str, kind: str = "weights") -> bytes:
    """The bytes of pretrained model `name`'s file of `kind`, after checking their SHA-256."""
    expected = card(name)["files"][kind]["sha256"]
    file = path(name, kind)
    if not file.is_file():
        raise InputError(f"{file}: missing from this installation of digitrec; reinstall it")
    data = file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise InputError(f"{file}: its SHA-256 is {actual[:12]}..., not the {expected[:12]}... recorded in "
                         f"{INDEX}; the file is damaged or was replaced: reinstall digitrec")
    return data


def describe(name: str) -> str:
    """One line saying which model reads: for `digitrec predict` and `serve`."""
    test = card(name)["test"]
    return (f"the bundled '{name}' model ({100 * test['accuracy']:.2f}% on the {test['n']:,} MNIST test images; "
            f"docs/models/{name}.md)")
