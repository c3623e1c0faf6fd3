"""Shared test helpers: paths to real data, and property checks used across the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "pulseq-tutorials"


def shared_data(name: str) -> Path:
    """Path of a real scanner file in ../shared/data; skips the test when ../shared is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real scanner data not available: {path}")
    return path


def nrmse(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """‖estimate − reference‖ / ‖reference‖ (complex or real)."""
    return float(torch.linalg.vector_norm(estimate - reference) / torch.linalg.vector_norm(reference))
