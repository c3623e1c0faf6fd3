"""A one-page PNG of a twin: every map (axes in mm) with its colourbar and unit, tissue histograms, and a summary.

3D twins show their middle slice. T2′ is shown as the rate R2′ = 1/T2′ (1/s), which is finite where T2′ = inf.
The summary lists shape, FOV, coils and, for calibrated twins, units, mask and cleaning counts from provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mrbridge.atomic import atomic_path
from mrbridge.recon.image_io import extent_mm
from mrbridge.twin.twin import Twin

#: (title, short name, unit, colour map) of each map panel
PANELS: tuple[tuple[str, str, str, str], ...] = (
    ("PD", "PD", "relative", "gray"),
    ("T1", "T1", "s", "viridis"),
    ("T2", "T2", "s", "viridis"),
    ("R2′ = 1/T2′", "R2′", "1/s", "magma"),
    ("B0", "B0", "Hz", "RdBu_r"),
    ("B1", "B1", "relative", "RdBu_r"),
    ("coil RSS", "|coils|", "relative", "gray"),
)


def _panels(twin: Twin) -> list[np.ndarray]:
    z = twin.shape[0] // 2

    def plane(t: Any) -> np.ndarray:
        return np.asarray(t.detach().cpu().numpy()[z], dtype=np.float64)

    with np.errstate(divide="ignore"):
        r2dash = 1.0 / plane(twin.t2dash)
    rss = np.sqrt((np.abs(twin.coil_sens.detach().cpu().numpy()[:, z]) ** 2).sum(0))
    return [plane(twin.pd), plane(twin.t1), plane(twin.t2), r2dash, plane(twin.b0), plane(twin.b1), rss]


def summary_lines(twin: Twin) -> list[str]:
    """The text summary: geometry, and units, mask and cleaning counts from the provenance."""
    nz, ny, nx = twin.shape
    fov = "×".join(f"{f * 1e3:g}" for f in twin.fov)
    lines = [f"{nx}×{ny}×{nz} voxels, FOV {fov} mm, {twin.coils} coil(s)"]
    prov = twin.provenance
    for name, info in (prov.get("inputs") or {}).items():
        if isinstance(info, dict):
            lines.append(f"{name}: {info.get('unit')} ({str(info.get('unit_how', '')).split(':')[0]}) "
                         f"from {Path(str(info.get('source'))).name}")
    if isinstance(prov.get("mask"), dict):
        lines.append(f"mask: {prov['mask'].get('voxels')} voxels, {prov['mask'].get('from')}")
    cleaning = prov.get("cleaning")
    if isinstance(cleaning, dict):
        counts = cleaning.get("counts") or {}
        lines.append(f"cleaning ({cleaning.get('mode')}): {cleaning.get('voxels_masked')} masked, "
                     f"{cleaning.get('voxels_clipped')} clipped" + (":" if counts else ", nothing to clean"))
        lines.extend(f"  {rule}: {n}" for rule, n in counts.items())
    for key in ("t2dash", "resampling", "coils"):
        info = prov.get(key)
        if isinstance(info, dict):
            text = info.get("from") or info.get("method")
            if key == "resampling" and "to_yx" in info:
                text = f"{info['from_yx']} → {info['to_yx']}, {info['method']}"
            lines.append(f"{key}: {text}")
    if "builtin" in prov:
        lines.append(f"builtin: {prov['builtin']} ({prov.get('source', '')})")
    return lines


def show_twin(twin: Twin, png_path: str | Path) -> None:
    """Write a PNG of ``twin``'s maps (colourbars, units), tissue histograms and a summary, atomically."""
    planes = _panels(twin)
    tissue = planes[0] > 0
    fig = plt.figure(figsize=(3.2 * len(PANELS), 10), layout="constrained")
    grid = fig.add_gridspec(3, len(PANELS), height_ratios=[3, 1.6, 2.2])
    for i, ((title, short, unit, cmap), values) in enumerate(zip(PANELS, planes, strict=True)):
        ax = fig.add_subplot(grid[0, i])
        shown = np.where(np.isfinite(values), values, np.nan)
        kwargs: dict[str, Any] = {}
        if cmap == "RdBu_r" and tissue.any():
            centre = 0.0 if short == "B0" else 1.0
            half = float(np.nanmax(np.abs(shown[tissue] - centre))) or 1.0
            kwargs = {"vmin": centre - half, "vmax": centre + half}
        image = ax.imshow(np.where(tissue | (short in ("PD", "|coils|")), shown, np.nan), cmap=cmap,
                          origin="lower", extent=extent_mm(twin.shape, twin.fov), **kwargs)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.set_ylabel("y (mm)", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8).set_label(unit)
        hist = fig.add_subplot(grid[1, i])
        inside = values[tissue & np.isfinite(values)] if tissue.any() else values[np.isfinite(values)]
        if inside.size:
            hist.hist(inside, bins=40, color="0.3")
        hist.set_xlabel(f"{short} [{unit}]", fontsize=8)
        hist.tick_params(labelsize=7)
        if i == 0:
            hist.set_ylabel("voxels in tissue", fontsize=8)
    text = fig.add_subplot(grid[2, :])
    text.axis("off")
    text.text(0.0, 1.0, "\n".join(summary_lines(twin)), va="top", ha="left", family="monospace", fontsize=9,
              transform=text.transAxes)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
