"""Figures of a run bundle: loss curves, flip angles, k-space trajectory (PNG, written atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mrbridge.atomic import atomic_path
from mrbridge.sequence.model import Sequence

#: loss terms drawn under the total, in this order
LOSS_TERMS = ("mse", "l1", "ssim", "sar", "scan_time", "hardware")


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def loss_figure(history: list[dict[str, Any]]) -> Figure:
    """Every loss term and the validation loss per step, and the total loss drawn last, dashed black, on top:
    visible even where a single term equals it."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for key in (k for k in LOSS_TERMS if any(k in r for r in history)):
        rows = [r for r in history if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key, linewidth=1.0, alpha=0.8)
    val = [r for r in history if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o", label="validation loss", zorder=4)
    total = [r for r in history if "loss" in r]
    if total:
        ax.plot([r["step"] for r in total], [r["loss"] for r in total], "k--", linewidth=2.0, label="total loss",
                zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


def flip_angle_figure(seq: Sequence) -> Figure:
    """The final angle of every pulse; constrained layout keeps the axis labels inside the canvas."""
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    ax.plot([math.degrees(float(rep.pulse.angle)) for rep in seq], ".")
    ax.set_xlabel("repetition")
    ax.set_ylabel("flip angle (°)")
    return fig


def kspace_figure(seq: Sequence) -> Figure:
    """ADC sample positions in x, y (cycles per FOV)."""
    fig, ax = plt.subplots(figsize=(4, 4), layout="constrained")
    k = seq.kspace().detach().double()
    ax.plot((k[:, 0] * seq.info.fov[0]).numpy(), (k[:, 1] * seq.info.fov[1]).numpy(), ".", markersize=2)
    ax.set_xlabel("kx (cycles/FOV)")
    ax.set_ylabel("ky (cycles/FOV)")
    ax.set_aspect("equal")
    return fig


def write_plots(folder: Path, history: list[dict[str, Any]], seq: Sequence) -> None:
    """``loss.png`` (:func:`loss_figure`), ``flip_angles.png`` (:func:`flip_angle_figure`), ``kspace.png``
    (:func:`kspace_figure`)."""
    folder.mkdir(parents=True, exist_ok=True)
    _save(loss_figure(history), folder / "loss.png")
    _save(flip_angle_figure(seq), folder / "flip_angles.png")
    _save(kspace_figure(seq), folder / "kspace.png")
