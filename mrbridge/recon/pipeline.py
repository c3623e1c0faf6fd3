"""Recon: one torch module that reconstructs simulated and measured RawData alike.

``Recon(config)(raw) -> Image`` is differentiable w.r.t. ``raw.kdata`` and ``raw.traj``; its configuration
and (optional network) weights round-trip through a run bundle (``recon.json`` + ``recon.pt``).

Stages: noise prewhitening → (fft, sense) readouts that cross several k-space lines (a single-trajectory EPI: one
ADC over the whole echo train) split into virtual line readouts (``mrbridge.recon.lines``) → (fft, sense) line
readouts that alternate in direction or are ramp-sampled (EPI):
N/2 ghost correction and regridding onto the Cartesian k_x grid (``mrbridge.recon.epi``) → gridding by the
encoding labels (Cartesian: fft, sense) or an exact non-Cartesian transform of ``raw.traj`` (adjoint, cg) → coil
combination → readout-oversampling removal → optional network. With ``network: unrolled`` the solve of
sense / cg itself becomes the unrolled network (``mrbridge.recon.unrolled``): regularised-SENSE steps on the same
encoding operator alternating with learned priors.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ismrmrd
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from mrbridge.atomic import atomic_path, atomic_write_text
from mrbridge.errors import ConfigError, InputError
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.coils import estimate_sensitivities
from mrbridge.recon.dcf import pipe_dcf
from mrbridge.recon.epi import cartesian_view
from mrbridge.recon.image import Image
from mrbridge.recon.lines import virtual_lines
from mrbridge.recon.networks import ScaleNormalised, build_network
from mrbridge.recon.operators import CoilOp, FourierOp, LinearOperator, NonCartesianOp
from mrbridge.recon.phase import PhaseNormalised
from mrbridge.recon.regrid import needs_regrid
from mrbridge.recon.solvers import conjugate_gradient
from mrbridge.recon.spectrum import frequencies, is_unencoded, spectra
from mrbridge.recon.unrolled import Normal, Trace, UnrolledConfig, UnrolledSense

#: readouts that never enter an image
_SKIP = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
)


@dataclass
class SenseProblem:
    """One Cartesian SENSE problem: data ``kspace`` = ``mask``·``op``(x) + noise.

    op: image (…, y, x) → coil k-space (coils, …, y, x), FFT @ sensitivities;  mask: (…, y, x) real, 1 where
    sampled;  kspace: (coils, …, y, x) complex, zero-filled
    """

    op: LinearOperator
    mask: torch.Tensor
    kspace: torch.Tensor


class ReconConfig(BaseModel):
    """How to reconstruct (stored as ``recon.json`` in a bundle)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Literal["fft", "adjoint", "cg", "sense"] = "fft"
    iterations: int = Field(default=10, ge=1, description="CG iterations (cg, sense)")
    tikhonov: float = Field(default=0.0, ge=0.0, description="λ of the Tikhonov term λ‖x‖² (cg, sense)")
    train_tikhonov: bool = Field(
        default=False, description="make λ a trainable parameter (cg, sense), starting at `tikhonov` (> 0)"
    )
    prewhiten: bool = Field(default=True, description="whiten coils with the noise scan, if any")
    remove_oversampling: bool = Field(default=True, description="crop x (and y) to the header's recon matrix")
    coil_combine: Literal["rss", "sensitivity"] = "rss"
    sensitivity_kernel: int = Field(default=5, ge=1, description="Walsh window width in voxels (odd)")
    sensitivity_threshold: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="zero the maps where the coil RSS < threshold·max"
    )
    regrid: Literal["sinc", "linear"] = Field(
        default="sinc", description="fft, sense: interpolation of ramp-sampled line readouts onto the k_x grid"
    )
    ghost_correction: Literal["auto", "fixed", "none"] = Field(
        default="auto", description="readouts of alternating polarity (EPI): odd/even phase and delay estimated "
        "from the data (auto), ghost_phase_rad/ghost_delay_us (fixed), or none"
    )
    ghost_phase_rad: float = Field(default=0.0, description="fixed: phase of reversed against forward lines")
    ghost_delay_us: float = Field(default=0.0, description="fixed: gradient-to-ADC delay (as --trajectory-delay-us)")
    density_compensation: Literal["none", "pipe"] = Field(
        default="none", description="adjoint: weight the samples by Pipe's iterative density compensation"
    )
    network: Literal["none", "cnn", "unet", "unrolled"] = "none"
    network_features: int = Field(default=16, ge=1, description="channels of the network (unrolled: of each prior)")
    network_depth: int = Field(default=3, ge=1, description="conv layers (cnn, ≥ 2) or levels (unet)")
    network_init: float = Field(
        default=0.0, ge=0, le=1, description="std of each network's last layer at the start: 0 starts it as the "
        "identity; a small one (0.01) lets the layers below train from the first step"
    )
    network_phase: Literal["as_is", "normalised"] = Field(
        default="as_is", description="normalised: the network (unrolled: each prior) sees the image without its "
        "smooth phase, restored after (mrbridge.recon.phase)"
    )
    network_scale: Literal["as_is", "normalised"] = Field(
        default="as_is", description="normalised: the image-domain network (cnn, unet) sees the image divided by "
        "its largest magnitude, that scale restored after, so it works at any receiver gain (the unrolled recon "
        "always does this)"
    )
    unrolled: UnrolledConfig | None = Field(
        default=None, description="network unrolled: its steps, prior and λ (defaults filled in)"
    )

    @model_validator(mode="after")
    def _trainable_tikhonov(self) -> ReconConfig:
        if self.train_tikhonov and (self.method not in ("cg", "sense") or self.tikhonov <= 0):
            raise ValueError(f"train_tikhonov needs method 'cg' or 'sense' (got {self.method!r}) and tikhonov > 0 "
                             f"as its starting value (got {self.tikhonov})")
        return self

    @model_validator(mode="after")
    def _network_settings(self) -> ReconConfig:
        if self.network == "unrolled":
            if self.method not in ("cg", "sense"):
                raise ValueError(f"network 'unrolled' replaces the solve of method 'sense' or 'cg' (got "
                                 f"{self.method!r})")
            if self.unrolled is None:
                self.unrolled = UnrolledConfig()
        elif self.unrolled is not None:
            raise ValueError(f"unrolled settings need network 'unrolled' (got {self.network!r})")
        if self.network_scale == "normalised" and self.network not in ("cnn", "unet"):
            raise ValueError(f"network_scale 'normalised' needs network 'cnn' or 'unet' (got {self.network!r}; the "
                             "unrolled recon always normalises)")
        return self


def default_method(raw: RawData) -> Literal["fft", "cg"]:
    """The method for ``raw`` when the user names none: fft for Cartesian data and for line readouts (EPI,
    alternating or ramp-sampled lines, regridded onto the Cartesian matrix; also lines that one long readout
    crosses, split by ``mrbridge.recon.lines``), cg for any other trajectory."""
    h = raw.header
    flags = raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)
    imaging = ~torch.stack([_has(flags, bit) for bit in _SKIP]).any(0)
    if h.trajectory == "cartesian":
        return "fft"
    view, _, split = virtual_lines(raw, raw.kdata, imaging)  # a readout crossing several lines (one-ADC EPI)
    if split:
        imaging = torch.ones(view.readouts, dtype=torch.bool)
    return "fft" if needs_regrid(view.traj, h.encoded_fov, imaging) else "cg"


def _trace_meta(traces: list[Trace] | None) -> dict[str, list[float]]:
    """Image meta of the unrolled steps: the λₙ and, per step, the worst residual ‖E x − y‖/‖y‖ over the
    reconstructed slices / volumes, of xₙ (after the SENSE step) and of zₙ (after the prior)."""
    if not traces:
        return {}
    return {"unrolled_lambdas": traces[0].lambdas,
            "unrolled_step_residual": [max(t) for t in zip(*(tr.step_residual for tr in traces), strict=True)],
            "unrolled_prior_residual": [max(t) for t in zip(*(tr.prior_residual for tr in traces), strict=True)]}


def _has(flags: torch.Tensor, bit: int) -> torch.Tensor:
    """(readouts,) bool: ISMRMRD flag ``bit`` (1-based) set."""
    return (flags >> (bit - 1)) & 1 == 1


def _center_crop(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """Keep the central ``n`` entries of ``dim`` (voxel n_old//2 stays at n//2)."""
    start = x.shape[dim] // 2 - n // 2
    return x.narrow(dim, start, n)


def prewhiten(kdata: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Whiten coils, keeping the scale: √(tr Ψ / coils)·L⁻¹·kdata, with L the Cholesky factor of the noise
    covariance Ψ. The coils' noise becomes uncorrelated with equal power (the mean power of the input), so data
    with and without a noise scan (measured vs simulated) reconstruct to the same scale; one coil is unchanged.

        kdata: (coils, readouts, samples) complex;  noise: (coils, noise_samples) complex
    returns (coils, readouts, samples)
    """
    n = noise.to(kdata.device, kdata.dtype)
    cov = n @ n.conj().T / n.shape[1]
    chol = torch.linalg.cholesky(cov)
    c, r, s = kdata.shape
    white = torch.linalg.solve_triangular(chol, kdata.reshape(c, r * s), upper=False)
    power = torch.diagonal(cov).real.mean().sqrt()
    return (power * white).reshape(c, r, s)


class Recon(nn.Module):
    """Reconstruct RawData into an Image; see ``ReconConfig`` for the methods.

    >>> import torch
    >>> from mrbridge.raw.rawdata import RawData, RawHeader
    >>> k = torch.zeros(1, 8, 8, dtype=torch.complex64); k[0, 4, 4] = 8
    >>> h = RawHeader(encoded_matrix=(8, 8, 1), recon_matrix=(8, 8, 1))
    >>> raw = RawData(k, header=h, labels={"kspace_encode_step_1": torch.arange(8)}, center_sample=4)
    >>> float(Recon()(raw).data.mean())
    1.0
    """

    def __init__(self, config: ReconConfig | None = None) -> None:
        super().__init__()
        self.config = config or ReconConfig()
        c = self.config
        unrolled = c.network == "unrolled"
        phase = c.network_phase == "normalised"
        network = None if c.network == "unrolled" else build_network(
            c.network, features=c.network_features, depth=c.network_depth, last_std=c.network_init)
        network = PhaseNormalised(network) if phase and network is not None else network
        self.network = ScaleNormalised(network) if c.network_scale == "normalised" and network is not None \
            else network
        self.unrolled = UnrolledSense(c.unrolled or UnrolledConfig(), features=c.network_features,
                                      depth=c.network_depth, phase_normalised=phase,
                                      last_std=c.network_init) if unrolled else None
        # λ = exp(log_tikhonov) when trained: positive, and Adam steps are relative changes of λ
        self.log_tikhonov = nn.Parameter(torch.tensor(math.log(c.tikhonov))) if c.train_tikhonov else None

    def tikhonov(self) -> torch.Tensor | float:
        """λ of the CG and SENSE solves: the trained value, or the configured one."""
        return self.log_tikhonov.exp() if self.log_tikhonov is not None else self.config.tikhonov

    # ---------------------------------------------------------------- bundle io
    def save(self, bundle_dir: str | Path) -> None:
        """Write ``recon.json`` (the config) and ``recon.pt`` (state dict) into ``bundle_dir`` atomically."""
        bundle = Path(bundle_dir)
        atomic_write_text(bundle / "recon.json", self.config.model_dump_json(indent=2) + "\n")
        with atomic_path(bundle / "recon.pt") as tmp:
            torch.save(self.state_dict(), tmp)

    @classmethod
    def load(cls, bundle_dir: str | Path, *, map_location: str | torch.device = "cpu") -> Recon:
        """Rebuild the Recon saved by ``save``; weights load with ``weights_only=True`` (no pickled code)."""
        bundle = Path(bundle_dir)
        cfg_path, pt_path = bundle / "recon.json", bundle / "recon.pt"
        if not cfg_path.is_file():
            raise InputError(f"{cfg_path}: missing; expected the recon config written by Recon.save")
        try:
            saved = json.loads(cfg_path.read_text())
            config = ReconConfig.model_validate(saved)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg_path}: not JSON ({e})") from e
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{cfg_path}: {field} = {first.get('input')!r}: {first['msg']}") from e
        recon = cls(config)
        if pt_path.is_file():
            try:
                state = torch.load(pt_path, map_location=map_location, weights_only=True)
                recon.load_state_dict(state, strict=True)
            except (EOFError, pickle.UnpicklingError) as e:
                raise InputError(f"{pt_path}: not readable as weights ({type(e).__name__}); expected the "
                                 "recon.pt written by Recon.save") from e
            except (RuntimeError, TypeError) as e:
                why = (str(e).strip().splitlines() or ["not a state dict"])[0]
                raise InputError(f"{pt_path}: weights do not fit network={config.network!r}: {why}") from e
        elif any(True for _ in recon.parameters()):
            raise InputError(f"{pt_path}: missing; network={config.network!r}, train_tikhonov="
                             f"{config.train_tikhonov} need the trained weights")
        elif not {"method", "network"} <= set(saved):  # Recon.save writes both files; {} is no recon
            raise InputError(f"{pt_path}: missing; expected the recon.json and recon.pt written by Recon.save (a "
                             f"{cfg_path.name} without weights must name at least its method and network; it "
                             f"names {sorted(saved)})")
        return recon

    # ---------------------------------------------------------------- forward
    def forward(self, raw: RawData, *, network: bool = True, weights: torch.Tensor | None = None) -> Image:
        """Reconstruct ``raw`` (``network=False``: without the network stage, e.g. to batch it elsewhere; an
        unrolled network then gives way to plain CG / CG-SENSE with the configured ``tikhonov``).

        weights: (readouts,) real, methods fft and sense: a relaxed sampling mask (learned sampling,
        :mod:`mrbridge.optimize.sampling`); readout r's data and its place in the encoding count weights[r]
        (SENSE: EᴴWE x = EᴴW y), differentiably.

        Returns an Image with data (repetitions, contrasts, z, y, x): complex64 for
        coil_combine="sensitivity", the methods cg/sense with sensitivities, or a network; real for RSS.
        z is the second phase-encoding direction for 3-D data, else the slice index.
        """
        c = self.config
        kdata = raw.kdata
        if c.prewhiten and raw.noise is not None and raw.noise.shape[-1] > raw.coils:
            kdata = prewhiten(kdata, raw.noise)
        if weights is not None:
            if c.method not in ("fft", "sense") or weights.shape != (raw.readouts,):
                raise ValueError(f"weights of shape {tuple(weights.shape)} with method {c.method!r}: expected "
                                 f"({raw.readouts},) (one per readout) and method 'fft' or 'sense'")
            kdata = kdata * weights.to(kdata.device)[None, :, None]
        lines: dict[str, str] = {}  # readouts crossing several lines (one-ADC EPI) → virtual line readouts
        if c.method in ("fft", "sense") and not is_unencoded(raw):
            raw, kdata, lines = virtual_lines(raw, kdata, ~self._skipped(raw).cpu())
        flags = raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)
        flags = flags.to(kdata.device)
        skip = self._skipped(raw).to(kdata.device)
        calib_only = _has(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        calib = calib_only | _has(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        if is_unencoded(raw):
            return self._spectra(raw, kdata, ~skip)
        view: dict[str, str] = {}  # EPI / alternating / ramp-sampled lines → Cartesian (mrbridge.recon.epi)
        if weights is not None and (lines or needs_regrid(raw.traj, raw.header.encoded_fov, (~skip).cpu())):
            raise ValueError("weights: the readouts are not one Cartesian line each (no weights for EPI-like data)")
        if c.method in ("fft", "sense") and needs_regrid(raw.traj, raw.header.encoded_fov, (~skip).cpu()):
            raw, kdata, view = cartesian_view(raw, kdata, ~skip, ghost=c.ghost_correction, interpolation=c.regrid,
                                              phase_rad=c.ghost_phase_rad, delay_us=c.ghost_delay_us)
        h = raw.header
        traces: list[Trace] | None = [] if network and self.unrolled is not None else None
        if c.method == "sense":
            image = self._sense(raw, kdata, ~skip & ~calib_only, ~skip & calib, traces, weights)
        elif c.method == "fft":
            grid, _ = self._grid(raw, kdata, ~skip)
            image = self._combine(self._crop(self._fourier(raw).H(grid), raw))  # crop first: less to combine
        else:
            image = self._noncartesian(raw, kdata, ~skip, traces)
        image = self._crop(image, raw)
        if network and self.network is not None:
            image = self.network(image)
        nx, ny = image.shape[-1], image.shape[-2]
        fov = (
            h.encoded_fov[0] * nx / h.encoded_matrix[0],
            h.encoded_fov[1] * ny / h.encoded_matrix[1],
            h.encoded_fov[2] * (1 if h.encoded_matrix[2] > 1 else image.shape[-3]),
        )
        meta = {"method": c.method, "coils": raw.coils, "coil_combine": c.coil_combine, **raw.provenance, **lines,
                **view, **_trace_meta(traces)}
        return Image(data=image, fov=fov, meta=meta)

    @staticmethod
    def _skipped(raw: RawData) -> torch.Tensor:
        """(readouts,) bool: readouts that never enter an image (noise, navigators, dummy scans, …)."""
        flags = raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)
        skip = torch.zeros_like(flags, dtype=torch.bool)
        for bit in _SKIP:
            skip |= _has(flags, bit)
        return skip

    def _spectra(self, raw: RawData, kdata: torch.Tensor, keep: torch.Tensor) -> Image:
        """An acquisition without spatial encoding: data (1, 1, 1, readouts, samples), row r the root-sum-of-squares
        spectrum of readout r over the coils, x the frequency (:mod:`mrbridge.recon.spectrum`)."""
        image = spectra(kdata[:, keep]).abs().square().sum(0).sqrt()[None, None, None]
        hz = frequencies(raw.samples, raw.dwell)
        meta = {"method": "spectrum", "coils": raw.coils, "coil_combine": "rss",
                "spectrum_first_hz": float(hz[0]), "spectrum_step_hz": 1 / (raw.samples * raw.dwell),
                **raw.provenance}
        return Image(data=image, fov=raw.header.encoded_fov, meta=meta)

    def _crop(self, image: torch.Tensor, raw: RawData) -> torch.Tensor:
        """Remove readout (and phase) oversampling: (…, y, x) → (…, recon y, recon x) when configured."""
        if not self.config.remove_oversampling:
            return image
        nx, ny, _ = raw.header.recon_matrix
        image = _center_crop(image, -1, min(nx, image.shape[-1]))
        return _center_crop(image, -2, min(ny, image.shape[-2]))

    def _fourier(self, raw: RawData) -> FourierOp:
        """Inverse FFT over (z, y, x) for 3-D encodings, over (y, x) for 2-D (slices stay separate)."""
        nx, ny, nz = raw.header.encoded_matrix
        return FourierOp((nz, ny, nx) if nz > 1 else (ny, nx))

    def _layout(self, raw: RawData, keep: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int, int]]:
        """Flat grid index of each readout's first sample, and the grid (reps, contrasts, z, y, x)."""
        lab = {k: v.to(keep.device) for k, v in raw.labels.items()}
        nx, ny, nz = raw.header.encoded_matrix
        z = lab["kspace_encode_step_2"] if nz > 1 else lab["slice"]
        n_z = nz if nz > 1 else int(z[keep].max()) + 1 if bool(keep.any()) else 1
        y = lab["kspace_encode_step_1"]
        rep, con = lab["repetition"], lab["contrast"]
        n_rep = int(rep[keep].max()) + 1 if bool(keep.any()) else 1
        n_con = int(con[keep].max()) + 1 if bool(keep.any()) else 1
        if bool(keep.any()) and (int(y[keep].max()) >= ny or int(z[keep].max()) >= n_z):
            raise InputError(
                f"raw data: kspace_encode_step_1 up to {int(y[keep].max())} (matrix y = {ny}) or "
                f"z index up to {int(z[keep].max())} (z = {n_z}); expected labels inside the encoded matrix"
            )
        row = (((rep * n_con + con) * n_z + z) * ny + y) * nx
        return row, (n_rep, n_con, n_z, ny, nx)

    def _grid(self, raw: RawData, kdata: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-filled Cartesian k-space (coils, reps, contrasts, z, y, x) and its sampling mask (reps, …, x):
        bool, or with ``weights`` (readouts,) the mean weight of the readouts at each position (real).

        Sample s of a readout lands at x = s − center_sample + nx//2; repeated positions are averaged.
        """
        row, shape = self._layout(raw, keep)
        nx = shape[-1]
        xs = torch.arange(raw.samples, device=kdata.device) - raw.center_sample + nx // 2
        inside = (xs >= 0) & (xs < nx)
        idx = (row[keep][:, None] + xs[inside][None, :]).reshape(-1)
        src = kdata[:, keep][:, :, inside].reshape(raw.coils, -1)
        n = torch.Size(shape).numel()
        grid = src.new_zeros(raw.coils, n).index_add(1, idx, src)
        count = torch.bincount(idx, minlength=n)
        if int(count.max()) > 1:
            grid = grid / count.clamp_min(1).to(grid.real.dtype)
        if weights is None:
            return grid.reshape(raw.coils, *shape), (count > 0).reshape(shape)
        w = weights.to(grid.real.dtype)[keep][:, None].expand(-1, int(inside.sum())).reshape(-1)
        mask = w.new_zeros(n).index_add(0, idx, w) / count.clamp_min(1).to(w.dtype)
        return grid.reshape(raw.coils, *shape), mask.reshape(shape)

    def _combine(self, coil_images: torch.Tensor, sens: torch.Tensor | None = None) -> torch.Tensor:
        """(coils, …, z, y, x) → (…, z, y, x): RSS (real) or sensitivity-weighted (complex)."""
        if self.config.coil_combine == "rss" and sens is None:
            return coil_images.abs().square().sum(0).sqrt()
        if sens is None:
            volumes = coil_images.reshape(coil_images.shape[0], -1, *coil_images.shape[-3:]).unbind(1)
            sens = torch.stack([self._sensitivities(v) for v in volumes], 1).reshape(coil_images.shape)
        weight = sens.abs().square().sum(0).clamp_min(1e-12)
        return (sens.conj() * coil_images).sum(0) / weight

    def _sensitivities(self, coil_images: torch.Tensor) -> torch.Tensor:
        """(coils, z, y, x) → (coils, z, y, x), Walsh with the configured kernel and threshold."""
        c = self.config
        return estimate_sensitivities(coil_images, kernel=c.sensitivity_kernel, threshold=c.sensitivity_threshold)

    def _solve(self, gram: Normal, rhs: torch.Tensor, y_norm2: float, traces: list[Trace] | None) -> torch.Tensor:
        """(EᴴE + λI)x = Eᴴy by CG, or the unrolled network when ``traces`` is a list (its trace appended).

        gram: x ↦ EᴴE x;  rhs: Eᴴy (…) complex;  y_norm2: ‖y‖²
        """
        if traces is not None and self.unrolled is not None:
            trace = Trace()
            traces.append(trace)
            return self.unrolled(gram, rhs, y_norm2=y_norm2, trace=trace)
        tikhonov = self.tikhonov()

        def normal(x: torch.Tensor) -> torch.Tensor:
            return gram(x) + tikhonov * x

        return conjugate_gradient(normal, rhs, iterations=self.config.iterations)

    def _sense(self, raw: RawData, kdata: torch.Tensor, imaging: torch.Tensor, acs: torch.Tensor,
               traces: list[Trace] | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """CG-SENSE (or the unrolled network) per (repetition, contrast[, slice]) with sensitivities from the ACS
        lines; ``weights`` (readouts,): the imaging readouts' weights in the mask (``kdata`` already weighted)."""
        problems, shape = self._sense_problems(raw, kdata, imaging, acs, weights)
        out = []
        for p in problems:
            def gram(x: torch.Tensor, p: SenseProblem = p) -> torch.Tensor:
                return p.op.H(p.mask * p.op(x))

            out.append(self._solve(gram, p.op.H(p.kspace), float(p.kspace.detach().abs().square().sum()), traces))
        return torch.stack(out).reshape(shape)

    def _sense_problems(self, raw: RawData, kdata: torch.Tensor, imaging: torch.Tensor, acs: torch.Tensor,
                        weights: torch.Tensor | None = None) -> tuple[list[SenseProblem], tuple[int, ...]]:
        """One SENSE problem per (repetition, contrast) volume (3-D) or slice (2-D), sensitivities (Walsh) from
        the ACS lines; and the image grid (reps, contrasts, z, y, x) they fill."""
        if not bool(acs.any()):
            raise InputError("raw data: method 'sense' needs calibration lines (ACQ_IS_PARALLEL_CALIBRATION)")
        grid, mask = self._grid(raw, kdata, imaging, weights)
        acs_grid, _ = self._grid(raw, kdata, acs)
        fourier = self._fourier(raw)
        coils, shape = grid.shape[0], grid.shape[1:]
        per = 3 if len(fourier.ishape) == 3 else 2
        flat_k = grid.reshape(coils, -1, *shape[-per:])
        flat_acs = acs_grid.reshape(coils, -1, *shape[-per:])
        flat_mask = mask.reshape(-1, *shape[-per:])
        problems = []
        for g in range(flat_k.shape[1]):
            low = fourier.H(flat_acs[:, g])
            sens = self._sensitivities(low if per == 3 else low.unsqueeze(1))
            sens = sens if per == 3 else sens.squeeze(1)
            problems.append(SenseProblem(fourier @ CoilOp(sens), flat_mask[g].to(grid.real.dtype), flat_k[:, g]))
        return problems, tuple(shape)

    def sense_problems(self, raw: RawData) -> tuple[list[SenseProblem], tuple[int, ...]]:
        """The SENSE problems (encoding operator, mask, data) of Cartesian line data as method 'sense' solves
        them (prewhitened; EPI-like readouts are not regridded here), and the grid (reps, contrasts, z, y, x)
        the images fill, before any cropping. For checks of data consistency (``mrbridge.report.guard``)."""
        kdata = raw.kdata
        if self.config.prewhiten and raw.noise is not None and raw.noise.shape[-1] > raw.coils:
            kdata = prewhiten(kdata, raw.noise)
        flags = (raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)).to(kdata.device)
        skip = self._skipped(raw).to(kdata.device)
        calib_only = _has(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
        calib = calib_only | _has(flags, ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
        return self._sense_problems(raw, kdata, ~skip & ~calib_only, ~skip & calib)

    def _noncartesian(self, raw: RawData, kdata: torch.Tensor, keep: torch.Tensor,
                      traces: list[Trace] | None = None) -> torch.Tensor:
        """Adjoint or CG (or the unrolled network) for arbitrary trajectories, per (repetition, contrast, slice)."""
        c, h = self.config, raw.header
        nx, ny, nz = h.encoded_matrix
        traj = raw.traj if raw.traj is not None else self._cartesian_traj(raw)
        row, shape = self._layout(raw, keep)
        group = row // (nx * ny) if nz == 1 else row // (nx * ny * nz)
        groups = int(torch.Size(shape[:3]).numel() if nz == 1 else torch.Size(shape[:2]).numel())
        images = []
        for g in range(groups):
            sel = keep & (group == g)
            if not bool(sel.any()):
                images.append(kdata.new_zeros(nz, ny, nx))
                continue
            y = kdata[:, sel].reshape(raw.coils, -1)
            op = NonCartesianOp(traj[sel].reshape(-1, 3).to(kdata.device), (nz, ny, nx), h.encoded_fov)
            if c.method == "adjoint" and c.density_compensation == "pipe":
                with torch.no_grad():
                    weights = pipe_dcf(traj[sel].reshape(-1, 3).to(kdata.device), (nz, ny, nx), h.encoded_fov)
                y = y * weights.to(y.real.dtype)
            coil_images = op.H(y)  # (coils, nz, ny, nx)
            if c.method == "adjoint":
                images.append(self._combine(coil_images[:, None])[0])
                continue
            # AᴴA by Toeplitz embedding (NonCartesianOp.normal): two FFTs per iteration instead of a NUFFT pair
            sensitivity = c.coil_combine == "sensitivity" and raw.coils > 1
            if traces is not None and raw.coils > 1 and not sensitivity:
                raise InputError(f"raw data: {raw.coils} coils; network 'unrolled' with method 'cg' needs "
                                 "coil_combine 'sensitivity' (one image to regularise, not one per coil)")
            coil = CoilOp(self._sensitivities(coil_images)) if sensitivity else None
            rhs = coil_images if coil is None else coil.H(coil_images)  # = (op @ coil).H(y), no second adjoint

            def gram(x: torch.Tensor, coil: CoilOp | None = coil, op: NonCartesianOp = op) -> torch.Tensor:
                return op.normal(x) if coil is None else coil.H(op.normal(coil(x)))

            x = self._solve(gram, rhs, float(y.detach().abs().square().sum()), traces)
            images.append(x if x.dim() == 3 else self._combine(x[:, None])[0])
        stacked = torch.stack(images)
        return stacked.reshape(shape[0], shape[1], -1, ny, nx)

    def _cartesian_traj(self, raw: RawData) -> torch.Tensor:
        """(readouts, samples, 3) 1/m from the encoding labels: k = (index − n//2)/FOV."""
        _, ny, nz = raw.header.encoded_matrix
        fx, fy, fz = raw.header.encoded_fov
        lab = raw.labels
        kx = (torch.arange(raw.samples) - raw.center_sample) / fx
        ky = (lab["kspace_encode_step_1"] - ny // 2) / fy
        kz = (lab["kspace_encode_step_2"] - nz // 2) / fz if nz > 1 else torch.zeros(raw.readouts)
        traj = torch.stack(torch.broadcast_tensors(kx[None, :], ky[:, None], kz[:, None]), -1)
        return traj.to(raw.kdata.real.dtype)
