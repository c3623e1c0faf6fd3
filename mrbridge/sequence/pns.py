"""The IEC 60601-2-33 dB/dt estimate of peripheral nerve stimulation, in one place.

A gradient ramp that changes the amplitude by ΔG (T/m) in τ (s) has slew S = ΔG/τ and, on the compliance
cylinder of radius r, dB/dt = S·r. Normal mode allows dB/dt ≤ f·b·(1 + c/τ) (f the normal-mode fraction,
b the rheobase, c the chronaxie; 0.8, 20 T/s, 0.36 ms, r = 0.2 m by default, ``System.iec``). Written with
ΔG instead of S, the ramp passes when ΔG·r ≤ f·b·(τ + c): the ratio below is linear in ΔG and needs no
division by τ, so it stays finite (and differentiable) for any τ ≥ 0.

The fastest a ramp of ΔG may be: S·r ≤ f·b·(1 + c·S/ΔG) gives S·(r − f·b·c/ΔG) ≤ f·b, i.e. any slew when
ΔG ≤ f·b·c/r (28.8 mT/m by default), else S_max(ΔG) = f·b / (r − f·b·c/ΔG) (e.g. 200 T/m/s up to 48 mT/m,
125 T/m/s at 80 mT/m).
"""

from __future__ import annotations

import math
from typing import Any

from mrbridge.system import IecLimits


def pns_ratio(delta_g: Any, tau: Any, iec: IecLimits) -> Any:
    """dB/dt over its limit (1 = at the limit) of a ramp by ``|delta_g|`` (T/m) in ``tau`` (s).

    S·r / (f·b·(1 + c/τ)) with S = |ΔG|/τ, written as |ΔG|·r / (f·b·(τ + c)); floats, numpy arrays or
    torch tensors (differentiable where ΔG ≠ 0).
    """
    fb = iec.dbdt_normal_mode_fraction * iec.dbdt_rheobase_t_per_s
    return abs(delta_g) * iec.dbdt_radius_m / (fb * (tau + iec.dbdt_chronaxie_ms * 1e-3))


def max_pns_slew(delta_g: float, iec: IecLimits) -> float:
    """Highest slew (T/m/s) a ramp by ``|delta_g|`` (T/m) may use and pass; ``inf`` when any slew passes."""
    fb = iec.dbdt_normal_mode_fraction * iec.dbdt_rheobase_t_per_s
    delta_g = abs(delta_g)
    denominator = iec.dbdt_radius_m - fb * iec.dbdt_chronaxie_ms * 1e-3 / delta_g if delta_g > 0 else -1.0
    return fb / denominator if denominator > 0 else math.inf
