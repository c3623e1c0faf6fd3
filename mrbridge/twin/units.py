"""Units of measured maps: decide each map's unit (stated, from metadata, or from its values), then convert to SI.

A unit is taken, in order, from the user (``--t1-unit ms``), from the file (``MapData.meta``: a unit field, a
``[unit]`` or ``_unit`` suffix in the variable name or description), or inferred from the median of the
values in tissue. Every choice is checked against plausible tissue values, so a T1 map in ms declared as
seconds is an error, not a simulation; where the values fit more than one unit, the error says how to state it.

Plausible medians in tissue (SI): T1 0.05–6 s; T2, T2* 2 ms–3 s; T2′ 2 ms–100 s; B1 0.2–3 (relative);
B0: 99th percentile of |B0| up to 2 kHz. B0 with no stated unit is taken as Hz (the twin's unit) when its
values fit Hz; rad/s cannot be told from Hz by value, so such maps must say so (metadata or ``--b0-unit``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from mrbridge.errors import InputError

#: gyromagnetic ratio of ¹H / 2π (Hz/T), CODATA 2018
GAMMA_BAR_HZ_PER_T = 42.577478518e6

#: map kind -> units it may come in (first: SI)
UNITS: dict[str, tuple[str, ...]] = {
    "pd": ("relative",),
    "t1": ("s", "ms"),
    "t2": ("s", "ms"),
    "t2star": ("s", "ms"),
    "t2dash": ("s", "ms"),
    "b0": ("Hz", "rad/s", "ppm"),
    "b1": ("relative", "percent", "deg"),
}

#: plausible median of tissue values in SI, per kind (b0: 99th percentile of |B0|, Hz)
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "t1": (0.05, 6.0),
    "t2": (0.002, 3.0),
    "t2star": (0.002, 3.0),
    "t2dash": (0.002, 100.0),
    "b0": (0.0, 2000.0),
    "b1": (0.2, 3.0),
}

#: median measured flip angle (deg) that may be a B1 map when the nominal angle is unknown
DEG_WITHOUT_NOMINAL = (10.0, 540.0)
#: up to this 99th percentile of |B0|, the map may be in ppm as well as Hz (10 ppm = 1.3 kHz at 3 T, beyond
#: any in-vivo field map; 10 Hz is a very well shimmed phantom)
B0_PPM_OR_HZ = 10.0

_ALIASES = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "ms": "ms", "msec": "ms", "msecs": "ms", "millisecond": "ms", "milliseconds": "ms",
    "hz": "Hz", "hertz": "Hz",
    "rad/s": "rad/s", "rad/sec": "rad/s", "rads": "rad/s", "rad_s": "rad/s", "radians/s": "rad/s",
    "ppm": "ppm",
    "relative": "relative", "ratio": "relative", "rel": "relative", "fraction": "relative",
    "%": "percent", "percent": "percent", "pct": "percent", "pc": "percent",
    "deg": "deg", "degree": "deg", "degrees": "deg", "°": "deg",
}


@dataclass(frozen=True)
class UnitChoice:
    """The unit of one map and how it was decided ('stated', 'metadata: …', 'inferred: …', 'assumed: …')."""

    unit: str
    how: str


def parse_unit(text: str) -> str | None:
    """Canonical unit of a unit string ('msec' → 'ms', '%' → 'percent'), or None if unknown."""
    return _ALIASES.get(text.strip().lower().replace(" ", ""))


def flag(kind: str) -> str:
    """The CLI option that states a map's unit."""
    return f"--{kind}-unit"


def unit_from_meta(kind: str, meta: dict[str, str]) -> tuple[str, str] | None:
    """(unit, where) stated by a file's metadata, if any unit that fits ``kind`` is found there."""
    candidates = []
    if "unit" in meta:
        candidates.append((meta["unit"], "unit field"))
    for field in ("name", "description"):
        text = meta.get(field, "")
        for token in re.findall(r"\[([^\]]+)\]|\(([^)]+)\)|[_\s]([A-Za-z%/]+)$", text):
            candidates.extend((t, f"{field} '{text}'") for t in token if t)
    for text, where in candidates:
        unit = parse_unit(text)
        if unit in UNITS[kind]:
            return unit, where
    return None


def decide_unit(kind: str, values: np.ndarray, meta: dict[str, str], *, stated: str | None = None,
                nominal_flip_deg: float | None = None, source: str = "map") -> UnitChoice:
    """The unit of a map of ``kind`` whose tissue values are ``values`` (finite, 1-D).

    Raises InputError when a stated or recorded unit makes the values implausible, or when the values fit
    several units and nothing states which.
    """
    if kind == "pd":
        return UnitChoice("relative", "PD is relative")
    label = f"{source}: map '{kind}'"
    if stated is not None:
        unit = parse_unit(stated)
        if unit not in UNITS[kind]:
            raise InputError(f"{label}: unit '{stated}' is unknown; expected one of {', '.join(UNITS[kind])}")
        _check(kind, values, unit, nominal_flip_deg, label, f"the stated unit '{unit}'")
        return UnitChoice(unit, "stated")
    recorded = unit_from_meta(kind, meta)
    if recorded is not None:
        unit, where = recorded
        _check(kind, values, unit, nominal_flip_deg, label, f"the unit '{unit}' in the file's {where}")
        return UnitChoice(unit, f"metadata: {where}")
    return _infer(kind, values, nominal_flip_deg, label)


def to_si(kind: str, values: np.ndarray, unit: str, *, field_strength_t: float | None = None,
          nominal_flip_deg: float | None = None, source: str = "map") -> np.ndarray:
    """``values`` (any shape) in ``unit`` → the twin's SI unit (s, Hz, relative)."""
    if unit in ("s", "Hz", "relative"):
        return values
    if unit == "ms":
        return values * 1e-3
    if unit == "rad/s":
        return values / (2 * math.pi)
    if unit == "percent":
        return values / 100.0
    if unit == "ppm":
        if not field_strength_t:
            raise InputError(f"{source}: map 'b0' in ppm needs the field strength; state it (--field-strength 3)")
        return values * 1e-6 * GAMMA_BAR_HZ_PER_T * field_strength_t
    if unit == "deg":
        if not nominal_flip_deg:
            raise InputError(
                f"{source}: map 'b1' as a flip angle in degrees needs the nominal angle; state it (--b1-nominal-deg 60)"
            )
        return values / nominal_flip_deg
    raise InputError(f"{source}: map '{kind}' has unit '{unit}', expected one of {', '.join(UNITS[kind])}")


# ---- plausibility -------------------------------------------------------------------------------------
def _statistic(kind: str, values: np.ndarray) -> float:
    if kind == "b0":
        return float(np.percentile(np.abs(values), 99)) if values.size else 0.0
    positive = values[values > 0] if kind != "b1" else values
    return float(np.median(positive)) if positive.size else float("nan")


def _describe(kind: str, stat: float, unit: str) -> str:
    what = "99th percentile of |B0|" if kind == "b0" else f"median {kind.upper()}"
    return f"{what} in tissue is {stat:.4g}" + (f" {unit}" if unit else "")


def _fits(kind: str, stat: float, unit: str, nominal_flip_deg: float | None) -> bool:
    if not math.isfinite(stat):
        return False
    if unit == "ppm":
        return stat <= B0_PPM_OR_HZ
    if unit == "deg" and not nominal_flip_deg:
        return DEG_WITHOUT_NOMINAL[0] <= stat <= DEG_WITHOUT_NOMINAL[1]
    si = float(to_si(kind, np.asarray(stat), unit, nominal_flip_deg=nominal_flip_deg))
    lo, hi = PLAUSIBLE[kind]
    return lo <= si <= hi


def _check(kind: str, values: np.ndarray, unit: str, nominal_flip_deg: float | None, label: str, said: str) -> None:
    stat = _statistic(kind, values)
    if _fits(kind, stat, unit, nominal_flip_deg):
        return
    lo, hi = PLAUSIBLE[kind]
    better = [u for u in UNITS[kind] if u != unit and _fits(kind, stat, u, nominal_flip_deg)]
    hint = f"; the values look like {better[0]}: state {flag(kind)} {better[0]}" if better else ""
    si_unit = UNITS[kind][0]
    raise InputError(
        f"{label}: with {said} the {_describe(kind, stat, unit)}, implausible "
        f"(expected {lo:g}–{hi:g} {si_unit} in SI){hint}"
    )


def _infer(kind: str, values: np.ndarray, nominal_flip_deg: float | None, label: str) -> UnitChoice:
    stat = _statistic(kind, values)
    if kind == "b0":
        if stat == 0.0:
            return UnitChoice("Hz", "inferred: B0 is zero in tissue")
        if stat <= B0_PPM_OR_HZ:
            raise InputError(
                f"{label}: the {_describe(kind, stat, '')}; that fits both Hz and ppm: state {flag(kind)} Hz "
                f"or {flag(kind)} ppm (with --field-strength)"
            )
        if _fits(kind, stat, "Hz", None):
            return UnitChoice("Hz", f"assumed: no unit stated and the {_describe(kind, stat, 'Hz')}, plausible in Hz; "
                                    f"state {flag(kind)} rad/s if it is not Hz")
        raise InputError(
            f"{label}: the {_describe(kind, stat, '')}, implausible in Hz (expected ≤ {PLAUSIBLE['b0'][1]:g}); "
            f"state the unit ({flag(kind)} rad/s)"
        )
    fits = [u for u in UNITS[kind] if _fits(kind, stat, u, nominal_flip_deg)]
    if len(fits) == 1:
        return UnitChoice(fits[0], f"inferred: the {_describe(kind, stat, '')}, plausible only in {fits[0]}")
    if not fits:
        lo, hi = PLAUSIBLE[kind]
        raise InputError(
            f"{label}: the {_describe(kind, stat, '')}, implausible in every unit ({', '.join(UNITS[kind])}; "
            f"expected {lo:g}–{hi:g} {UNITS[kind][0]} in SI); check the map or state its unit ({flag(kind)})"
        )
    options = " or ".join(f"{flag(kind)} {u}" for u in fits)
    extra = " (with --b1-nominal-deg)" if "deg" in fits else ""
    raise InputError(f"{label}: the {_describe(kind, stat, '')}, which fits {', '.join(fits)}: state {options}{extra}")
