"""Figures of a run bundle: loss curves, flip angles, k-space trajectory (PNG, written atomically)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mrbridge.atomic import atomic_path
from mrbridge.sequence.model import Sequence


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_plots(folder: Path, history: list[dict[str, Any]], seq: Sequence) -> None:
    """``loss.png`` (training terms and validation loss per step), ``flip_angles.png`` (final angle of every
    pulse), ``kspace.png`` (ADC sample positions in x, y, cycles per FOV)."""
    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = [k for k in ("loss", "mse", "l1", "ssim", "sar", "scan_time", "hardware") if any(k in r for r in history)]
    for key in keys:
        rows = [r for r in history if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    val = [r for r in history if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    _save(fig, folder / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot([math.degrees(float(rep.pulse.angle)) for rep in seq], ".")
    ax.set_xlabel("repetition")
    ax.set_ylabel("flip angle (°)")
    _save(fig, folder / "flip_angles.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    k = seq.kspace().detach().double()
    ax.plot((k[:, 0] * seq.info.fov[0]).numpy(), (k[:, 1] * seq.info.fov[1]).numpy(), ".", markersize=2)
    ax.set_xlabel("kx (cycles/FOV)")
    ax.set_ylabel("ky (cycles/FOV)")
    ax.set_aspect("equal")
    _save(fig, folder / "kspace.png")
