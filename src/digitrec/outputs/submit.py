"""Kaggle submissions: write one from a predictions record, and score one against an answer key."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.data import Digits
from ..core.files import InputError, atomic_write, first_line
from ..core.metrics import Predictions

SUBMISSION_COLUMNS = ["ImageId", "Label"]
# Cells are read as float64, which holds every integer up to this exactly; a larger ImageId (no
# Kaggle file has one) would be rounded, and two different ones could look the same.
MAX_IMAGE_ID = 2 ** 53 - 1


def write_submission(preds: Predictions, path: str | os.PathLike) -> Path:
    """`ImageId,Label`, ImageId in test-file order, one row per image, no index column."""
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        f.write("ImageId,Label\n")
        f.writelines(f"{i},{y}\n" for i, y in zip(preds.ids.tolist(), preds.y_pred.tolist()))
    return path


def read_label_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission or answer key (`ImageId,Label`), checking every row."""
    name = str(path)
    if not Path(path).is_file():
        raise InputError(f"{name}: no such file")
    if Path(path).stat().st_size == 0:
        raise InputError(f"{name}: file is empty")
    try:
        frame = pd.read_csv(path, engine="pyarrow")
    except (pd.errors.ParserError, ValueError) as e:
        raise InputError(f"{name}: not a readable CSV ({first_line(e)})") from None
    columns = [str(c).strip() for c in frame.columns]
    if columns != SUBMISSION_COLUMNS:
        raise InputError(f"{name}: header must be exactly 'ImageId,Label', found {','.join(columns)!r}")
    if len(frame) == 0:
        raise InputError(f"{name}: no rows after the header")
    frame.columns = columns
    for column, low, high in (("ImageId", 1, MAX_IMAGE_ID), ("Label", 0, 9)):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < low) | (values > high))
        if len(bad):
            row = int(bad[0])
            limits = f"{low}..{high}" if column == "Label" else f"an integer from {low} to 2^53 - 1"
            raise InputError(f"{name}: row {row + 1} (line {row + 2}), column {column}: "
                             f"{str(frame[column].iloc[row])!r} is not {limits}")
        frame[column] = values.astype(np.int64)
    duplicated = np.flatnonzero(frame["ImageId"].duplicated().to_numpy())
    if len(duplicated):
        row = int(duplicated[0])
        raise InputError(f"{name}: row {row + 1} (line {row + 2}), column ImageId: "
                         f"ImageId {frame['ImageId'].iloc[row]} appears twice")
    return frame


def score(submission_path: str | os.PathLike, answers_path: str | os.PathLike) -> dict:
    """Accuracy of a submission against an answer key; ids and row counts must match exactly."""
    sub, answers = read_label_file(submission_path), read_label_file(answers_path)
    if len(sub) != len(answers):
        raise InputError(f"{submission_path}: {len(sub)} rows, but {answers_path} has {len(answers)}")
    merged = answers.merge(sub, on="ImageId", how="left", suffixes=("_true", "_pred"))
    missing = merged["Label_pred"].isna().to_numpy()
    if missing.any():
        image_id = int(merged["ImageId"].iloc[int(np.argmax(missing))])
        raise InputError(f"{submission_path}: no row for ImageId {image_id} (it is in {answers_path})")
    correct = int((merged["Label_true"] == merged["Label_pred"]).sum())
    return {"accuracy": correct / len(answers), "correct": correct, "n": len(answers)}


def with_answers(digits: Digits, answers_path: str | os.PathLike) -> Digits:
    """An unlabelled Kaggle test set with its labels taken from an answer key (`ImageId,Label`)."""
    answers = read_label_file(answers_path)
    if len(answers) != len(digits):
        raise InputError(f"{answers_path}: {len(answers)} rows, but {digits.source} has {len(digits)} images")
    labels = answers.set_index("ImageId")["Label"].reindex(digits.ids)
    if labels.isna().any():
        raise InputError(f"{answers_path}: no label for ImageId {int(digits.ids[labels.isna().to_numpy()][0])}")
    return Digits(digits.images, labels.to_numpy().astype(np.int64), digits.ids, digits.source)
