"""Figures of a comparison report, drawn with matplotlib's Agg canvas (no pyplot state) and written as PNG.

Every function takes plain tensors, writes one PNG atomically and returns its path. Images are shown with
+y up (``origin="lower"``), as :func:`mrbridge.recon.image_io.write_png` does.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrbridge.atomic import atomic_write_bytes
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.image_io import extent_mm
from mrbridge.report.kspace import KspacePlane, log_magnitude
from mrbridge.report.waveforms import SeqWaveforms
from mrbridge.sequence.model import Sequence

#: gaps drawn in a sequence diagram are at most this long, or twice the repetition's readout (s)
_MAX_GAP_S = 2e-3
#: Hz/m per mT/m (¹H)
_HZ_PER_MT = 42.577478e6 * 1e-3


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically; returns the path."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def central_slice(data: torch.Tensor) -> np.ndarray:
    """(…, z, y, x) → (y, x) float: the central z slice of the first leading frame, as magnitude."""
    vol = data.detach().abs().cpu().reshape(-1, *data.shape[-3:])[0]
    return vol[vol.shape[0] // 2].to(torch.float64).numpy()


def ratio_map(sim_scaled: np.ndarray, meas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """meas / (s·sim) inside ``mask``, NaN elsewhere (y, x)."""
    out = np.full(meas.shape, np.nan)
    ok = mask & (sim_scaled != 0)
    out[ok] = meas[ok] / sim_scaled[ok]
    return out


def image_panels(sim_scaled: np.ndarray, meas: np.ndarray, mask: np.ndarray, path: str | Path, *,
                 fov_xy: tuple[float, float]) -> Path:
    """Simulated (scaled) | measured | difference (meas − s·sim) | ratio (meas / s·sim) of one (y, x) slice, on
    axes in mm from the image centre (``fov_xy``: the image's (x, y) extent in m), each with its colorbar. The
    ratio is drawn inside ``mask`` where the scaled simulation exceeds 10 % of its maximum."""
    fig = Figure(figsize=(16, 4.6), layout="constrained")
    axes = fig.subplots(1, 4)
    vmax = float(max(sim_scaled.max(), meas.max())) or 1.0
    diff = meas - sim_scaled
    dlim = float(np.abs(diff).max()) or 1.0
    ratio = ratio_map(sim_scaled, meas, mask & (sim_scaled > 0.1 * float(sim_scaled.max())))  # no ÷ ≈ 0
    finite = ratio[np.isfinite(ratio)]
    spread = float(np.percentile(np.abs(finite - 1), 98)) if finite.size else 0.1
    spread = max(spread, 0.05)
    panels = (
        ("simulated × scale", sim_scaled, "gray", 0.0, vmax, "magnitude (a.u.)"),
        ("measured", meas, "gray", 0.0, vmax, "magnitude (a.u.)"),
        ("difference (meas − s·sim)", diff, "RdBu_r", -dlim, dlim, "difference (a.u.)"),
        ("ratio (meas / s·sim)", ratio, "coolwarm", 1 - spread, 1 + spread, "ratio"),
    )
    extent = extent_mm(meas.shape, fov_xy)
    for i, (ax, (title, data, cmap, lo, hi, unit)) in enumerate(zip(axes, panels, strict=True)):
        shown = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest", extent=extent)
        ax.set_title(title)
        ax.set_xlabel("x, read (mm)")
        if i == 0:
            ax.set_ylabel("y, phase (mm)")
        fig.colorbar(shown, ax=ax, shrink=0.8).set_label(unit)
    return save_figure(fig, path)


def line_profiles(sim_scaled: np.ndarray, meas: np.ndarray, path: str | Path, *,
                  fov_xy: tuple[float, float]) -> Path:
    """Profiles through the central row (along x) and the central column (along y) of one (y, x) slice, over mm
    from the image centre."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    ny, nx = meas.shape
    x_mm = (np.arange(nx) - nx // 2) * fov_xy[0] * 1e3 / nx
    y_mm = (np.arange(ny) - ny // 2) * fov_xy[1] * 1e3 / ny
    for ax, (title, pos, a, b, label) in zip(
        axes,
        (
            ("central row (along x)", x_mm, sim_scaled[ny // 2], meas[ny // 2], "x, read (mm)"),
            ("central column (along y)", y_mm, sim_scaled[:, nx // 2], meas[:, nx // 2], "y, phase (mm)"),
        ),
        strict=True,
    ):
        ax.plot(pos, a, label="simulated × scale")
        ax.plot(pos, b, label="measured", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel(label)
        ax.set_ylabel("magnitude (a.u.)")
        ax.legend()
    return save_figure(fig, path)


def kspace_panels(sim: KspacePlane, meas: KspacePlane, scale: float, path: str | Path, *,
                  decades: float = 5.0) -> Path:
    """log10 |k| of scale × simulated and of measured (one colour scale, ``decades`` below the larger peak) and
    their difference log10 |meas| − log10 |s·sim| (decades; only when both lie on one grid)."""
    sim_log = log_magnitude(scale * sim.magnitude)
    meas_log = log_magnitude(meas.magnitude)
    top = float(np.nanmax([np.nanmax(sim_log) if np.isfinite(sim_log).any() else -np.inf,
                           np.nanmax(meas_log) if np.isfinite(meas_log).any() else -np.inf]))
    top = top if np.isfinite(top) else 0.0
    same_grid = sim.magnitude.shape == meas.magnitude.shape and sim.gridded == meas.gridded
    fig = Figure(figsize=(16 if same_grid else 11, 4.8), layout="constrained")
    axes = fig.subplots(1, 3 if same_grid else 2)
    for ax, title, plane, data in ((axes[0], "simulated × scale", sim, sim_log), (axes[1], "measured", meas, meas_log)):
        _kspace_axes(ax, plane)
        shown = ax.imshow(data, cmap="inferno", vmin=top - decades, vmax=top, **_kspace_image(plane))
        ax.set_title(f"log10 |k|, {title}")
        fig.colorbar(shown, ax=ax, shrink=0.8).set_label("log10 |k| (a.u.)")
    if same_grid:
        diff = meas_log - sim_log
        finite = diff[np.isfinite(diff)]
        lim = max(float(np.percentile(np.abs(finite), 99)), 0.1) if finite.size else 1.0
        _kspace_axes(axes[2], meas)
        shown = axes[2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, **_kspace_image(meas))
        axes[2].set_title("log10 |meas| − log10 |s·sim|")
        fig.colorbar(shown, ax=axes[2], shrink=0.8).set_label("decades")
    else:
        fig.suptitle("the two k-spaces lie on different grids: no difference drawn")
    return save_figure(fig, path)


def _kspace_image(plane: KspacePlane) -> dict[str, object]:
    rows, cols = plane.magnitude.shape
    if plane.gridded:
        extent = (-(cols // 2) - 0.5, cols - cols // 2 - 0.5, -(rows // 2) - 0.5, rows - rows // 2 - 0.5)
        return {"origin": "lower", "interpolation": "nearest", "extent": extent, "aspect": "equal"}
    return {"origin": "lower", "interpolation": "nearest", "aspect": "auto"}


def _kspace_axes(ax: Axes, plane: KspacePlane) -> None:
    ax.set_facecolor("0.85")  # not sampled: grey
    if plane.gridded:
        ax.set_xlabel("kx (cycles / FOV)")
        ax.set_ylabel("ky (cycles / FOV)")
    else:
        ax.set_xlabel("sample")
        ax.set_ylabel("readout (acquisition order)")


def kspace_centre(raw: RawData) -> tuple[np.ndarray, np.ndarray]:
    """Per-readout signal at the k-space-centre sample: (times s or readout index, RSS magnitude), (readouts,)."""
    centre = min(max(raw.center_sample, 0), raw.samples - 1)
    signal = raw.kdata[:, :, centre].detach().abs().square().sum(0).sqrt().cpu().to(torch.float64).numpy()
    if raw.sample_time is not None:
        times = raw.sample_time[:, centre].detach().cpu().to(torch.float64).numpy()
    else:
        times = np.arange(raw.readouts, dtype=np.float64)
    return times, signal


def signal_curves(sim: RawData, meas: RawData, scale: float, path: str | Path) -> Path:
    """The k-space-centre sample of every readout over time, measured and scale × simulated."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.subplots()
    timed = sim.sample_time is not None and meas.sample_time is not None
    for raw, label, factor, style in ((sim, "simulated × scale", scale, "-"), (meas, "measured", 1.0, "--")):
        t, s = kspace_centre(raw)
        ax.plot(t if timed else np.arange(len(s)), factor * s, style, marker=".", markersize=3, label=label)
    ax.set_xlabel("time (s)" if timed else "readout")
    ax.set_ylabel("|k-space centre| (RSS over coils)")
    ax.set_title("per-readout k-space-centre signal")
    ax.legend()
    return save_figure(fig, path)


def trajectory(traj: torch.Tensor, path: str | Path, *, max_readouts: int = 512) -> Path:
    """kx–ky of every sample (1/m), each readout a line; traj (readouts, samples, 3) or (samples, 3)."""
    k = traj.detach().cpu().to(torch.float64)
    if k.dim() == 2:
        k = k[None]
    step = max(1, k.shape[0] // max_readouts)
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    for ro in k[::step].numpy():
        ax.plot(ro[:, 0], ro[:, 1], linewidth=0.6, marker=".", markersize=1.5)
    ax.set_aspect("equal")
    ax.set_xlabel("kx (1/m)")
    ax.set_ylabel("ky (1/m)")
    ax.set_title("k-space trajectory" + (f" (every {step}th readout)" if step > 1 else ""))
    return save_figure(fig, path)


def sequence_diagram(seq: Sequence, path: str | Path, *, repetitions: int = 3) -> Path:
    """RF, gradient amplitudes (moment / duration, mT/m) and ADC of ``repetitions`` repetitions from the
    one before the first readout, over time (events without ADC are drawn at most max(2 ms, twice the
    repetition's readout) long); plus flip angle and net gradient moment of every repetition."""
    with_adc = [r for r, rep in enumerate(seq) if bool(rep.adc_usage.any())]
    first = max(0, (with_adc[0] if with_adc else 0) - 1)
    chosen = list(range(first, min(len(seq), first + repetitions)))
    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(6, 1)
    for ax in axes[1:5]:
        ax.sharex(axes[0])
    t0 = 0.0
    for r in chosen:
        rep = seq[r]
        dt = rep.event_time.detach().cpu().to(torch.float64).numpy()
        moment = rep.gradm.detach().cpu().to(torch.float64).numpy()
        adc = rep.adc_usage.detach().cpu().numpy()
        cap = max(2.0 * float(dt[adc].sum()), _MAX_GAP_S)
        shown = np.where(adc, dt, np.minimum(dt, cap))  # long gaps (TR fill) are drawn shortened
        ends = t0 + np.cumsum(shown)
        starts = ends - shown
        amp = moment / np.maximum(dt, 1e-12)[:, None] / _HZ_PER_MT
        axes[0].vlines(t0 * 1e3, 0, float(rep.pulse.angle.detach()) * 180 / np.pi, color="C3", linewidth=2)
        for axis in range(3):
            axes[1 + axis].stairs(amp[:, axis], np.concatenate([starts[:1], ends]) * 1e3, color=f"C{axis}")
        if adc.any():
            axes[4].plot(ends[adc] * 1e3, np.ones(int(adc.sum())), "|", color="k")
        t0 = float(ends[-1]) if len(ends) else t0
    for ax, label in zip(axes[:5], ("RF (deg)", "Gx (mT/m)", "Gy (mT/m)", "Gz (mT/m)", "ADC"), strict=True):
        ax.set_ylabel(label)
    axes[4].set_xlabel(f"time (ms), repetitions {chosen[0]}–{chosen[-1]} (long gaps shortened)")
    flips = np.array([float(rep.pulse.angle.detach()) * 180 / np.pi for rep in seq])
    net = np.stack([rep.gradm.detach().cpu().to(torch.float64).sum(0).numpy() for rep in seq])
    ax = axes[5]
    ax.plot(flips, ".", color="C3", label="flip angle (deg)")
    twin = ax.twinx()
    for axis, name in enumerate("xyz"):
        twin.plot(net[:, axis], linewidth=0.8, color=f"C{axis}", label=f"net moment {name} (1/m)")
    ax.set_xlabel("repetition")
    ax.set_ylabel("flip (deg)")
    twin.set_ylabel("net moment (1/m)")
    twin.legend(loc="upper right", fontsize="small")
    fig.suptitle(f"sequence '{seq.info.name}': {len(seq)} repetitions, {seq.adc_count} ADC samples")
    return save_figure(fig, path)


def seq_waveforms(waves: SeqWaveforms, path: str | Path, *, title: str) -> Path:
    """What the .seq plays over ``waves.window``: |B1| (µT), RF phase (rad, where |B1| > 2 % of its peak),
    Gx, Gy, Gz (mT/m, ramps included) and the ADC windows (shaded on every row)."""
    fig = Figure(figsize=(13, 10), layout="constrained")
    axes = fig.subplots(6, 1, sharex=True)
    start, end = waves.window
    ms = 1e3
    axes[0].plot(waves.rf_time * ms, np.abs(waves.rf), color="C3", linewidth=0.9)
    strong = np.abs(waves.rf) > 0.02 * (float(np.abs(waves.rf).max()) if waves.rf.size else 0.0)
    axes[1].plot(waves.rf_time[strong] * ms, np.angle(waves.rf[strong]), ".", color="C3", markersize=1.5)
    axes[1].set_ylim(-np.pi * 1.1, np.pi * 1.1)
    for axis, (t, g) in enumerate(waves.gradients):
        axes[2 + axis].plot(t * ms, g, color=f"C{axis}", linewidth=1.0)
        axes[2 + axis].axhline(0.0, color="0.7", linewidth=0.5)
    for begin, stop in waves.adc_windows:
        for ax in axes:
            ax.axvspan(begin * ms, stop * ms, color="0.5", alpha=0.15, linewidth=0)
        axes[5].plot([begin * ms, stop * ms], [1, 1], color="k", linewidth=4, solid_capstyle="butt")
    axes[5].set_ylim(0, 1.5)
    axes[5].set_yticks([])
    labels = ("|B1| (µT)", "RF phase (rad)", "Gx (mT/m)", "Gy (mT/m)", "Gz (mT/m)", "ADC")
    for ax, label in zip(axes, labels, strict=True):
        ax.set_ylabel(label)
    axes[5].set_xlim(start * ms, end * ms)
    axes[5].set_xlabel(f"time from the start of the sequence (ms); window {start * ms:.4g}–{end * ms:.4g} ms of "
                       f"{waves.duration * ms:.6g} ms")
    fig.suptitle(f"{title}: the waveforms the file plays (read with pypulseq), ADC windows shaded")
    return save_figure(fig, path)


#: loss columns of a history, drawn in this order; the total ("loss") last, on top
_LOSS_TERMS = ("mse", "l1", "ssim", "sar", "scan_time", "hardware")


def optimization_history(rows: list[dict[str, float]], path: str | Path) -> Path:
    """Loss terms and the total loss (on top, black) per step with the validation loss; and every tracked
    parameter (``*_mean`` columns, ``sar_flip2``, ``scan_time_s``) per step, one small panel each."""
    params = [k for k in dict.fromkeys(k for r in rows for k in r)
              if k.endswith("_mean") or k in ("sar_flip2", "scan_time_s")]
    fig = Figure(figsize=(14, max(4.5, 1.6 * len(params))), layout="constrained")
    grid = fig.add_gridspec(max(1, len(params)), 2, width_ratios=[1.3, 1])
    ax = fig.add_subplot(grid[:, 0])

    def series(key: str) -> tuple[list[float], list[float]]:
        chosen = [r for r in rows if key in r]
        return [r["step"] for r in chosen], [r[key] for r in chosen]

    for i, key in enumerate(k for k in _LOSS_TERMS if any(k in r for r in rows)):
        ax.plot(*series(key), label=key, linewidth=1.0, color=f"C{i}", alpha=0.8)
    if any("val_loss" in r for r in rows):
        ax.plot(*series("val_loss"), "o", label="validation loss", color="C7", markersize=4, zorder=4)
    if any("loss" in r for r in rows):
        ax.plot(*series("loss"), label="total loss", color="k", linewidth=2.2, linestyle="--", zorder=5)
    positive = [v for r in rows for k, v in r.items() if k in (*_LOSS_TERMS, "loss", "val_loss") and v > 0]
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("optimization: loss terms and total")
    ax.legend()
    for i, key in enumerate(params):
        sub = fig.add_subplot(grid[i, 1])
        sub.plot(*series(key), color=f"C{i % 10}")
        sub.set_ylabel(key, fontsize=8)
        sub.tick_params(labelsize=7)
        if i == len(params) - 1:
            sub.set_xlabel("step")
    return save_figure(fig, path)
