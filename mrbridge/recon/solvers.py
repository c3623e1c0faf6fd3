"""Conjugate gradient for Hermitian positive (semi-)definite systems, differentiable when unrolled."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re⟨a, b⟩ over all elements (a real scalar tensor)."""
    return torch.sum(a.conj() * b).real


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    iterations: int = 10,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """Solve ``normal(x) = rhs`` (e.g. (AᴴA + λI)x = Aᴴy) by conjugate gradients.

    Parameters
    ----------
    normal : the Hermitian positive-(semi)definite operator, x (…) → (…)
    rhs : Tensor  # (…) the right-hand side, e.g. Aᴴy
    x0 : Tensor | None  # (…) start (zeros when None)
    iterations : maximum number of iterations (every one is differentiable)
    tolerance : stop early once ‖r‖ ≤ tolerance·‖rhs‖ (0: always run ``iterations``)

    Returns
    -------
    Tensor  # (…) the solution estimate, same shape and dtype as ``rhs``
    """
    x = torch.zeros_like(rhs) if x0 is None else x0
    r = rhs - normal(x) if x0 is not None else rhs
    p = r
    rr = _dot(r, r)
    stop = tolerance**2 * _dot(rhs, rhs)
    for _ in range(iterations):
        if float(rr.detach()) <= float(stop.detach()):
            break
        q = normal(p)
        alpha = rr / _dot(p, q)
        x = x + alpha * p
        r = r - alpha * q
        rr_new = _dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x
