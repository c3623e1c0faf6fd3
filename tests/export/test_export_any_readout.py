"""Export of any readout: ramp-sampled EPI and spirals, built here from the Sequence model directly (one event per
ADC sample, its moment the integral of a continuous gradient over its dwell), become extended-trapezoid gradients
on the gradient raster whose k at every sample (pypulseq's ``calculate_kspace`` of the written file) is the
model's; the safety checks see the real waveforms; importing the file back simulates like the model.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pypulseq as pp
import pytest
import torch

from mrbridge.errors import ConfigError
from mrbridge.sequence.export import export_seq, system_opts
from mrbridge.sequence.export_readout import design_readout
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Pulse, PulseShape, ReadoutLabels, Repetition, Sequence, SequenceInfo
from mrbridge.sequence.safety import check_safety
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin
from tests.export.common import kspace_error_in_steps, read_back
from tests.export.handmade import gre
from tests.helpers import nrmse

FOV = 0.2  # m
N = 32


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load("prisma")


def _trapezoid_area(t: np.ndarray, rise: float, flat: float, amp: float) -> np.ndarray:
    """∫₀ᵗ of a trapezoid (ramp ``rise``, flat ``flat``, ramp ``rise``) of amplitude ``amp``, at times ``t``."""
    t = np.clip(t, 0.0, 2 * rise + flat)
    up = np.minimum(t, rise)
    area = 0.5 * amp * up**2 / rise
    area += amp * np.clip(t - rise, 0.0, flat)
    down = np.clip(t - rise - flat, 0.0, rise)
    return area + amp * (down - 0.5 * down**2 / rise)


def ramp_sampled_epi(n: int = N, *, dwell: float = 12e-6, rise: float = 100e-6, flat: float = 200e-6,
                     gap: float = 120e-6, te: float = 12e-3) -> Sequence:
    """Single-shot blipped EPI, n lines of n samples spread over the whole readout trapezoid (ramps included).

    Line l's x trapezoid (polarity (−1)^l, area n·Δk) lasts 2·rise + flat; its n samples of one dwell are centred
    on it, so the first and last few lie on the ramps (their moments smaller). Between lines one event holds the
    ramp ends outside the samples and the y blip (Δk).
    """
    dk = 1 / FOV
    total = 2 * rise + flat
    amp = n * dk / (rise + flat)  # Hz/m: area n·Δk
    span = n * dwell
    head = (total - span) / 2  # unsampled ramp at each end of a line
    edges = head + dwell * np.arange(n + 1)
    sample_moments = np.diff(_trapezoid_area(edges, rise, flat, amp))  # (n,) for polarity +1
    ramp_end = float(_trapezoid_area(np.array([head]), rise, flat, amp)[0])  # each unsampled end
    times: list[float] = []
    moments: list[list[float]] = []
    adc: list[bool] = []
    # prephaser: x to the line's start (−n/2·Δk minus the first unsampled ramp), y to −n/2·Δk
    centre = n // 2 * (gap + total) + total / 2  # from the first line's start to k = 0
    times.append(te - centre)
    moments.append([-(n // 2) * dk, -(n // 2) * dk, 0.0])
    adc.append(False)
    for line in range(n):
        sign = 1.0 if line % 2 == 0 else -1.0
        if line:
            times.append(gap + 2 * head)
            moments.append([(-sign) * ramp_end + sign * ramp_end, dk, 0.0])
            adc.append(False)
        else:
            times[-1] += head
            moments[-1][0] += ramp_end
        times.extend([dwell] * n)
        moments.extend([[sign * m, 0.0, 0.0] for m in sample_moments])
        adc.extend([True] * n)
    times.append(head + 3e-3)  # the last ramp end, then a spoiler
    moments.append([(-1.0 if n % 2 == 0 else 1.0) * ramp_end + 4 * n * dk, 0.0, 4 * n * dk])
    adc.append(False)
    labels = [ReadoutLabels(kspace_encode_step_1=line) for line in range(n)]
    pulse = Pulse(torch.tensor(math.radians(90.0)), torch.tensor(math.pi / 2), shape=PulseShape(duration=2e-3))
    rep = Repetition(pulse,
                     torch.tensor(times, dtype=torch.float64), torch.tensor(moments, dtype=torch.float64),
                     torch.tensor(adc), torch.zeros(len(times), dtype=torch.float64), labels)
    return Sequence([rep], SequenceInfo(name="epi-ramp", fov=(FOV, FOV, 0.005), matrix=(n, n, 1), trajectory="epi",
                                        te=te, tr=sum(times), flip_angle_deg=90.0))


def spiral(n: int = N, *, interleaves: int = 2, dwell: float = 4e-6, duration: float = 8e-3, tr: float = 50e-3,
           flip_deg: float = 30.0, lead: float = 2e-3) -> Sequence:
    """Archimedean spiral out, ``interleaves`` rotated copies; each sample's moment is the difference of the
    analytic k(t) = k_max·τ·e^{i(2π·turns·τ + θ)} (τ = t/duration) between its window's ends: the model of a
    smooth gradient, not one on any raster."""
    dk = 1 / FOV
    kmax = n / 2 * dk
    turns = kmax / (interleaves * dk)  # Nyquist between the turns of all interleaves
    samples = round(duration / dwell)
    tau = np.arange(samples + 1) / samples
    reps = []
    for i in range(interleaves):
        theta = 2 * math.pi * i / interleaves
        k = kmax * tau * np.exp(1j * (2 * math.pi * turns * tau + theta))
        m = np.diff(k)
        times = [lead] + [dwell] * samples + [tr - lead - samples * dwell]
        moments = ([[0.0, 0.0, 0.0]] + [[float(v.real), float(v.imag), 0.0] for v in m]
                   + [[-float(k[-1].real) + 2 * n * dk, -float(k[-1].imag), 4 * n * dk]])
        adc = [False] + [True] * samples + [False]
        phase = math.radians(117.0 * i * (i + 1) / 2) % (2 * math.pi)
        reps.append(Repetition(Pulse(torch.tensor(math.radians(flip_deg)), torch.tensor(phase)),
                               torch.tensor(times, dtype=torch.float64), torch.tensor(moments, dtype=torch.float64),
                               torch.tensor(adc), torch.full((len(times),), phase, dtype=torch.float64),
                               [ReadoutLabels(kspace_encode_step_1=i)]))
    return Sequence(reps, SequenceInfo(name="spiral", fov=(FOV, FOV, 0.005), matrix=(n, n, 1), trajectory="spiral",
                                       te=lead, tr=tr, flip_angle_deg=flip_deg))


def _exported(seq: Sequence, system: System, path) -> tuple[object, float]:
    """Export, check Pulseq timing and the file's k at every sample; returns the result and the k error (steps)."""
    result = export_seq(seq, system, path=path)
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    error = float(kspace_error_in_steps(read_back(path), result.sequence).max())
    assert error < 1e-3
    report = check_safety(path, system)
    assert report.passed, report.summary()
    return result, error


def _simulates_alike(seq: Sequence, path) -> float:
    twin = builtin("brain", matrix=N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = simulate(seq, twin).kdata
        signal = simulate(import_seq(path), twin).kdata
    return float(nrmse(signal, reference))


@pytest.mark.parametrize(("dwell", "gap", "rise", "flat"), [(12e-6, 120e-6, 100e-6, 200e-6),
                                                          (4e-6, 60e-6, 140e-6, 60e-6)], ids=["12us", "4us-tight"])
def test_ramp_sampled_epi_exports_with_k_and_timing_of_the_model(tmp_path, prisma, dwell, gap, rise, flat) -> None:
    """The lines and blips are one smooth train: the gradient runs on through the blocks between the ADC blocks
    (joined at non-zero amplitudes), so even a 60-µs blip gap, too short for two ADC dead times and ramps to zero
    and back, keeps the model's timing."""
    seq = ramp_sampled_epi(dwell=dwell, gap=gap, rise=rise, flat=flat)
    result, _ = _exported(seq, prisma, tmp_path / "epi.seq")
    # at most the first and last events move onto the block raster (by < 10 µs); every line and blip keeps its time
    assert {c.event for c in result.changes} <= {0, len(seq[0].event_time) - 1}
    assert all(abs(c.new - c.old) < 10e-6 for c in result.changes)
    back = read_back(tmp_path / "epi.seq")
    blocks = [back.get_block(b) for b in back.block_events]
    readouts = [b for b in blocks if b.adc is not None]
    assert len(readouts) == N
    # the x gradient is non-zero where the ADC blocks meet the blocks between them
    joints = [float(b.gx.first) for b in blocks if b.gx is not None and b.gx.type == "grad" and b.adc is None]
    assert sum(abs(v) > 1e3 for v in joints) >= N - 1
    # samples on the ramps: at the first sample the played x gradient is below the flat top
    first = readouts[0]
    t_first = first.adc.delay + 0.5 * first.adc.dwell
    g_first = float(np.interp(t_first, first.gx.tt, first.gx.waveform))
    assert 0 < g_first < 0.9 * float(np.abs(first.gx.waveform).max())
    assert _simulates_alike(seq, tmp_path / "epi.seq") < 0.01


def test_two_interleave_spiral_with_a_dwell_below_the_gradient_raster(tmp_path, prisma) -> None:
    seq = spiral()
    result, _ = _exported(seq, prisma, tmp_path / "spiral.seq")
    assert result.changes == []
    assert _simulates_alike(seq, tmp_path / "spiral.seq") < 0.01
    # the spiral matters: a constant-moment readout of the same samples simulates very differently
    twin = builtin("brain", matrix=N)
    flat = _flattened(seq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert nrmse(simulate(flat, twin).kdata, simulate(seq, twin).kdata) > 0.2


def _flattened(seq: Sequence) -> Sequence:
    reps = []
    for rep in seq:
        g = rep.gradm.clone()
        adc = rep.adc_usage
        g[adc] = g[adc].mean(dim=0)
        reps.append(dataclasses.replace(rep, gradm=g))
    return Sequence(reps, seq.info)


def test_learned_per_sample_moments_on_a_dwell_off_the_raster(tmp_path, prisma) -> None:
    """Arbitrary smooth per-sample moments (a random low-pass wobble on x and y) at a 25-µs dwell."""
    rng = np.random.default_rng(3)
    seq = spiral(interleaves=1, dwell=25e-6, duration=4e-3)
    rep = seq[0]
    g = rep.gradm.clone()
    idx = torch.nonzero(rep.adc_usage).flatten()
    t = np.arange(len(idx)) / len(idx)
    for axis in (0, 1):
        wobble = sum(rng.normal() * np.sin(2 * math.pi * (f * t + rng.random())) for f in range(1, 6))
        g[idx, axis] = torch.tensor(5.0 * (0.5 + 0.3 * wobble), dtype=g.dtype)  # 1/m per 25 µs
    learned = Sequence([dataclasses.replace(rep, gradm=g)], seq.info)
    _, error = _exported(learned, prisma, tmp_path / "learned.seq")
    assert error < 1e-3


def test_a_staircase_on_a_fine_dwell_is_refused_naming_the_k_error(prisma) -> None:
    """Moments of a gradient constant over each 10-µs raster (k linear in between), sampled every 2 µs: no
    gradient a scanner plays (linear between raster points) meets k to 1e-3 of a k-step at every sample."""
    seq = spiral(interleaves=1, dwell=2e-6, duration=4e-3)
    rep = seq[0]
    idx = torch.nonzero(rep.adc_usage).flatten()
    steps = len(idx) // 5
    g = rep.gradm.clone()
    levels = g[idx].reshape(steps, 5, 3).sum(dim=1) / 5  # one level per raster interval
    g[idx] = levels.repeat_interleave(5, dim=0)
    stair = Sequence([dataclasses.replace(rep, gradm=g)], seq.info)
    with pytest.raises(ConfigError, match=r"repetition 0, events 1–2000: .* k is off by .* 1/m"):
        export_seq(stair, prisma)


def test_too_strong_or_too_fast_a_readout_is_refused(prisma) -> None:
    seq = spiral(interleaves=1, dwell=25e-6, duration=4e-3)
    rep = seq[0]
    g = rep.gradm.clone()
    idx = torch.nonzero(rep.adc_usage).flatten()
    wobble = torch.sin(2 * math.pi * torch.arange(len(idx), dtype=g.dtype) / len(idx))
    g[idx, 0] = 90e-3 * prisma.gamma_hz_per_t * 25e-6 * (1 + 0.05 * wobble)  # about 90 mT/m
    g[idx, 1] = 0.0
    strong = Sequence([dataclasses.replace(rep, gradm=g)], seq.info)
    with pytest.raises(ConfigError, match=r"repetition 0, events 1–160: readout gradient .* on x exceeds max_grad"):
        export_seq(strong, prisma)
    # a spiral in 4 ms instead of 8 (4× the slew) at a 10-µs dwell (k exact: as many knots as samples)
    with pytest.raises(ConfigError, match=r"repetition 0, events 1–400: .* too fast .* T/m/s; the PNS-safe limit"):
        export_seq(spiral(interleaves=1, dwell=10e-6, duration=4e-3), prisma)


def test_safety_sees_a_ramp_made_of_many_raster_pieces(prisma) -> None:
    """A 0 → 40 mT/m ramp in 200 µs as one trapezoid ramp and as 20 linear 10-µs pieces (an extended trapezoid):
    the IEC dB/dt check gives both the same figure (one ramp, not twenty short ones)."""
    opts = system_opts(prisma)
    amp = 40e-3 * prisma.gamma_hz_per_t
    figures = []
    for pieces in (1, 20):
        seq = pp.Sequence(system=opts)
        times = np.concatenate([np.linspace(0, 200e-6, pieces + 1), [600e-6, 800e-6]])
        amps = np.concatenate([np.linspace(0, amp, pieces + 1), [amp, 0.0]])
        seq.add_block(pp.make_extended_trapezoid(channel="x", times=times, amplitudes=amps, system=opts))
        pns = next(c for c in check_safety(seq, prisma).checks if c.name.startswith("PNS"))
        figures.append(pns.value)
    assert figures[1] == pytest.approx(figures[0], rel=1e-6)
    assert figures[0] > 50  # 200 T/m/s over 40 mT/m: well above a 10-µs piece's own figure


def test_slew_fraction_lengthens_ramps_and_still_passes(tmp_path, prisma) -> None:
    seq = gre(16)
    full = export_seq(seq, prisma)
    half = export_seq(seq, prisma, slew_fraction=0.5, path=tmp_path / "half.seq")
    ok, errors = half.pulseq.check_timing()
    assert ok, errors[:3]
    assert kspace_error_in_steps(read_back(tmp_path / "half.seq"), half.sequence).max() < 1e-3

    def ramps(result) -> list[float]:
        out = []
        for block in map(result.pulseq.get_block, result.pulseq.block_events):
            for g in (block.gx, block.gy, block.gz):
                if g is not None and g.type == "trap":
                    out.append(g.rise_time)
        return out

    # no ramp is shorter, together they are much longer (a trapezoid's by 2×, a triangle's by √2, to the raster),
    # and the steepest slew is about half
    r_half, r_full = np.array(ramps(half)), np.array(ramps(full))
    assert (r_half >= r_full - 1e-9).all() and r_half.sum() > 1.3 * r_full.sum()

    def peak_slew(result) -> float:
        return max(c.value for c in check_safety(result.pulseq, prisma).checks if c.name.startswith("slew"))

    assert peak_slew(half) < 0.55 * peak_slew(full)
    assert check_safety(tmp_path / "half.seq", prisma).passed
    with pytest.raises(ConfigError, match="slew_fraction = 0"):
        export_seq(seq, prisma, slew_fraction=0.0)


def test_least_peak_design_plays_a_lone_blip_as_the_triangle() -> None:
    """Between two stretches of samples that hold k (zero moments) a 60-µs gap must move k_y by A: the triangle
    over the gap (slew 4A/T²) does it; the least-peak-slew design is no steeper (measured 0.74×: it may also use
    the sample windows, whose moments only need to vanish, not the gradient) and the smooth (reweighted
    least-squares) design no less steep than it; both hold k at every sample."""
    raster, area, gap = 10e-6, 5.0, 60e-6
    durations = np.array([raster] * 10 + [gap] + [raster] * 10)
    moments = np.zeros((21, 3))
    moments[10, 1] = area
    sampled = np.array([True] * 10 + [False] + [True] * 10)
    slopes = {}
    for least_peak in (False, True):
        wave = design_readout(durations, moments, sampled, 20e-6, raster, 2, 8e9, 1e-3, least_peak)
        assert wave.k_error.max() < 1e-3
        slopes[least_peak] = float(np.abs(np.diff(wave.amplitudes[:, 1])).max()) / raster
    assert 0.5 * 4 * area / gap**2 < slopes[True] <= 4 * area / gap**2 * (1 + 1e-6)
    assert slopes[False] >= slopes[True] * (1 - 1e-6)
