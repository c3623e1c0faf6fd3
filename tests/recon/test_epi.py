"""EPI and alternating-polarity readouts: line regridding (mrbridge.recon.regrid) and N/2 ghost correction
(mrbridge.recon.epi), on the real Trio EPI, on simulated pypulseq EPI / segmented GRE, and as unit properties."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
import torch
import twixtools

from mrbridge.raw.rawdata import RawData
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.raw.twix import read_twix
from mrbridge.recon.epi import ghost_to_signal
from mrbridge.recon.pipeline import Recon, ReconConfig, default_method
from mrbridge.recon.regrid import interpolate_lines, needs_regrid, place_on_grid, regrid_lines
from mrbridge.sequence.builders import build
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.protocol import parse_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests import pulseq_classes as pc
from tests.helpers import assert_gradcheck, shared_data

EPI = "11_from_GRE_to_EPI__05_EPI"


def _corr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = np.abs(np.asarray(a)).ravel(), np.abs(np.asarray(b)).ravel()
    return float(np.corrcoef(a, b)[0, 1])


# ---- unit properties of the regridding ---------------------------------------------------------------------------
def _ramp_kx(n: int, samples: int, fov: float) -> torch.Tensor:
    """k_x (samples,) 1/m of a trapezoid sampled uniformly in time over ramps and flat top (ramps 1/4 each)."""
    t = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples  # 0 … 1
    ramp = 0.25
    g = torch.clamp(torch.minimum(t / ramp, (1 - t) / ramp), max=1.0)
    k = torch.cumsum(g, 0) - g / 2
    k = (k - k[-1] / 2) / (k[-1] - k[0]) * (n - 0.2) / fov  # extent ±(n/2 − 0.1) steps
    return k


def test_sinc_regridding_is_exact_for_an_object_inside_the_fov() -> None:
    n, fov = 32, 0.2
    kx = _ramp_kx(n, 48, fov)
    x = (torch.arange(n, dtype=torch.float64) - n // 2) * fov / n
    obj = torch.randn(n, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    samples = torch.exp(-2j * math.pi * kx[:, None] * x) @ obj
    k_grid = (torch.arange(n, dtype=torch.float64) - n // 2) / fov
    truth = torch.exp(-2j * math.pi * k_grid[:, None] * x) @ obj
    both = torch.stack([kx, kx.flip(0)])  # forward and reversed readout
    data = torch.stack([samples, samples.flip(0)])[None]
    sinc = interpolate_lines(data, both, fov, n, "sinc")[0]
    linear = interpolate_lines(data, both, fov, n, "linear")[0]
    err_sinc = float((sinc - truth).abs().max() / truth.abs().max())
    err_linear = float((linear - truth).abs().max() / truth.abs().max())
    assert err_sinc < 2e-3, err_sinc
    assert err_linear > 10 * err_sinc, (err_linear, err_sinc)  # why sinc is the default


def test_reversed_on_grid_line_is_an_exact_flip() -> None:
    n, fov = 16, 0.2
    kx = (torch.arange(n, dtype=torch.float64) - n / 2 + 0.5) / fov  # pypulseq's symmetric half-step grid
    kdata = torch.randn(2, 2, n, dtype=torch.complex128)
    placed = place_on_grid(kdata, torch.stack([kx, kx.flip(0)]), fov, n)
    assert torch.equal(placed[:, 0], kdata[:, 0])
    assert torch.equal(placed[:, 1], kdata[:, 1].flip(-1))


def test_regridding_gradcheck() -> None:
    n, fov = 8, 0.2
    kx = _ramp_kx(n, 12, fov)
    traj = torch.zeros(2, 12, 3, dtype=torch.float64)
    traj[0, :, 0], traj[1, :, 0] = kx, kx.flip(0)
    kdata = torch.randn(1, 2, 12, dtype=torch.complex128, requires_grad=True)
    assert_gradcheck(lambda k: regrid_lines(k, traj, fov, n), kdata)
    grid = torch.zeros(2, n, 3, dtype=torch.float64)
    grid[0, :, 0] = (torch.arange(n) - n / 2 + 0.5) / fov
    grid[1, :, 0] = grid[0, :, 0].flip(0)
    on = torch.randn(1, 2, n, dtype=torch.complex128, requires_grad=True)
    assert_gradcheck(lambda k: regrid_lines(k, grid, fov, n), on)


def test_ghost_to_signal_ratio() -> None:
    image = torch.zeros(1, 16, 16)
    image[0, 2:6, 4:12] = 1.0
    assert ghost_to_signal(image) == 0.0
    ghosted = image + 0.25 * image.roll(8, dims=-2)
    assert ghost_to_signal(ghosted, image) == pytest.approx(0.25 / 1.0)


# ---- simulated pypulseq sequences ---------------------------------------------------------------------------------
def _raw_of(path: Path, n: int, *, delay: float = 0.0) -> RawData:
    """Simulate ``path`` on the brain twin, encoded as the scanner's data of it are (``SeqReadouts.relabel``),
    with the trajectory computed for a gradient ``delay`` (s) that the simulated data do not have."""
    sim = simulate(import_seq(path), builtin("brain", matrix=n))
    return read_seq_readouts(path, trajectory_delay=delay).relabel(sim.with_kdata(sim.kdata.detach()))


def _reference(n: int, te: float, tr: float, flip: float, dummies: int) -> torch.Tensor:
    """|image| (n, n) of the brain twin through mrbridge's Cartesian GRE builder of that contrast."""
    p = parse_protocol({"kind": "gre", "matrix": n, "fov_mm": pc.FOV * 1e3, "slice_mm": pc.SLICE * 1e3,
                        "dwell_us": 40, "te_ms": round(te * 1e3, 3), "tr_ms": round(tr * 1e3, 3),
                        "flip_angle_deg": flip, "rf_spoiling_deg": pc.RF_SPOIL_DEG, "dummies": dummies})
    raw = simulate(build(p), builtin("brain", matrix=n))
    with torch.no_grad():
        return Recon(ReconConfig(method="fft"))(raw).data[0, 0, 0]


@pytest.fixture(scope="module")
def sim_epi(tmp_path_factory: pytest.TempPathFactory) -> tuple[pc.Written, torch.Tensor]:
    w = pc.epi(tmp_path_factory.mktemp("epi") / "epi.seq", n=64)
    return w, _reference(64, w.effective_te, 20.0, 90.0, 0)


@pytest.mark.parametrize(("delay_us", "phase"), [(0.0, 0.0), (3.0, 2.5)])
def test_simulated_epi_finds_the_delay(sim_epi: tuple[pc.Written, torch.Tensor], delay_us: float,
                                       phase: float) -> None:
    """A trajectory off by ``delay_us`` and reversed lines off by ``phase`` (beyond ±π/2: the object, not its
    ghost, must be chosen) are found from the data."""
    w, reference = sim_epi
    raw = _raw_of(w.path, 64, delay=delay_us * 1e-6)
    assert raw.traj is not None
    reversed_ = raw.traj[:, -1, 0] < raw.traj[:, 0, 0]
    raw = raw.with_kdata(torch.where(reversed_[None, :, None], raw.kdata * complex(np.exp(1j * phase)), raw.kdata))
    assert raw.header.trajectory == "epi" and default_method(raw) == "fft"
    with torch.no_grad():
        image = Recon(ReconConfig(method="fft"))(raw)
    assert image.data.shape[-2:] == (64, 64)
    found = float(image.meta["ghost_delay_us"])
    assert abs(found + delay_us) < 0.25, f"estimated delay {found} µs, the traj is off by {delay_us} µs"
    assert abs(float(image.meta["ghost_phase_rad"]) + phase) < 0.05
    if not delay_us:  # differentiable w.r.t. the samples (the estimate itself is not: it runs without gradients)
        kdata = raw.kdata.clone().requires_grad_(True)
        Recon(ReconConfig(method="fft"))(raw.with_kdata(kdata)).data.sum().backward()
        assert kdata.grad is not None and bool(torch.isfinite(kdata.grad).all()) and float(kdata.grad.abs().max()) > 0
    r = _corr(image.data[0, 0, 0], reference)
    assert r >= 0.95, f"correlation {r:.3f} with the Cartesian reference"
    if delay_us:
        before, after = float(image.meta["ghost_gsr_before"]), float(image.meta["ghost_gsr_after"])
        assert after <= before / 2, (before, after)
        with torch.no_grad():
            off = Recon(ReconConfig(method="fft", ghost_correction="none"))(raw)
        assert off.meta["ghost_correction"] == "none" and "ghost_delay_us" not in off.meta
        assert _corr(off.data[0, 0, 0], reference) < r - 0.02, "without the correction the image is worse"


@pytest.mark.parametrize("delay_us", [0.0, 8.0])
def test_segmented_alternating_gre_reconstructs_like_the_plain_gre(tmp_path: Path, delay_us: float) -> None:
    n = 32
    w = pc.segmented_gre(tmp_path / "seg.seq", segments=8, lines_per_excitation=4)  # dwell 40 µs, flat top only
    raw = _raw_of(w.path, n, delay=delay_us * 1e-6)
    assert needs_regrid(raw.traj, raw.header.encoded_fov, torch.ones(raw.readouts, dtype=torch.bool))
    with torch.no_grad():
        image = Recon(ReconConfig(method="fft"))(raw)
        plain = Recon(ReconConfig(method="fft", ghost_correction="none"))(raw)
    found = float(image.meta["ghost_delay_us"]) * 1e-6
    assert abs(found + delay_us * 1e-6) < 0.05 * raw.dwell, f"found {found * 1e6} µs, traj off by {delay_us} µs"
    reference = _reference(n, w.effective_te, w.tr, w.flip_deg, w.dummies)
    r, r_plain = _corr(image.data[0, 0, 0], reference), _corr(plain.data[0, 0, 0], reference)
    assert r >= 0.95, r
    if delay_us == 0:  # on-grid lines: exact flips, the same image with or without the (null) correction
        assert r_plain >= 0.95, r_plain


# ---- the real Trio EPI --------------------------------------------------------------------------------------------
def _reference_epi(dat: Path, seq_path: Path) -> tuple[np.ndarray, float]:
    """Independent recon (twixtools + pypulseq + numpy): adjoint DFT of each line with |Δk_x| density
    compensation onto x, its own odd/even correction (a linear phase in hybrid x-space fitted to the phase
    difference of the forward-only and reversed-only images), FFT along y, RSS. Returns (image, relative k_x
    shift of the two polarities in grid steps, from the fitted slope)."""
    with contextlib.redirect_stdout(io.StringIO()):
        meas = twixtools.read_twix(str(dat), verbose=False, parse_pmu=False)[-1]
    data = np.stack([np.asarray(m.data) for m in meas["mdb"] if m.is_image_scan()], axis=1)  # (c, r, s)
    seq = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.read(str(seq_path))
    k = seq.calculate_kspace()[0].T.reshape(data.shape[1], data.shape[2], 3)
    fov = 0.256
    n = 128
    x = (np.arange(n) - n // 2) * fov / n
    kx = k[..., 0]
    w = np.abs(np.gradient(kx, axis=1))
    hybrid = np.einsum("crs,rsx->crx", data * w, np.exp(2j * np.pi * kx[..., None] * x))
    line = np.round(k[:, 0, 1] * fov).astype(int) + n // 2
    forward = kx[:, -1] > kx[:, 0]
    grid = np.zeros((data.shape[0], 2, n, n), complex)  # (coils, polarity, ky, x)
    grid[:, 0, line[forward]] = hybrid[:, forward]
    grid[:, 1, line[~forward]] = hybrid[:, ~forward]
    split = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(grid, axes=2), axis=2), axes=2)
    # forward-only = (object + ghost)/2, reversed-only = (object − ghost)/2 up to the odd/even phase: squaring
    # their product removes the sign that tells object rows from ghost rows
    diff2 = ((split[:, 0] * split[:, 1].conj()) ** 2).sum((0, 1))  # (x,), phase 2·φ(x)
    slope = np.angle((diff2[1:] * diff2[:-1].conj()).sum()) / 2  # rad per voxel
    offset = np.angle((diff2 * np.exp(-2j * slope * (np.arange(n) - n // 2))).sum()) / 2
    best = -np.inf
    for branch in (0.0, np.pi):  # φ and φ + π: keep the one that makes k-space continuous across k_y = 0
        phase = offset + branch + slope * (np.arange(n) - n // 2)
        trial = hybrid.copy()
        trial[:, forward] *= np.exp(-0.5j * phase)
        trial[:, ~forward] *= np.exp(0.5j * phase)
        candidate = np.zeros((data.shape[0], n, n), complex)
        candidate[:, line] = trial
        centre = np.abs(candidate[:, n // 2 - 2:n // 2 + 2].sum(1)).sum()
        if centre > best:
            best, full = centre, candidate
    coils = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(full, axes=1), axis=1), axes=1)
    return np.sqrt((np.abs(coils) ** 2).sum(0)), slope * n / (2 * np.pi)


def test_real_epi_against_an_independent_reference() -> None:
    dat, seq_path = shared_data(f"{EPI}.dat"), shared_data(f"{EPI}.seq")
    raw = read_twix(dat, seq_path)
    assert default_method(raw) == "fft"
    with torch.no_grad():
        image = Recon(ReconConfig(method="fft"))(raw)
    assert image.data.shape[-2:] == (128, 128)
    reference, shift_steps = _reference_epi(dat, seq_path)
    r = _corr(image.data[0, 0, 0], reference)
    assert r >= 0.97, f"correlation {r:.4f}"
    before, after = float(image.meta["ghost_gsr_before"]), float(image.meta["ghost_gsr_after"])
    assert after <= before / 2, (before, after)
    # the same odd/even k_x shift as the reference's fit: 2·τ·(plateau k_x per s), in grid steps
    assert raw.traj is not None
    plateau = float(np.median(np.abs(np.diff(raw.traj[0, :, 0].numpy())))) * raw.header.encoded_fov[0] / raw.dwell
    found = 2 * float(image.meta["ghost_delay_us"]) * 1e-6 * plateau
    assert abs(abs(found) - abs(shift_steps)) < 0.15, (found, shift_steps)


def test_real_epi_seq_simulated_has_the_measured_shape_and_no_ghost() -> None:
    """Simulated data of the scanner's .seq, encoded like the measurement, give the measured image shape; the
    simulation has no gradient delay, so none is found."""
    seq_path = shared_data(f"{EPI}.seq")
    sim = simulate(import_seq(seq_path), builtin("brain", matrix=64))
    raw = read_seq_readouts(seq_path).relabel(sim)
    with torch.no_grad():
        image = Recon(ReconConfig(method=default_method(raw)))(raw)
    assert image.data.shape[-2:] == (128, 128)
    assert abs(float(image.meta["ghost_delay_us"])) < 0.05 and abs(float(image.meta["ghost_phase_rad"])) < 0.02
