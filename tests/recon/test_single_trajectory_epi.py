"""The single-trajectory EPI (issue 12): one ADC event sampling the whole echo train (ramps, flat tops and the
blips between lines), split by the recon into virtual line readouts (mrbridge.recon.lines) so that the line
regridding and the N/2 ghost correction apply; simulated on the brain twin against a Cartesian reference."""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
import torch
import twixtools

from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.raw.seqreadouts import SeqReadouts, read_seq_readouts
from mrbridge.raw.twix import _rejoin, read_twix
from mrbridge.recon.epi import cartesian_view
from mrbridge.recon.lines import find_lines, virtual_lines
from mrbridge.recon.pipeline import Recon, ReconConfig, default_method
from mrbridge.recon.regrid import line_like, polarity
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import parse_protocol
from mrbridge.sim.seqfile import simulate_seq_file
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests import pulseq_classes as pc
from tests.helpers import assert_gradcheck, shared_data

REAL = "11_from_GRE_to_EPI__06_EPI_singleTraj"  # the pulseq tutorials' measurement (Prisma), if present
N = 64
SEGMENT = 100  # samples per ADC segment (the scanner splits the one ADC into pieces of this many)


@dataclass
class SingleTrajectory:
    path: Path
    effective_te: float  # s, excitation centre to the sample nearest k = 0
    dwell: float
    samples: int


def write_single_trajectory_epi(path: Path, n: int = N, *, ramp: float = 120e-6, flat: float = 270e-6,
                                blip: float = 60e-6) -> SingleTrajectory:
    """Single-shot blipped EPI whose whole echo train is ONE ADC event (n² , FOV and slice of
    ``tests.pulseq_classes``).

    The read gradient is a train of n trapezoid lobes of alternating sign (``ramp``, ``flat``), back to back;
    the y blip (a triangle of area dk lasting ``blip``) is centred on each junction of two lobes, so it
    overlaps the end of one lobe's ramp-down and the start of the next one's ramp-up. Between blips k_y is
    constant and the lobe's k_x area there is exactly n·dk: with amplitude A, A·(flat + ramp) minus the two
    corners A/ramp·(blip/2)²/2 under the half blips. Both axes are extended trapezoids (corners on the
    gradient raster: the k-space pypulseq computes is exact). One ADC spans the train from its first ramp-up to
    its last ramp-down, its dwell the flat top's Nyquist dwell, its length a whole number of SEGMENTs, centred
    in the train: the first and last lines are cut short by the ADC (as in the pulseq tutorial's file).
    """
    sys = pc.system()
    seq = pp.Sequence(sys)
    dk = 1.0 / pc.FOV
    rf, gz = pc._slice_excitation(90.0, sys, duration=2e-3)
    gz_reph = pp.make_trapezoid("z", area=-gz.area / 2, system=sys)
    amplitude = n * dk / (flat + ramp - blip**2 / (4 * ramp))  # Hz/m
    lobe = 2 * ramp + flat
    peak = 2 * dk / blip
    tx, ax, ty, ay = [0.0], [0.0], [0.0], [0.0]
    for i in range(n):
        sign = (-1.0) ** i
        tx += [i * lobe + ramp, i * lobe + ramp + flat, (i + 1) * lobe]
        ax += [sign * amplitude, sign * amplitude, 0.0]
        if i < n - 1:
            junction = (i + 1) * lobe
            ty += [junction - blip / 2, junction, junction + blip / 2]
            ay += [0.0, peak, 0.0]
    ty.append(n * lobe)
    ay.append(0.0)

    def on_raster(times: list[float]) -> np.ndarray:
        return np.round(np.asarray(times) / sys.grad_raster_time) * sys.grad_raster_time

    gx = pp.make_extended_trapezoid("x", amplitudes=np.asarray(ax), times=on_raster(tx), system=sys)
    gy = pp.make_extended_trapezoid("y", amplitudes=np.asarray(ay), times=on_raster(ty), system=sys)
    dwell = math.floor(dk / amplitude / sys.adc_raster_time) * sys.adc_raster_time
    samples = math.floor((n * lobe - 2 * sys.adc_dead_time) / dwell / SEGMENT) * SEGMENT
    delay = round((n * lobe - samples * dwell) / 2 / 1e-6) * 1e-6  # on the 1-µs RF raster
    adc = pp.make_adc(num_samples=samples, dwell=dwell, delay=delay, system=sys)
    gx_pre = pp.make_trapezoid("x", area=-amplitude * (flat + ramp) / 2, system=sys)
    gy_pre = pp.make_trapezoid("y", area=-n / 2 * dk, system=sys)
    seq.add_block(rf, gz)
    seq.add_block(gx_pre, gy_pre, gz_reph)
    seq.add_block(gx, gy, adc)
    seq.add_block(pp.make_trapezoid("z", area=4 / pc.SLICE, system=sys))
    ok, errors = seq.check_timing()
    assert ok, errors[:3]
    seq.set_definition("FOV", [pc.FOV, pc.FOV, pc.SLICE])
    seq.set_definition("Name", "epi_single_trajectory")
    seq.set_definition("MaxAdcSegmentLength", SEGMENT)
    seq.write(str(path))
    k_adc, _, t_exc, _, t_adc = seq.calculate_kspace()
    centre = int(np.argmin(np.linalg.norm(k_adc, axis=0)))
    return SingleTrajectory(path, float(t_adc[centre] - t_exc[0]), dwell, samples)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.abs().numpy().ravel(), b.abs().numpy().ravel())[0, 1])


@pytest.fixture(scope="module")
def epi(tmp_path_factory: pytest.TempPathFactory) -> tuple[SingleTrajectory, RawData, torch.Tensor]:
    """The sequence, its simulation on the brain twin (labelled as the scanner's twix of it), and the twin
    imaged by mrbridge's Cartesian GRE at the EPI's effective TE (TR long, 90°: the same contrast)."""
    w = write_single_trajectory_epi(tmp_path_factory.mktemp("epi_st") / "epi_st.seq")
    twin = builtin("brain", matrix=N)
    sim = simulate_seq_file(w.path, twin)
    p = parse_protocol({"kind": "gre", "matrix": N, "fov_mm": pc.FOV * 1e3, "slice_mm": pc.SLICE * 1e3,
                        "dwell_us": 40, "te_ms": round(w.effective_te * 1e3, 3), "tr_ms": 20000.0,
                        "flip_angle_deg": 90.0, "rf_spoiling_deg": pc.RF_SPOIL_DEG, "dummies": 0})
    with torch.no_grad():
        reference = Recon(ReconConfig(method="fft"))(simulate(build(p), twin)).data[0, 0, 0]
    return w, sim, reference


def _encoded(w: SingleTrajectory, sim: RawData, delay_us: float) -> RawData:
    """The simulated samples encoded with a trajectory off by ``delay_us`` (a scanner's gradient delay)."""
    return read_seq_readouts(w.path, trajectory_delay=delay_us * 1e-6).relabel(sim)


def test_one_adc_event_splits_into_the_lines_of_the_train(epi: tuple[SingleTrajectory, RawData, torch.Tensor]
                                                         ) -> None:
    w, sim, _ = epi
    assert sim.readouts == 1 and sim.samples == w.samples
    assert sim.traj is not None and not bool(line_like(sim.traj, sim.header.encoded_fov).all())
    labels_before = {k: v.clone() for k, v in sim.labels.items()}
    view, kdata, meta = virtual_lines(sim, sim.kdata, torch.ones(1, dtype=torch.bool))
    assert view.readouts == N and kdata.shape == (sim.coils, N, view.samples) and "virtual_lines" in meta
    assert view.traj is not None and bool(line_like(view.traj, sim.header.encoded_fov).all())
    assert sorted(view.labels["kspace_encode_step_1"].tolist()) == list(range(N))  # every line once
    steps = view.traj[:, 0, 1].double() * pc.FOV + N // 2
    assert torch.allclose(steps, view.labels["kspace_encode_step_1"].double(), atol=0.02)  # label = k_y
    sign = polarity(view.traj)
    assert bool((sign[1:] == -sign[:-1]).all()), "lines alternate in direction"
    # every kept sample is a sample of the readout at its own k (index selection, nothing interpolated)
    lines = find_lines(sim.traj, sim.header.encoded_fov, torch.ones(1, dtype=torch.bool))
    assert lines is not None
    ro, s = lines.index()
    assert torch.equal(kdata, sim.kdata[:, ro, s]) and torch.equal(view.traj, sim.traj[ro, s])
    assert lines.repeated() > 0, "the ADC cuts the first and last lines: their rows repeat an edge sample"
    extent = view.traj[..., 0].abs().amax() * pc.FOV
    assert N / 2 - 1 < float(extent) <= N / 2 + 0.02, "lines end where the blips begin"
    assert all(torch.equal(sim.labels[k], v) for k, v in labels_before.items()), "the input is not relabelled"
    assert default_method(sim) == "fft"
    # the image depends on exactly the samples of the lines (those during the blips are left out)
    k = sim.kdata.clone().requires_grad_(True)
    Recon(ReconConfig(method="fft", ghost_correction="fixed"))(sim.with_kdata(k)).data.sum().backward()
    assert k.grad is not None and bool(torch.isfinite(k.grad).all())
    used = torch.zeros(sim.samples, dtype=torch.bool)
    used[s.reshape(-1)] = True
    assert torch.equal(k.grad.abs().amax(0)[0] > 0, used)


@pytest.mark.parametrize("delay_us", [0.0, 3.0, -3.0])
def test_single_trajectory_epi_reconstructs_like_the_cartesian_reference(
        epi: tuple[SingleTrajectory, RawData, torch.Tensor], delay_us: float) -> None:
    """Reconstructed with the default method, the EPI looks like the Cartesian image of the twin; a trajectory
    off by ``delay_us`` is found by the ghost correction, which at least halves the ghost."""
    w, sim, reference = epi
    raw = _encoded(w, sim, delay_us)
    method = default_method(raw)
    assert method == "fft"
    with torch.no_grad():
        image = Recon(ReconConfig(method=method))(raw)
    assert image.data.shape[-2:] == (N, N)
    assert image.meta["virtual_lines"].startswith(f"{N} lines of ")
    r = _corr(image.data[0, 0, 0], reference)
    assert r >= 0.95, f"correlation {r:.4f} with the Cartesian reference"
    found = float(image.meta["ghost_delay_us"])
    assert abs(found + delay_us) < 0.25, f"estimated delay {found} µs, the trajectory is off by {delay_us} µs"
    if delay_us:
        before, after = float(image.meta["ghost_gsr_before"]), float(image.meta["ghost_gsr_after"])
        assert after <= before / 2, (before, after)
        with torch.no_grad():
            off = Recon(ReconConfig(method="fft", ghost_correction="none"))(raw)
        assert _corr(off.data[0, 0, 0], reference) < r - 0.05, "without the correction the image is worse"
    else:  # the non-Cartesian path the file took before: no better than the split lines
        with torch.no_grad():
            cg = Recon(ReconConfig(method="cg"))(raw)
        assert "virtual_lines" not in cg.meta
        assert _corr(cg.data[0, 0, 0, :, 1:-1], reference) < r


def test_segments_of_the_adc_rejoin_and_reconstruct_alike(epi: tuple[SingleTrajectory, RawData, torch.Tensor]
                                                         ) -> None:
    """The scanner's twix holds the one ADC as samples/SEGMENT scans: rejoined as the twix reader does, they give
    the same RawData and the same image."""
    w, sim, _ = epi
    encoding: SeqReadouts = read_seq_readouts(w.path)
    data = sim.kdata[:, 0].numpy()
    scans = [data[:, i:i + SEGMENT] for i in range(0, w.samples, SEGMENT)]
    joined, rejoined = _rejoin(scans, encoding.num_samples)
    assert len(scans) == w.samples // SEGMENT > 1 and rejoined == 1
    raw = encoding.rawdata(torch.from_numpy(np.stack(joined, axis=1)), provenance={})
    assert torch.equal(raw.kdata, sim.kdata)
    with torch.no_grad():
        a = Recon(ReconConfig(method="fft", ghost_correction="none"))(raw).data
        b = Recon(ReconConfig(method="fft", ghost_correction="none"))(sim).data
    assert torch.equal(a, b)


# ---- the real single-trajectory EPI (pulseq tutorials; not shipped: skips when absent) -----------------------
def _reference_single_trajectory(dat: Path, seq_path: Path, fov: float, n: int) -> tuple[np.ndarray, float]:
    """Independent recon (twixtools + pypulseq + numpy): the twix segments concatenated; a line is every run of
    samples whose k_y is within 1e-3 steps of an integer step; adjoint DFT of each line with |Δk_x| density
    compensation onto x; odd/even correction by a linear phase in hybrid x-space fitted to the squared phase
    difference of the forward-only and reversed-only images (the branch that makes k-space continuous across
    its centre); FFT along y; RSS. Returns (image, relative k_x shift of the two polarities in grid steps)."""
    with contextlib.redirect_stdout(io.StringIO()):
        meas = twixtools.read_twix(str(dat), verbose=False, parse_pmu=False)[-1]
    data = np.concatenate([np.asarray(m.data) for m in meas["mdb"] if m.is_image_scan()], axis=1)  # (c, samples)
    seq = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.read(str(seq_path))
    k = seq.calculate_kspace()[0]
    assert k.shape[1] == data.shape[1]
    ky = k[1] * fov
    line = np.where(np.abs(ky - np.round(ky)) < 1e-3, np.round(ky).astype(int) + n // 2, -1)
    x = (np.arange(n) - n // 2) * fov / n
    hybrid = np.zeros((data.shape[0], n, n), complex)  # (coils, k_y, x)
    forward = np.zeros(n, bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[-2], line])) != 0)
    for a, b in zip(edges, [*edges[1:], len(ky)], strict=True):
        if line[a] < 0 or b - a < n // 2:
            continue
        kx = k[0, a:b]
        weights = np.abs(np.gradient(kx))
        hybrid[:, line[a]] = np.einsum("cs,sx->cx", data[:, a:b] * weights, np.exp(2j * np.pi * kx[:, None] * x))
        forward[line[a]] = kx[-1] > kx[0]

    def images(h: np.ndarray) -> np.ndarray:
        return np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(h, axes=1), axis=1), axes=1)

    plus = images(np.where(forward[None, :, None], hybrid, 0))
    minus = images(np.where(~forward[None, :, None], hybrid, 0))
    squared = ((plus * minus.conj()) ** 2).sum((0, 1))  # (x,): phase 2·φ(x)
    slope = np.angle((squared[1:] * squared[:-1].conj()).sum()) / 2  # rad per voxel
    xs = np.arange(n) - n // 2
    offset = np.angle((squared * np.exp(-2j * slope * xs)).sum()) / 2
    best, image = -np.inf, np.zeros((n, n))
    for branch in (0.0, np.pi):
        phi = offset + branch + slope * xs
        fixed = np.where(forward[None, :, None], hybrid * np.exp(-0.5j * phi), hybrid * np.exp(0.5j * phi))
        centre = fixed[:, n // 2 - 4:n // 2 + 4]
        coherence = float((centre[:, :-1].conj() * centre[:, 1:]).real.sum())
        if coherence > best:
            best, image = coherence, np.sqrt((np.abs(images(fixed)) ** 2).sum(0))
    return image, slope * n / (2 * np.pi)


def test_real_single_trajectory_epi_against_an_independent_reference() -> None:
    dat, seq_path = shared_data(f"{REAL}.dat"), shared_data(f"{REAL}.seq")
    raw = read_twix(dat, seq_path)
    assert raw.readouts == 1 and int(raw.provenance["adc_segments_rejoined"]) == 1
    assert default_method(raw) == "fft"
    with torch.no_grad():
        image = Recon(ReconConfig(method="fft"))(raw)
    n = raw.header.encoded_matrix[1]
    assert image.data.shape[-2:] == (n, n) and image.meta["virtual_lines"].startswith(f"{n} lines of ")
    reference, shift_steps = _reference_single_trajectory(dat, seq_path, raw.header.encoded_fov[1], n)
    r = _corr(image.data[0, 0, 0], torch.from_numpy(reference))
    assert r >= 0.97, f"correlation {r:.4f}"
    before, after = float(image.meta["ghost_gsr_before"]), float(image.meta["ghost_gsr_after"])
    assert after <= before / 2, (before, after)
    # the odd/even k_x shift of the reference's fit: 2·τ·(flat-top k_x per s), in grid steps
    assert raw.traj is not None
    kx_steps = raw.traj[0, :, 0].double().numpy() * raw.header.encoded_fov[0]
    plateau = float(np.abs(np.diff(kx_steps)).max()) / raw.dwell
    found = 2 * float(image.meta["ghost_delay_us"]) * 1e-6 * plateau
    assert abs(abs(found) - abs(shift_steps)) < 0.15, (found, shift_steps)


# ---- unit properties on small synthetic trajectories ---------------------------------------------------------
FOV = 0.2


def _train(lines: int, per_line: int, blip: int = 2) -> torch.Tensor:
    """(1, samples, 3) 1/m: ``lines`` alternating k_x lines of ``per_line`` on-grid samples at k_y = −lines/2 …,
    joined by ``blip`` samples during which k_y moves one step (and k_x stays)."""
    points = []
    for i in range(lines):
        kx = torch.arange(per_line, dtype=torch.float64) - per_line // 2
        kx = kx if i % 2 == 0 else kx.flip(0)
        ky = torch.full((per_line,), float(i - lines // 2))
        points.append(torch.stack([kx, ky, torch.zeros(per_line)], -1))
        if i < lines - 1:
            frac = (torch.arange(blip, dtype=torch.float64) + 1) / (blip + 1)
            points.append(torch.stack([kx[-1].expand(blip), ky[0] + frac, torch.zeros(blip)], -1))
    return (torch.cat(points) / FOV)[None]


def _raw(traj: torch.Tensor, kdata: torch.Tensor, lines: int) -> RawData:
    n = traj.shape[1]
    h = RawHeader(encoded_fov=(FOV, FOV, 0.005), encoded_matrix=(8, lines, 1), recon_matrix=(8, lines, 1),
                  trajectory="other")
    return RawData(kdata, header=h, traj=traj, center_sample=n // 2, dwell=1e-5)


def test_split_is_differentiable_wrt_kdata() -> None:
    lines = 4
    traj = _train(lines, 8)
    keep = torch.ones(1, dtype=torch.bool)
    kdata = torch.randn(2, 1, traj.shape[1], dtype=torch.complex128, generator=torch.Generator().manual_seed(3))

    def split(k: torch.Tensor) -> torch.Tensor:
        return virtual_lines(_raw(traj, k, lines), k, keep)[1]

    def split_and_regrid(k: torch.Tensor) -> torch.Tensor:
        view, vk, _ = virtual_lines(_raw(traj, k, lines), k, keep)
        return cartesian_view(view, vk, torch.ones(view.readouts, dtype=torch.bool), ghost="none")[1]

    # a line's samples next to a blip sample leave it (k_y moved into or out of them); 6 of 8 stay
    assert split(kdata).shape == (2, lines, 6)
    assert_gradcheck(split, kdata.requires_grad_(True))
    assert_gradcheck(split_and_regrid, kdata)


def test_readouts_that_are_not_lines_are_not_split() -> None:
    keep = torch.ones(3, dtype=torch.bool)
    t = torch.linspace(-1, 1, 64, dtype=torch.float64)
    angles = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    radial = torch.stack([t * angles.cos()[:, None], t * angles.sin()[:, None], 0 * t.expand(3, 64)], -1) * 16 / FOV
    assert find_lines(radial, (FOV, FOV, 0.005), keep) is None
    cartesian = radial.clone()
    cartesian[..., 1] = torch.tensor([-1.0, 0.0, 1.0])[:, None] / FOV
    cartesian[..., 0] = t * 16 / FOV
    assert find_lines(cartesian, (FOV, FOV, 0.005), keep) is None  # line-like already
    assert find_lines(torch.zeros(3, 64, 3, dtype=torch.float64), (FOV, FOV, 0.005), keep) is None  # an FID
    train = _train(4, 8)
    raw = _raw(train, torch.zeros(1, 1, train.shape[1], dtype=torch.complex64), 4)
    view, _, meta = virtual_lines(raw, raw.kdata, torch.zeros(1, dtype=torch.bool))
    assert view is raw and not meta  # nothing kept: nothing split
