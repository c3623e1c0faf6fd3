"""Hallucination guard of a learned reconstruction: does the image still explain the data, and where did the
network move it further from a conventional reconstruction than noise can?

For Cartesian data with calibration (ACS) lines, against the SENSE problems the Recon itself solves
(:meth:`mrbridge.recon.pipeline.Recon.sense_problems`: the same E, mask and prewhitened y):

- the data-consistency residual ‖m·E x − y‖/‖y‖ of the image, and of every unrolled step (from the Image's meta);
- the reference: regularised CG-SENSE of the same data with λ chosen by a discrepancy principle: the largest λ
  of a grid whose residual ‖m·E x − y‖ stays within the noise, √M·σ for the M samples (σ from the noise scan; Morozov),
  or within 1.1 × the residual of λ = 0 when model error (e.g. sensitivities from few ACS lines) keeps every
  residual above the noise; and its residual;
- the noise level of that reference per voxel, by pseudo-replicas (Robson et al. 2008): the standard deviation
  over reconstructions of pure noise of σ (the recon is linear in the data);
- the change map: where |x − x_SENSE| exceeds ``threshold`` × that noise level, i.e. where the network changed
  the image beyond what the noise of the conventional recon explains (residual aliasing the network removed
  shows up there too: the map says where to look, not what is wrong);
- the trained λₙ of an unrolled recon.

``flagged`` is raised when the image's residual exceeds ``residual_factor`` × the reference's: the image no longer
explains the measured samples as well as a conventional recon does. The change map is reported, not judged (its
share of the object, where the reference exceeds 10 % of its maximum, is in ``changed_fraction``): at high
acceleration a network is expected to change the image beyond the noise where it removes aliasing, and what it
adds in the unmeasured part of k-space no data can confirm: that is where to look.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrbridge.atomic import atomic_write_bytes, atomic_write_text
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.image import Image
from mrbridge.recon.pipeline import Recon, ReconConfig, SenseProblem
from mrbridge.recon.solvers import conjugate_gradient

#: Tikhonov λ tried for the reference SENSE (relative to the data's scale: EᴴE has eigenvalues ≤ 1)
LAMBDA_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 0.0)


@dataclass
class GuardReport:
    """What the guard found; maps are (y, x) float numpy arrays of the first slice / frame.

    residual: ‖m·E x − y‖/‖y‖ of the image;  reference_residual: of the SENSE reference;  reference_lambda: its λ;
    step_residual, prior_residual, lambdas: per unrolled step (empty for other recons);  noise_sigma: σ per coil
    sample (after prewhitening; 0 without a noise scan);  changed_fraction: of the object's voxels;
    flagged: see the module docstring;  reasons: why it was flagged
    """

    residual: float
    reference_residual: float
    reference_lambda: float
    noise_sigma: float
    changed_fraction: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)
    step_residual: list[float] = field(default_factory=list)
    prior_residual: list[float] = field(default_factory=list)
    image: np.ndarray | None = None
    reference: np.ndarray | None = None
    noise_level: np.ndarray | None = None
    changed: np.ndarray | None = None

    def summary(self) -> dict[str, object]:
        """The numbers (no maps), JSON-serialisable."""
        return {"flagged": self.flagged, "reasons": self.reasons, "residual": self.residual,
                "reference_residual": self.reference_residual, "reference_lambda": self.reference_lambda,
                "noise_sigma": self.noise_sigma, "changed_fraction": self.changed_fraction,
                "trained_lambdas": self.lambdas, "step_residual": self.step_residual,
                "prior_residual": self.prior_residual}


def _solve(p: SenseProblem, rhs: torch.Tensor, lam: float, iterations: int) -> torch.Tensor:
    def normal(x: torch.Tensor) -> torch.Tensor:
        return p.op.H(p.mask * p.op(x)) + lam * x

    return conjugate_gradient(normal, rhs, iterations=iterations)


def _residual(p: SenseProblem, x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(p.mask * p.op(x) - p.kspace) / torch.linalg.vector_norm(p.kspace))


def noise_sigma(raw: RawData) -> float:
    """σ of one complex k-space sample per coil from the noise scan, √(tr Ψ / coils) (prewhitening keeps that
    power in every coil); 0 without a noise scan."""
    if raw.noise is None or raw.noise.shape[-1] <= raw.coils:
        return 0.0
    return float(raw.noise.abs().square().mean().sqrt())


def guard(raw: RawData, image: Image, *, config: ReconConfig | None = None, threshold: float = 4.0,
          replicas: int = 16, iterations: int = 30, residual_factor: float = 1.5, seed: int = 0) -> GuardReport:
    """Check ``image`` (the learned recon of ``raw``, uncropped: data (…, y, x) on the encoded matrix) against
    the data and the best-λ SENSE of the same data; see the module docstring.

    config: the recon's config (its prewhitening, Walsh kernel and threshold define E); default ReconConfig().
    Raises InputError (from the Recon) for data without calibration lines.
    """
    config = config or ReconConfig()
    sense_config = config.model_copy(update={"method": "sense", "network": "none", "unrolled": None,
                                             "train_tikhonov": False})
    problems, _ = Recon(sense_config).sense_problems(raw)
    p = problems[0]
    x = image.data.detach().reshape(-1, *image.data.shape[-2:])[0].to(p.kspace.dtype)
    if tuple(x.shape) != tuple(p.mask.shape[-2:]):
        raise ValueError(f"image of {tuple(x.shape)} voxels; the guard needs the encoded matrix "
                         f"{tuple(p.mask.shape[-2:])} (remove_oversampling off)")
    sigma = noise_sigma(raw)
    samples = int(p.mask.sum()) * p.kspace.shape[0]
    y_norm2 = float(p.kspace.abs().square().sum())
    rhs = p.op.H(p.kspace)
    with torch.no_grad():
        unregularised = _solve(p, rhs, 0.0, iterations)
        allowed = max(math.sqrt(samples / y_norm2) * sigma, 1.1 * _residual(p, unregularised))
        chosen, reference = 0.0, unregularised
        for lam in LAMBDA_GRID:  # the largest λ whose residual stays within ``allowed`` (discrepancy principle)
            candidate = _solve(p, rhs, lam, iterations) if lam > 0 else unregularised
            if _residual(p, candidate) <= allowed:
                chosen, reference = lam, candidate
                break
        gen = torch.Generator().manual_seed(seed)
        spread = torch.zeros(x.shape, dtype=x.real.dtype)
        if sigma > 0:
            for _ in range(replicas):
                n = sigma * torch.randn(p.kspace.shape, dtype=p.kspace.dtype, generator=gen) * p.mask
                spread += _solve(p, p.op.H(n), chosen, iterations).abs().square()
            spread = (spread / replicas).sqrt()
        residual, ref_residual = _residual(p, x), _residual(p, reference)
    obj = reference.abs() > 0.1 * reference.abs().max()
    floor = 1e-6 * float(reference.abs().max())
    changed = (x - reference).abs() > threshold * spread.clamp_min(floor)
    fraction = float((changed & obj).sum()) / max(int(obj.sum()), 1)
    reasons = []
    if residual > residual_factor * ref_residual:
        reasons.append(f"data-consistency residual {residual:.4f} > {residual_factor} × SENSE's {ref_residual:.4f}")
    meta = image.meta
    return GuardReport(
        residual=residual, reference_residual=ref_residual, reference_lambda=chosen, noise_sigma=sigma,
        changed_fraction=fraction, flagged=bool(reasons), reasons=reasons,
        lambdas=[float(v) for v in meta.get("unrolled_lambdas", [])],
        step_residual=[float(v) for v in meta.get("unrolled_step_residual", [])],
        prior_residual=[float(v) for v in meta.get("unrolled_prior_residual", [])],
        image=x.abs().numpy(), reference=reference.abs().numpy(), noise_level=spread.numpy(),
        changed=changed.numpy(),
    )


def guard_figure(report: GuardReport, path: str | Path) -> Path:
    """One PNG: the image, the SENSE reference, |difference| / noise level, the change map over the image."""
    assert report.image is not None and report.reference is not None
    assert report.noise_level is not None and report.changed is not None
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 4)
    top = float(report.reference.max()) or 1.0
    ratio = np.abs(report.image - report.reference) / np.maximum(report.noise_level, 1e-12 * top)
    panels = [(report.image, f"learned recon (DC {report.residual:.4f})", "gray", 0.0, top),
              (report.reference, f"SENSE λ = {report.reference_lambda:g} (DC {report.reference_residual:.4f})",
               "gray", 0.0, top),
              (ratio, "|learned − SENSE| / noise σ", "magma", 0.0, 8.0),
              (report.image, f"changed beyond noise: {100 * report.changed_fraction:.1f} %", "gray", 0.0, top)]
    for ax, (data, title, cmap, lo, hi) in zip(axes, panels, strict=True):
        shown = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        if cmap == "magma":
            fig.colorbar(shown, ax=ax, fraction=0.046)
    overlay = np.ma.masked_where(~report.changed, np.ones_like(report.image))
    axes[3].imshow(overlay, cmap="autumn", alpha=0.6, origin="lower", vmin=0, vmax=1)
    lam = ", ".join(f"{v:.2f}" for v in report.lambdas)
    fig.suptitle(("FLAGGED: " + "; ".join(report.reasons)) if report.flagged else
                 f"guard: consistent with the data{'; trained λₙ ' + lam if lam else ''}", fontsize=10)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def guard_report(recon: Recon, raw: RawData, image: Image, out_dir: str | Path) -> list[tuple[Path, str]]:
    """The guard in a report folder: ``guard.png`` and ``guard.json`` for a learned recon (a network or an
    unrolled recon) of Cartesian data with calibration lines; nothing ([]) otherwise. Returns the figures with
    their captions."""
    c = recon.config
    learned = recon.network is not None or recon.unrolled is not None
    if not learned or c.method != "sense" or image.data.shape[-2:] != _encoded(raw):
        return []
    report = guard(raw, image, config=c)
    out = Path(out_dir)
    atomic_write_text(out / "guard.json", json.dumps(_finite(report.summary()), indent=2) + "\n")
    caption = ("Hallucination guard: data consistency, the best-λ (discrepancy-principle) SENSE of the same data, "
               "and where the network changed the image beyond that recon's noise level (pseudo-replicas)")
    if report.lambdas:
        caption += "; trained λₙ " + ", ".join(f"{v:.3g}" for v in report.lambdas)
    return [(guard_figure(report, out / "guard.png"), caption)]


def _encoded(raw: RawData) -> tuple[int, int]:
    nx, ny, _ = raw.header.encoded_matrix
    return (ny, nx)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
