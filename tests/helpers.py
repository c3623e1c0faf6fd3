"""Shared test helpers: paths to real data, and property checks used across the suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "pulseq-tutorials"


def shared_data(name: str) -> Path:
    """Path of a real scanner file in ../shared/data (``pulseq-tutorials/`` unless ``name`` names its folder);
    skips the test when ../shared is absent."""
    path = SHARED_DATA / name if "/" not in name else SHARED_DATA.parent / name
    if not path.exists():
        pytest.skip(f"real scanner data not available: {path}")
    return path


def nrmse(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """‖estimate − reference‖ / ‖reference‖ (complex or real)."""
    return float(torch.linalg.vector_norm(estimate - reference) / torch.linalg.vector_norm(reference))


def assert_adjoint(op: Any, x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-5) -> None:
    """Dot-product test ⟨A x, y⟩ = ⟨x, Aᴴ y⟩ for a linear operator with ``op(x)`` and ``op.H(y)``."""
    lhs = torch.vdot(op(x).reshape(-1), y.reshape(-1))
    rhs = torch.vdot(x.reshape(-1), op.H(y).reshape(-1))
    scale = float(torch.linalg.vector_norm(op(x)) * torch.linalg.vector_norm(y))
    assert abs(complex(lhs - rhs)) <= rtol * scale, f"adjoint test failed: {complex(lhs)} != {complex(rhs)}"


def assert_gradcheck(
    fn: Callable[..., torch.Tensor],
    *inputs: torch.Tensor,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    fast_mode: bool = False,
) -> None:
    """torch.autograd.gradcheck of ``fn`` at float64/complex128 ``inputs`` (some with requires_grad).

    ``fast_mode`` checks random projections of the Jacobian instead of all of it (for bigger functions).
    """
    for t in inputs:
        assert t.dtype in (torch.float64, torch.complex128), f"gradcheck needs float64, got {t.dtype}"
    assert torch.autograd.gradcheck(fn, inputs, atol=atol, rtol=rtol, fast_mode=fast_mode)
