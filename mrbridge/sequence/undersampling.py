"""Which phase-encoding lines an accelerated Cartesian acquisition measures: a fully sampled centre (the ACS lines
that calibrate coil sensitivities) and, outside it, a uniform, variable-density random or Poisson-disc pattern.

``acceleration`` R sets the budget. ``uniform`` acquires every R-th line (the centre line among them) plus the ACS
lines, as scanners do (the net acceleration is then a little below R). The random patterns acquire exactly
round(N/R) lines, ACS included:

- ``variable_density``: lines drawn without replacement with probability ∝ (1 − u)², u = |line − N/2|/(N/2);
- ``poisson_disc``: lines kept in a seeded random order when at least d(u) = 1 + a·u lines away from every line
  kept so far (ACS included), ``a`` found by bisection so that the budget fills (variable-density Poisson-disc
  in one dimension: no clusters, no large gaps, the spacing growing towards the edge of k-space).

``explicit`` acquires the listed ``lines`` and the ACS lines (``acceleration`` unused): a learned mask
(:mod:`mrbridge.optimize.sampling`) as a protocol.

The ACS lines carry ISMRMRD's ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING flag (measured once, used for both).
Patterns are seeded: the same protocol always gives the same lines.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mrbridge.sequence.flag_labels import CALIBRATION_AND_IMAGING

#: the flag bits of a calibration line that is also an imaging line
ACS_FLAGS = CALIBRATION_AND_IMAGING


class Undersampling(BaseModel):
    """The ``undersampling`` key of a Cartesian protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    acceleration: int = Field(default=4, ge=1, le=16, description="R: about 1/R of the lines are acquired")
    acs_lines: int = Field(default=8, ge=0, description="fully sampled central lines (calibration); 0: none")
    pattern: Literal["uniform", "variable_density", "poisson_disc", "explicit"] = "variable_density"
    seed: int = Field(default=0, ge=0, description="random patterns: the same seed gives the same lines")
    lines: list[int] | None = Field(default=None, description="pattern explicit: the lines acquired (ACS added)")


def acs_range(n: int, acs: int) -> range:
    """The ``acs`` central lines of ``n`` (centred on line n/2)."""
    return range(n // 2 - acs // 2, n // 2 - acs // 2 + acs)


def budget(n: int, spec: Undersampling) -> int:
    """Lines the random patterns acquire, ACS included: round(n/R)."""
    return max(round(n / spec.acceleration), 1)


def lines_problem(n: int, spec: Undersampling) -> str | None:
    """Why ``spec.lines`` does not fit its pattern on an ``n``-line grid (the expectation), or None."""
    if spec.pattern != "explicit":
        return None if spec.lines is None else "must be left out unless pattern is 'explicit'"
    if not spec.lines or len(set(spec.lines)) != len(spec.lines) or not all(0 <= i < n for i in spec.lines):
        return f"must list distinct lines in [0, {n - 1}] (pattern 'explicit')"
    return None


def acs_problem(n: int, spec: Undersampling) -> str | None:
    """Why ``spec.acs_lines`` does not fit an ``n``-line grid (the expectation, for the protocol's error), or None."""
    if spec.acs_lines > n:
        return f"must be ≤ matrix = {n}"
    if spec.pattern not in ("uniform", "explicit") and spec.acs_lines > budget(n, spec):
        return (f"must be ≤ matrix/acceleration = {budget(n, spec)} (the lines a {spec.pattern} pattern acquires "
                f"at R = {spec.acceleration})")
    return None


def acquired_lines(n: int, spec: Undersampling | None) -> tuple[list[int], set[int]]:
    """(sorted acquired lines, the ACS lines among them) of an ``n``-line grid; all lines, no ACS for None.

    ``spec`` must pass :func:`acs_problem` (protocols check it when they are read).
    """
    if spec is None:
        return list(range(n)), set()
    acs = set(acs_range(n, spec.acs_lines))
    if spec.pattern == "explicit":
        return sorted(acs | set(spec.lines or ())), acs
    if spec.pattern == "uniform":
        return sorted(acs | set(range(n // 2 % spec.acceleration, n, spec.acceleration))), acs
    total = budget(n, spec)
    if total == len(acs):
        return sorted(acs), acs
    rng = np.random.default_rng(spec.seed)
    outer = np.array([i for i in range(n) if i not in acs])
    u = np.abs(outer - n // 2) / (n / 2)
    if spec.pattern == "variable_density":
        w = (1 - u) ** 2 + 1e-6
        pick = rng.choice(outer, size=total - len(acs), replace=False, p=w / w.sum())
    else:
        pick = _poisson_disc(outer, u, sorted(acs), total - len(acs), rng)
    return sorted(acs | {int(i) for i in pick}), acs


def _poisson_disc(candidates: np.ndarray, u: np.ndarray, fixed: list[int], count: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``count`` of ``candidates`` spaced at least 1 + a·u apart (and from ``fixed``), ``a`` by bisection."""
    order = rng.permutation(len(candidates))

    def throw(a: float) -> list[int]:
        kept = list(fixed)
        picked = []
        for j in order:
            line = int(candidates[j])
            if all(abs(line - k) >= 1 + a * u[j] for k in kept):
                kept.append(line)
                picked.append(line)
        return picked

    lo, hi = 0.0, float(len(candidates) + len(fixed))
    for _ in range(40):  # largest a that still fills the budget
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if len(throw(mid)) >= count else (lo, mid)
    picked = throw(lo)
    return rng.choice(np.array(picked), size=count, replace=False) if len(picked) > count else np.array(picked)
