"""Which twin maps a set of scans can determine, checked before any fitting starts.

A single-echo scan fixes PD (with the receive phase); B0 and T2′ need two or more echo times; B1+ and T1 need
two or more flip angles or repetition times (or an inversion); T2 needs spin echoes at two or more echo times;
coil sensitivities need the scan's coils (one coil: its phase only, its magnitude goes into PD).
"""

from __future__ import annotations

from mrbridge.errors import InputError
from mrbridge.refinement.scans import Scan
from mrbridge.sequence.model import PulseUsage

#: the maps ``--fit`` may name
FITTABLE = ("pd", "b0", "t2dash", "b1", "t1", "t2", "coils")


def parse_fit(text: str) -> list[str]:
    """'pd,b0,…' → the names, each in :data:`FITTABLE` (InputError otherwise)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FITTABLE]
    if unknown or not names:
        raise InputError(f"--fit {text!r}: expected a comma-separated list of {', '.join(FITTABLE)}")
    return list(dict.fromkeys(names))


def check_identifiable(fit: list[str], scans: list[Scan]) -> list[str]:
    """Refuse (InputError, one line) a map the scans cannot determine; returns notes on what is folded away."""
    echo_times = {round(1e3 * te, 2) for s in scans for te in s.echo_times}
    conditions = {(flip, round(1e3 * tr, 2)) for s in scans for flip in s.flip_angles_deg() for tr in s.encoding.tr}
    inversion = any(s.has(PulseUsage.INVERSION) for s in scans)
    spin_echo = any(s.has(PulseUsage.REFOCUSING) for s in scans)
    names = ", ".join(s.name for s in scans)
    te_text = ", ".join(f"{te:g}" for te in sorted(echo_times)) or "none"
    needs = {
        "b0": (len(echo_times) >= 2, f"B0 needs two or more echo times, the scans ({names}) have TE {te_text} ms "
                                     "(add a multi-echo scan)"),
        "t2dash": (len(echo_times) >= 2, f"T2' needs two or more echo times, the scans ({names}) have TE "
                                         f"{te_text} ms (add a multi-echo scan)"),
        "b1": (len(conditions) >= 2 or inversion,
               f"B1 needs two or more flip angles or TRs, the scans ({names}) play {_conditions(conditions)} "
               "(add a scan at another flip angle)"),
        "t1": (len(conditions) >= 2 or inversion,
               f"T1 needs two or more flip angles or TRs (or an inversion), the scans ({names}) play "
               f"{_conditions(conditions)}"),
        "t2": (spin_echo and len(echo_times) >= 2,
               f"T2 needs spin echoes at two or more echo times; the scans ({names}) have "
               f"{'spin echoes' if spin_echo else 'no refocusing pulse'} at TE {te_text} ms"),
    }
    for name in fit:
        ok, why = needs.get(name, (True, ""))
        if not ok:
            raise InputError(f"--fit {name}: {why}")
    notes = []
    if "coils" in fit and all(s.kdata.shape[0] == 1 for s in scans):
        notes.append("one receive coil: its phase is fitted, its magnitude cannot be told from PD and goes into PD")
    return notes


def _conditions(conditions: set[tuple[float, float]]) -> str:
    return ", ".join(f"{flip:g}° at TR {tr:g} ms" for flip, tr in sorted(conditions)) or "no excitation"
