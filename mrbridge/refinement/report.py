"""The refinement's report: maps before and after, the residual of each scan over the iterations, and measured
against simulated images and k-space of every scan, on the twin's grid (mm axes, colorbars). Static HTML + PNGs.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import numpy as np
import torch
from matplotlib.figure import Figure

from mrbridge.atomic import atomic_write_text
from mrbridge.recon.image_io import extent_mm
from mrbridge.refinement.fit import RefineResult
from mrbridge.refinement.scans import Grid, Scan
from mrbridge.refinement.start import adjoint_image
from mrbridge.report.figures import save_figure
from mrbridge.report.html import versions
from mrbridge.twin.twin import Twin

_TEMPLATES = Path(__file__).resolve().parent.parent / "report" / "templates"


def shown_maps(twin: Twin) -> dict[str, np.ndarray]:
    """The maps a report shows, (y, x) of the first slice: PD (relative to its median in the object: a refined PD
    carries the receiver's scale, the start's does not), B0 (Hz), B1+, T2′ (ms), T1 (ms), T2 (ms)."""
    inside = twin.pd[twin.pd > 0]
    maps = {"PD / median": twin.pd / (inside.median() if inside.numel() else 1.0), "B0 (Hz)": twin.b0,
            "B1+": twin.b1, "T2' (ms)": 1e3 * twin.t2dash, "T1 (ms)": 1e3 * twin.t1, "T2 (ms)": 1e3 * twin.t2}
    return {k: v[0].detach().to(torch.float64).clamp(max=1e5).numpy() for k, v in maps.items()}


def map_figure(start: Twin, refined: Twin, mask: np.ndarray, fitted: list[str], grid: Grid, path: Path) -> str:
    """Rows: the fitted maps (and PD); columns: start, refined, refined − start."""
    names = {"pd": "PD / median", "b0": "B0 (Hz)", "b1": "B1+", "t2dash": "T2' (ms)", "t1": "T1 (ms)", "t2": "T2 (ms)"}
    rows = [names[n] for n in names if n in fitted or n == "pd"]
    before, after = shown_maps(start), shown_maps(refined)
    extent = extent_mm((grid.matrix, grid.matrix), grid.fov)
    fig = Figure(figsize=(12, 3.4 * len(rows)))
    for r, name in enumerate(rows):
        a, b = np.where(mask, before[name], np.nan), np.where(mask, after[name], np.nan)
        lo, hi = np.nanpercentile(np.concatenate([a[mask], b[mask]]), [1, 99]) if mask.any() else (0, 1)
        for c, (data, title, cmap) in enumerate(((a, "start", "viridis"), (b, "refined", "viridis"),
                                                 (b - a, "refined − start", "coolwarm"))):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            if c == 2:
                span = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
                im = ax.imshow(data, origin="lower", cmap=cmap, vmin=-span, vmax=span, extent=extent)
            else:
                im = ax.imshow(data, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=extent)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("x (mm)", fontsize=8)
            ax.set_ylabel("y (mm)", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path).name


def residual_figure(history: list[dict[str, float]], scans: list[Scan], path: Path) -> str:
    """‖c·A(θ) − y‖/‖y‖ of each scan over the iterations (log scale)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    steps = [row["step"] for row in history]
    for i, scan in enumerate(scans):
        ax.semilogy(steps, [row[f"res_{i}"] for row in history], label=scan.name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual ‖A(θ) − y‖ / ‖y‖")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path).name


def scan_figure(scan: Scan, simulated: torch.Tensor, grid: Grid, path: Path) -> str:
    """Per contrast: |measured|, |simulated|, |difference| images (same scale) and log|k| of both."""
    contrasts = sorted(set(scan.contrast.tolist()))
    extent = extent_mm((grid.matrix, grid.matrix), grid.fov)
    fig = Figure(figsize=(17, 3.3 * len(contrasts)))
    for row, c in enumerate(contrasts):
        pick = scan.contrast == c
        meas = adjoint_image(scan.kdata[:, pick], scan.traj[pick], grid).abs().square().sum(0).sqrt().numpy()
        sim = adjoint_image(simulated[:, pick].to(torch.complex64), scan.traj[pick], grid)
        sim_mag = sim.abs().square().sum(0).sqrt().numpy()
        diff = (adjoint_image(simulated[:, pick].to(torch.complex64) - scan.kdata[:, pick], scan.traj[pick], grid)
                .abs().square().sum(0).sqrt().numpy())
        top = float(np.percentile(meas, 99.5)) or 1.0
        te = scan.echo_times[c] if c < len(scan.echo_times) else math.nan
        panels = ((meas, "measured", top), (sim_mag, "simulated", top), (diff, "|difference|", top / 5))
        for col, (data, title, vmax) in enumerate(panels):
            ax = fig.add_subplot(len(contrasts), 5, 5 * row + col + 1)
            im = ax.imshow(data, origin="lower", cmap="gray", vmin=0, vmax=vmax, extent=extent)
            ax.set_title(f"{title}, TE {1e3 * te:.3g} ms", fontsize=9)
            ax.set_xlabel("x (mm)", fontsize=8)
            ax.set_ylabel("y (mm)", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
        for col, (image, title) in enumerate(((meas, "measured"), (sim_mag, "simulated"))):
            spectrum = np.log10(np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image)))) + 1e-12)
            ax = fig.add_subplot(len(contrasts), 5, 5 * row + col + 4)
            im = ax.imshow(spectrum, origin="lower", cmap="magma", vmin=spectrum.max() - 4, vmax=spectrum.max())
            ax.set_title(f"log10 |k| of |image|, {title}", fontsize=9)
            ax.set_xlabel("k_x (steps)", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(scan.name)
    fig.tight_layout()
    return save_figure(fig, path).name


def write_report(folder: Path, scans: list[Scan], result: RefineResult, grid: Grid) -> Path:
    """Figures and ``index.html`` into ``folder``; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    mask = (result.start.pd[0] > 0).numpy()
    fitted = result.twin.provenance.get("refined_fit", "").split(",")
    figures = [
        (map_figure(result.start, result.twin, mask, fitted, grid, folder / "maps.png"),
         "Maps inside the object: start, refined, and their difference (colorbars in the map's unit)."),
        (residual_figure(result.history, scans, folder / "residual.png"),
         "Data-consistency residual of each scan over the iterations."),
    ]
    for i, (scan, sim) in enumerate(zip(scans, result.simulated, strict=True)):
        figures.append((scan_figure(scan, sim.detach(), grid, folder / f"scan{i}.png"),
                        f"{scan.name}: measured against simulated on the refined twin (the k-space window the "
                        f"twin holds, {grid.matrix}² over {1e3 * grid.fov[0]:.4g} mm), and their k-space."))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    page = env.get_template("refine.html.j2").render(
        scans=[{"name": s.name, "meas": str(s.meas_path), "seq": str(s.seq_path),
                "residual": f"{result.residuals[s.name]:.4f}", "samples": int(s.kdata.shape[-1]),
                "coils": int(s.kdata.shape[0])} for s in scans],
        provenance=result.twin.provenance, figures=[{"file": f, "caption": c} for f, c in figures],
        grid=f"{grid.matrix}² over {1e3 * grid.fov[0]:.4g} × {1e3 * grid.fov[1]:.4g} mm, "
             f"slice {1e3 * grid.fov[2]:.3g} mm",
        versions=versions(),
    )
    index = folder / "index.html"
    atomic_write_text(index, page)
    return index
