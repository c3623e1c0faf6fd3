"""Clean measured maps inside the tissue mask, never silently: every fixed voxel is counted per rule and map.

Rules, applied in this order to voxels still in the mask (maps in SI, (z, y, x)):

- ``nonfinite``: NaN or ±inf (T2′ = +inf is allowed: no reversible dephasing) — always masked (there is no
  value to clip to);
- ``negative``: PD < 0;
- ``nonpositive``: T1, T2, T2*, T2′ ≤ 0;
- ``outlier``: outside the twin's plausible range (:data:`mrbridge.twin.twin.MAP_UNITS`);
- ``t2>t1``: T2 > T1;
- ``t2*>t2``: T2* > T2 (negative R2′).

``mode="mask"`` removes such voxels from the mask; ``"clip"`` moves the value to the nearest valid one (PD to
0, a range bound, T2 to T1, T2* to T2); ``"error"`` raises an InputError naming the map, file and count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mrbridge.errors import InputError
from mrbridge.twin.twin import MAP_UNITS

CleanMode = Literal["mask", "clip", "error"]
#: plausible range of each map in SI (T2* as T2)
RANGES: dict[str, tuple[float, float]] = {**{k: r for k, (_, r) in MAP_UNITS.items()}, "t2star": MAP_UNITS["t2"][1]}
RELAXATION = ("t1", "t2", "t2star", "t2dash")
#: clipped values stay this far (relative) inside a range, so they survive the cast to float32
CLIP_MARGIN = 1e-6


@dataclass
class CleanReport:
    """What cleaning did: voxels per 'rule:map', and the totals masked and clipped."""

    mode: str
    voxels_in: int
    counts: dict[str, int] = field(default_factory=dict)
    masked: int = 0
    clipped: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "voxels_in_mask": self.voxels_in, "counts": dict(self.counts),
                "voxels_masked": self.masked, "voxels_clipped": self.clipped,
                "voxels_kept": self.voxels_in - self.masked}


def clean_maps(
    maps: dict[str, np.ndarray], mask: np.ndarray, *, mode: CleanMode = "mask", sources: dict[str, str] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, CleanReport]:
    """Apply the rules to ``maps`` inside ``mask`` (bool, (z, y, x)); inputs are not modified.

    Returns (cleaned maps, cleaned mask, report).
    """
    if mode not in ("mask", "clip", "error"):
        raise InputError(f"clean mode '{mode}' is unknown; expected mask, clip or error")
    maps = {k: v.copy() for k, v in maps.items()}
    mask = mask.copy()
    report = CleanReport(mode, int(mask.sum()))
    sources = sources or {}

    def apply(rule: str, name: str, bad: np.ndarray, fix: np.ndarray | None) -> None:
        bad = bad & mask
        n = int(bad.sum())
        if n == 0:
            return
        report.counts[f"{rule}:{name}"] = n
        if mode == "error":
            raise InputError(
                f"{sources.get(name, 'maps')}: map '{name}' has {n} voxel(s) in the mask failing '{rule}'; "
                "choose how to clean them (--clean mask or --clean clip)"
            )
        if mode == "mask" or fix is None:
            mask[bad] = False
            report.masked += n
        else:
            maps[name][bad] = fix[bad]
            report.clipped += n

    for name, m in maps.items():
        bad = ~np.isfinite(m) if name != "t2dash" else np.isnan(m) | np.isneginf(m)
        apply("nonfinite", name, bad, None)
    if "pd" in maps:
        apply("negative", "pd", maps["pd"] < 0, np.zeros_like(maps["pd"]))
    for name in RELAXATION:
        if name in maps:
            m = maps[name]
            apply("nonpositive", name, m <= 0, np.full_like(m, RANGES[name][0] * (1 + CLIP_MARGIN)))
    for name, m in maps.items():
        if name in RANGES and name != "pd":
            lo, hi = RANGES[name]
            fix = np.clip(m, lo * (1 + CLIP_MARGIN) if lo > 0 else lo, hi * (1 - CLIP_MARGIN))
            apply("outlier", name, (m < lo) | (m > hi), fix)
    apply("t2>t1", "t2", maps["t2"] > maps["t1"], maps["t1"])
    if "t2star" in maps:
        apply("t2*>t2", "t2star", maps["t2star"] > maps["t2"], maps["t2"])
    return maps, mask, report
