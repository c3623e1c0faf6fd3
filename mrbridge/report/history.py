"""The optimization history of a run bundle (``history.csv``, one row per step) as numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from mrbridge.errors import InputError


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``history.csv``: column → value; empty cells and text columns (``phase``) left out.

    Raises InputError when the file has no ``step`` column.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise InputError(f"{path}: column 'step' missing; expected the history.csv of a run bundle")
        rows = []
        for raw in reader:
            row: dict[str, float] = {}
            for key, text in raw.items():
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    row[key] = value
            if "step" in row:
                rows.append(row)
    return rows
