"""What `digitrec predict` prints for the Readings of images.py: a table, JSON or CSV, with "not sure"
where a digit's probability is below a threshold.

Abstaining, in every format: a digit whose top probability is below `min_confidence` is unsure.
Its place in the number is "?" ("12?58"), the answer itself is withheld (JSON `digit` null, CSV
`digit` empty, the table's digit "?"), and the best guess and its probability stay beside it
(`best_guess`, `confidence`, the top 3). A reading with an unsure digit is unsure as a whole
(`unsure`), with its best-guess number in `best_guess`. Without a threshold nothing is unsure.
"""

from __future__ import annotations

import csv
import io
import json

from ..core.metrics import check_min_confidence, unsure as unsure_mask
from .images import NO_DIGIT, Reading

UNSURE_MARK = "?"  # an unsure digit's place in a number


def number(reading: Reading, min_confidence: float | None) -> str:
    """The digits read, left to right, with "?" for each unsure one."""
    doubtful = unsure_mask(reading.probs, min_confidence)
    return "".join(UNSURE_MARK if d else str(digit) for digit, d in zip(reading.digits, doubtful))


def readings_to_json(readings: list[Reading], min_confidence: float | None = None) -> str:
    rows = []
    for r in readings:
        doubtful = unsure_mask(r.probs, min_confidence)
        digits = [{"digit": None if d else top[0][0], "best_guess": top[0][0], "confidence": round(top[0][1], 6),
                   "unsure": bool(d), "top3": [{"class": c, "probability": round(p, 6)} for c, p in top]}
                  for top, d in zip(r.top(3), doubtful)]
        read = not r.error and bool(r.digits)
        rows.append({"file": r.name, "number": number(r, min_confidence) if read else None,
                     "best_guess": r.number if read else None, "unsure": bool(doubtful.any()),
                     "digits": digits, "error": r.error or (NO_DIGIT if not r.digits else None)})
    return json.dumps(rows, indent=2)


# the columns of every reading; `unsure` and `best_guess` matter only with a min_confidence
CSV_COLUMNS = ["file", "number", "position", "digit", "confidence", "top2", "p2", "top3", "p3", "error",
               "unsure", "best_guess"]


def readings_to_csv(readings: list[Reading], min_confidence: float | None = None) -> str:
    """One row per digit (position 1 = leftmost); a file with no digit or an error has one row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in readings:
        if r.error or not r.digits:
            writer.writerow([r.name, "", "", "", "", "", "", "", "", r.error or NO_DIGIT, "", ""])
        shown = number(r, min_confidence)
        for position, (top, d) in enumerate(zip(r.top(3), unsure_mask(r.probs, min_confidence)), 1):
            (best, p), (c2, p2), (c3, p3) = top
            writer.writerow([r.name, shown, position, "" if d else best, f"{p:.6f}", c2, f"{p2:.6f}", c3,
                             f"{p3:.6f}", "", "true" if d else "false", best])
    return buffer.getvalue()


def readings_to_table(readings: list[Reading], min_confidence: float | None = None) -> str:
    """Aligned text: file, number, then each digit with its confidence and top-3 ("not sure" marked)."""
    numbers = [number(r, min_confidence) for r in readings]
    width = max([len("file"), *(len(r.name) for r in readings)])
    number_width = max([len("number"), *map(len, numbers)])
    lines = [f"{'file':<{width}}  {'number':<{number_width}}  digit  confidence  top-3"]
    for r, shown in zip(readings, numbers):
        if r.error or not r.digits:
            # the error itself goes to stderr (see cli.cmd_predict); json and csv carry it in full
            lines.append(f"{r.name:<{width}}  {'-':<{number_width}}  {'could not be read' if r.error else NO_DIGIT}")
            continue
        for position, (top, d) in enumerate(zip(r.top(3), unsure_mask(r.probs, min_confidence))):
            head = f"{r.name:<{width}}  {shown:<{number_width}}" if position == 0 else " " * (width + 2 + number_width)
            alternatives = ", ".join(f"{c} {p:.3f}" for c, p in top)
            digit = UNSURE_MARK if d else str(top[0][0])
            note = f"  not sure (below {min_confidence:g})" if d else ""
            lines.append(f"{head}  {digit:>5}  {top[0][1]:>10.4f}  {alternatives}{note}")
    return "\n".join(lines)


FORMATS = {"table": readings_to_table, "json": readings_to_json, "csv": readings_to_csv}


def format_readings(readings: list[Reading], fmt: str = "table", min_confidence: float | None = None) -> str:
    """The readings in `fmt`; digits below `min_confidence` (a probability, checked) are "not sure"."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if min_confidence is not None:  # a bad threshold fails before anything is printed
        min_confidence = check_min_confidence(min_confidence)
    return FORMATS[fmt](readings, min_confidence).rstrip("\n")
