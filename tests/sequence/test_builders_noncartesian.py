"""EPI, golden-angle radial and variable-density spiral builders: k-space from the event model, gradient limits,
simulate → recon against a Cartesian GRE of the same contrast, protocol errors, shipped protocols."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.errors import ConfigError
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.builders_noncartesian import GOLDEN_ANGLE_DEG, spiral_plan
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import SpiralProtocol, load_protocol, parse_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin

REPO = Path(__file__).resolve().parents[2]
N = 32
FOV = 0.22  # m, the built-in brain twin's
DK = 1 / FOV
BASE: dict[str, Any] = {"matrix": N, "fov_mm": FOV * 1e3, "slice_mm": 5}
MIN_CORRELATION = 0.95


def _seq(**spec: Any) -> Sequence:
    return build(parse_protocol(BASE | spec), dtype=torch.float64)


def _readouts(seq: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
    """(k (samples, 3) 1/m, time since the repetition's excitation (samples,) s) of every readout."""
    k = seq.kspace().numpy()
    out, at = [], 0
    for r, start, end, _ in seq.readouts():
        times = torch.cumsum(seq[r].event_time, 0)[start:end].numpy()
        out.append((k[at:at + end - start], times))
        at += end - start
    return out


# ---- images ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin() -> Twin:
    return builtin("brain", matrix=N)


def _image(twin: Twin, method: str, **spec: Any) -> np.ndarray:
    raw = simulate(build(parse_protocol(BASE | spec)), twin)
    return Recon(ReconConfig(method=method))(raw).data.detach().abs().squeeze().numpy()  # type: ignore[arg-type]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape == (N, N)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# single shot from equilibrium: the reference's TR is long against every T1 of the twin
EPI_REFERENCE = {"kind": "gre", "te_ms": 30, "tr_ms": 20_000, "flip_angle_deg": 90, "dummies": 0}
IMAGES: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "epi-single-shot-ramp-sampled": ({"kind": "epi", "te_ms": 30}, "fft", EPI_REFERENCE),
    "epi-flat-top": ({"kind": "epi", "te_ms": 30, "ramp_sampling": False, "dwell_us": 5}, "fft", EPI_REFERENCE),
    "epi-2-shots-partial-fourier": (
        {"kind": "epi", "te_ms": 30, "tr_ms": 3000, "shots": 2, "partial_fourier": 0.75, "dummies": 1},
        "fft",
        {"kind": "gre", "te_ms": 30, "tr_ms": 3000, "flip_angle_deg": 90, "dummies": 1, "rf_spoiling_deg": 117},
    ),
    "radial": ({"kind": "radial", "spokes": 51, "dummies": 100}, "cg", {"kind": "gre", "dummies": 100}),
    "spiral": (
        {"kind": "spiral", "interleaves": 8, "te_ms": 2, "tr_ms": 20, "density_k0_fraction": 1.5},
        "cg",
        {"kind": "gre", "te_ms": 2, "tr_ms": 20, "dwell_us": 20, "dummies": 100},
    ),
}


@pytest.mark.parametrize("case", list(IMAGES))
def test_image_matches_cartesian_reference(case: str, twin: Twin) -> None:
    spec, method, reference = IMAGES[case]
    r = _correlation(_image(twin, method, **spec), _image(twin, "fft", **reference))
    assert r >= MIN_CORRELATION, f"{case}: correlation {r:.4f} with the Cartesian GRE reference"


# ---- EPI k-space -------------------------------------------------------------------------------------------------
def test_epi_lines_step_one_over_fov_and_alternate() -> None:
    readouts = _readouts(_seq(kind="epi"))
    assert len(readouts) == N
    for line, (k, _) in enumerate(readouts):
        assert np.allclose(k[:, 1], (line - N // 2) * DK, atol=1e-9), f"line {line} not on k_y = (line − N/2)/FOV"
        direction = np.sign(k[-1, 0] - k[0, 0])
        assert direction == (1 if line % 2 == 0 else -1), f"line {line} runs the wrong way"
        assert np.all(np.diff(k[:, 0]) * direction > 0), "k_x not monotonic along a line"


def test_epi_ramp_samples_follow_the_trapezoid() -> None:
    """Flat top: k_x moves by one constant step ≤ 1/FOV per dwell; ramps: the steps grow linearly (constant slew);
    the samples are symmetric about k_x = 0, which the centre line passes at TE."""
    dwell = 8e-6
    seq = _seq(kind="epi", te_ms=30, dwell_us=8)
    readouts = _readouts(seq)
    k, t = readouts[N // 2]
    steps = np.diff(k[:, 0])
    flat = np.isclose(steps, steps.max(), rtol=1e-9)
    assert flat.sum() >= 2 and steps.max() <= DK * (1 + 1e-9), "k_x steps exceed 1/FOV"
    ramp = steps[: int(np.argmax(flat))]
    assert len(ramp) >= 3, "no samples on the ramp"
    # a sample dwell wholly on the ramp: step = G(t)·dwell grows by slew·dwell² per sample
    second = np.diff(ramp)[1:-1]
    assert np.allclose(second, second[0], rtol=1e-6), "ramp steps not linear in time"
    assert second[0] / dwell**2 <= System.load("generic3t").max_slew * (1 + 1e-9)
    assert np.allclose(k[:, 0], -k[::-1, 0], atol=1e-9 * DK), "samples not symmetric about k_x = 0"
    middle = len(k) // 2
    assert (t[middle - 1] + t[middle]) / 2 == pytest.approx(30e-3, abs=1e-12)
    assert k[middle, 0] == pytest.approx(steps.max() / 2) and t[middle] - t[middle - 1] == pytest.approx(dwell)
    # reversed lines sample the same k_x
    assert np.allclose(np.sort(readouts[N // 2 + 1][0][:, 0]), k[:, 0], atol=1e-9 * DK)


def test_epi_shots_partial_fourier_and_navigators() -> None:
    seq = _seq(kind="epi", te_ms=40, shots=2, partial_fourier=0.75, navigators=True)
    labels = [lab.kspace_encode_step_1 for *_, lab in seq.readouts()]
    # navigators are phase-correction data (ISMRMRD flag 24), so the recon keeps them out of the image
    raw_flags = simulate(seq, builtin("brain", matrix=N)).flags
    assert raw_flags is not None
    navigator = ((raw_flags >> (ismrmrd.ACQ_IS_PHASECORR_DATA - 1)) & 1).bool()
    assert navigator.tolist() == ([True] * 3 + [False] * 12) * 2
    first = N - 24  # 0.75·32 lines acquired: the first 8 (most negative k_y) skipped
    readouts = _readouts(seq)
    per_shot = 3 + 12
    times: dict[int, float] = {}
    for shot in range(2):
        rows = readouts[shot * per_shot:(shot + 1) * per_shot]
        navigators = rows[:3]
        for j, (k, _) in enumerate(navigators):  # three non-phase-encoded lines, alternating
            assert np.allclose(k[:, 1], 0.0, atol=1e-9)
            assert np.sign(k[-1, 0] - k[0, 0]) == (-1) ** j
        lines = labels[shot * per_shot + 3:(shot + 1) * per_shot]
        assert lines == list(range(first + shot, N, 2)), "interleaved lines"
        for line, (k, t) in zip(lines, rows[3:], strict=True):
            assert np.allclose(k[:, 1], (line - N // 2) * DK, atol=1e-9)
            times[line] = float(t[len(t) // 2 - 1] + t[len(t) // 2]) / 2
    # echo-time shifting: a line's time grows linearly with k_y; the centre line at TE
    ordered = np.array([times[line] for line in sorted(times)])
    assert np.allclose(np.diff(ordered), np.diff(ordered)[0], atol=1e-5)
    assert times[N // 2] == pytest.approx(40e-3, abs=1e-12)


# ---- radial ----------------------------------------------------------------------------------------------------
def test_radial_spokes_at_golden_angle_increments() -> None:
    seq = _seq(kind="radial", spokes=20, dummies=3)
    readouts = _readouts(seq)
    assert len(readouts) == 20 and seq.info.trajectory == "radial"
    for n, (k, t) in enumerate(readouts):
        assert len(k) == 2 * N
        direction = math.atan2(k[-1, 1] - k[0, 1], k[-1, 0] - k[0, 0])
        expected = math.radians(n * GOLDEN_ANGLE_DEG)
        assert abs(math.remainder(direction - expected, 2 * math.pi)) < 1e-9, f"spoke {n}"
        radius = np.linalg.norm(k[:, :2], axis=1)
        assert np.allclose(np.diff(k[:, :2], axis=0) @ [math.cos(expected), math.sin(expected)], DK / 2)
        assert radius[N] < 1e-9 * DK and t[N] == pytest.approx(5e-3, abs=1e-12)  # k = 0 at TE
        assert radius.max() == pytest.approx(N / 2 * DK)


# ---- spiral ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("system", ["generic3t", "prisma"])
def test_spiral_within_limits_and_reaches_kmax(system: str) -> None:
    limits = System.load(system)
    seq = _seq(kind="spiral", system=system, interleaves=4, dwell_us=1, density_k0_fraction=0.8, dummies=0)
    raster, per = limits.grad_raster_us * 1e-6, 10  # 1-µs dwells, 10-µs raster
    kmax = N / 2 * DK
    for arm, rep in enumerate(seq):
        start, end = rep.readout_spans()[0]
        gradm = rep.gradm[start:].numpy()
        dt = rep.event_time[start:].numpy()
        k = np.concatenate([[np.zeros(3)], np.cumsum(gradm, 0)])
        elapsed = np.concatenate([[0.0], np.cumsum(dt)])
        arm_end = int(np.argmin(np.abs(elapsed - elapsed[-2])))  # the last event is the rewinder
        at_raster = k[:arm_end + 1:per, :2]
        assert np.allclose(np.diff(elapsed[:arm_end + 1:per]), raster, rtol=1e-9)
        g = np.diff(at_raster, axis=0) / raster
        slew = np.diff(np.concatenate([np.zeros((1, 2)), g, np.zeros((1, 2))]), axis=0) / raster
        assert np.linalg.norm(g, axis=1).max() <= limits.max_grad * (1 + 1e-9)
        assert np.linalg.norm(slew, axis=1).max() <= limits.max_slew * (1 + 1e-9)
        assert np.abs(g).max() >= 0.5 * limits.max_grad or np.abs(slew).max() >= 0.5 * limits.max_slew
        radius = np.linalg.norm(k[1:end - start + 1, :2], axis=1)
        assert radius[0] < 0.01 * DK, f"arm {arm} does not start at k = 0"
        assert kmax * 0.995 <= radius.max() <= kmax * (1 + 1e-9), f"arm {arm} reaches {radius.max() / kmax:.4f}·k_max"


def test_spiral_samples_integrate_the_raster_waveform() -> None:
    """The gradient knots (raster points, linear in between) keep the limits, start and end at 0, and every ADC
    sample's k is their exact integral; arm a is arm 0 turned by 2π·a/interleaves."""
    protocol = parse_protocol(BASE | {"kind": "spiral", "interleaves": 4, "dwell_us": 2.5, "dummies": 0})
    limits = System.load("generic3t")
    assert isinstance(protocol, SpiralProtocol)
    plan = spiral_plan(protocol)
    g, raster = plan.knots, limits.grad_raster_us * 1e-6
    assert np.abs(g[[0, -1]]).max() == 0.0
    assert np.linalg.norm(g, axis=1).max() <= limits.max_grad * (1 + 1e-12)
    assert (np.linalg.norm(np.diff(g, axis=0), axis=1) / raster).max() <= limits.max_slew * (1 + 1e-12)
    # independent integral: the trapezoid rule is exact for a piecewise-linear waveform on a grid holding its knots
    fine = 100
    t = np.arange(len(g) * fine - fine + 1) * raster / fine
    wave = np.stack([np.interp(t, np.arange(len(g)) * raster, g[:, axis]) for axis in range(2)], -1)
    k_fine = np.concatenate([np.zeros((1, 2)), np.cumsum((wave[1:] + wave[:-1]) / 2 * raster / fine, axis=0)])
    readouts = _readouts(build(protocol, dtype=torch.float64))
    k0, times = readouts[0]
    index = np.rint((times - times[0] + 2.5e-6) / (raster / fine)).astype(int)
    assert np.allclose(k0[:, :2], k_fine[index], atol=1e-9 * DK, rtol=0)
    for arm, (k, _) in enumerate(readouts):
        turn = np.exp(2j * np.pi * arm / 4)
        assert np.allclose(k[:, 0] + 1j * k[:, 1], turn * (k0[:, 0] + 1j * k0[:, 1]), atol=1e-9 * DK)


def test_spiral_turn_spacing_follows_the_density() -> None:
    """Consecutive turns of one arm are interleaves·(1 + (k/k0)^p)/FOV apart."""
    arms, k0, p = 2, 0.6 * N / 2 * DK, 3.0
    seq = _seq(kind="spiral", interleaves=arms, density_k0_fraction=0.6, density_power=p, dummies=0, tr_ms=30)
    k, _ = _readouts(seq)[0]
    angle = np.unwrap(np.arctan2(k[:, 1], k[:, 0]))
    radius = np.linalg.norm(k[:, :2], axis=1)
    crossings = np.arange(math.ceil(angle[5] / (2 * math.pi)), math.floor(angle[-1] / (2 * math.pi))) * 2 * math.pi
    r = np.interp(crossings, angle, radius)
    mid = (r[1:] + r[:-1]) / 2
    expected = arms * (1 + (mid / k0) ** p) / FOV
    assert len(r) >= 4
    assert np.allclose(np.diff(r), expected, rtol=0.05), (np.diff(r), expected)
    assert np.diff(r)[-1] > 1.5 * np.diff(r)[0], "not variable density"


# ---- protocol errors and shipped files -------------------------------------------------------------------------
ERRORS = [
    ({"kind": "epi", "te_ms": 2}, "te_ms"),
    ({"kind": "epi", "tr_ms": 20}, "tr_ms"),
    ({"kind": "epi", "dwell_us": 0.5}, "dwell_us"),
    ({"kind": "epi", "partial_fourier": 0.4}, "partial_fourier"),
    ({"kind": "epi", "system": "nosuch"}, "system"),
    ({"kind": "epi", "echo_spacing_ms": 1}, "echo_spacing_ms"),
    ({"kind": "epi", "shots": 40}, "shots"),
    ({"kind": "radial", "te_ms": 0.5}, "te_ms"),
    ({"kind": "radial", "spokes": 0}, "spokes"),
    ({"kind": "spiral", "dwell_us": 10}, "dwell_us"),
    ({"kind": "spiral", "tr_ms": 3}, "tr_ms"),
    ({"kind": "spiral", "te_ms": float("nan")}, "te_ms"),
]


@pytest.mark.parametrize(("spec", "key"), ERRORS)
def test_protocol_errors_are_one_line(spec: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_protocol(BASE | spec, "p.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("p.yaml: ") and f"'{key}'" in message, message


@pytest.mark.parametrize("name", ["epi", "radial", "spiral"])
def test_shipped_protocol_simulates_through_the_cli(name: str, tmp_path: Path) -> None:
    protocol = load_protocol(REPO / "protocols" / f"{name}.yaml")
    assert protocol.kind == name and build(protocol).info.trajectory == name
    out = tmp_path / "x.h5"
    result = CliRunner().invoke(app, ["--quiet", "simulate", "--protocol", str(REPO / "protocols" / f"{name}.yaml"),
                                      "--matrix", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
