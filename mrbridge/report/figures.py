"""Figures of a comparison report, drawn with matplotlib's Agg canvas (no pyplot state) and written as PNG.

Every function takes plain tensors, writes one PNG atomically and returns its path. Images are shown with
+y up (``origin="lower"``), as :func:`mrbridge.recon.image_io.write_png` does.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrbridge.atomic import atomic_write_bytes
from mrbridge.raw.rawdata import RawData
from mrbridge.sequence.model import Sequence

#: gaps drawn in a sequence diagram are at most this long, or twice the repetition's readout (s)
_MAX_GAP_S = 2e-3
#: Hz/m per mT/m (¹H)
_HZ_PER_MT = 42.577478e6 * 1e-3


def _save(fig: Figure, path: str | Path) -> Path:
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


def image_panels(sim_scaled: np.ndarray, meas: np.ndarray, mask: np.ndarray, path: str | Path) -> Path:
    """Simulated (scaled) | measured | difference (meas − s·sim) | ratio (meas / s·sim) of one (y, x) slice."""
    fig = Figure(figsize=(16, 4.4), layout="constrained")
    axes = fig.subplots(1, 4)
    vmax = float(max(sim_scaled.max(), meas.max())) or 1.0
    diff = meas - sim_scaled
    dlim = float(np.abs(diff).max()) or 1.0
    ratio = ratio_map(sim_scaled, meas, mask)
    finite = ratio[np.isfinite(ratio)]
    spread = float(np.percentile(np.abs(finite - 1), 98)) if finite.size else 0.1
    spread = max(spread, 0.05)
    panels = (
        ("simulated × scale", sim_scaled, "gray", 0.0, vmax),
        ("measured", meas, "gray", 0.0, vmax),
        ("difference (meas − s·sim)", diff, "RdBu_r", -dlim, dlim),
        ("ratio (meas / s·sim)", ratio, "coolwarm", 1 - spread, 1 + spread),
    )
    for ax, (title, data, cmap, lo, hi) in zip(axes, panels, strict=True):
        shown = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.8)
    return _save(fig, path)


def line_profiles(sim_scaled: np.ndarray, meas: np.ndarray, path: str | Path) -> Path:
    """Profiles through the central row (along x) and the central column (along y) of one (y, x) slice."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    ny, nx = meas.shape
    for ax, (title, a, b) in zip(
        axes,
        (
            (f"row y = {ny // 2} (along x)", sim_scaled[ny // 2], meas[ny // 2]),
            (f"column x = {nx // 2} (along y)", sim_scaled[:, nx // 2], meas[:, nx // 2]),
        ),
        strict=True,
    ):
        ax.plot(a, label="simulated × scale")
        ax.plot(b, label="measured", linestyle="--")
        ax.set_title(title)
        ax.set_xlabel("voxel")
        ax.set_ylabel("magnitude")
        ax.legend()
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)
