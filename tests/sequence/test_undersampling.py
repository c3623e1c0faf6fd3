"""Accelerated Cartesian protocols: the line patterns, their ACS flags, their errors, and SENSE on simulated data."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import numpy as np
import pytest

from mrbridge.errors import ConfigError
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol, parse_protocol
from mrbridge.sequence.undersampling import ACS_FLAGS, Undersampling, acquired_lines, acs_range
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.phantoms import builtin
from tests.helpers import nrmse

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("pattern", ["uniform", "variable_density", "poisson_disc"])
@pytest.mark.parametrize("r", [2, 4, 6, 8])
def test_patterns_hold_the_acs_centre_and_the_budget(pattern: str, r: int) -> None:
    spec = Undersampling(acceleration=r, acs_lines=8, pattern=pattern, seed=3)  # type: ignore[arg-type]
    lines, acs = acquired_lines(64, spec)
    assert acs == set(range(28, 36)) and acs <= set(lines) and 32 in lines
    assert lines == sorted(set(lines)) and all(0 <= i < 64 for i in lines)
    if pattern == "uniform":  # every R-th line from the centre, plus the ACS lines
        assert set(lines) == acs | set(range(32 % r, 64, r))
    else:
        assert len(lines) == round(64 / r)
    assert acquired_lines(64, spec) == (lines, acs)  # seeded


def test_random_patterns_depend_on_the_seed_and_favour_the_centre() -> None:
    def mean_distance(pattern: str, seed: int) -> float:
        lines, acs = acquired_lines(64, Undersampling(acceleration=4, pattern=pattern, seed=seed))  # type: ignore
        return float(np.mean([abs(i - 32) for i in lines if i not in acs]))

    a = acquired_lines(64, Undersampling(acceleration=4, seed=0))[0]
    b = acquired_lines(64, Undersampling(acceleration=4, seed=1))[0]
    assert a != b
    outside = float(np.mean([abs(i - 32) for i in range(64) if i not in acs_range(64, 8)]))  # uniformly drawn
    assert np.mean([mean_distance("variable_density", s) for s in range(20)]) < 0.8 * outside


def test_poisson_disc_lines_keep_their_distance() -> None:
    for seed in range(5):
        lines, acs = acquired_lines(64, Undersampling(acceleration=4, pattern="poisson_disc", seed=seed))
        outer = [i for i in lines if i not in acs]
        gaps = np.diff(sorted([*outer, min(acs), max(acs)]))
        assert gaps.min() >= 2  # never two neighbouring lines outside the centre (d ≥ 1 + a·u, a > 0 at R = 4)


def test_gre_r4_protocol_flags_its_acs_lines() -> None:
    protocol = load_protocol(REPO / "protocols" / "gre_r4.yaml")
    seq = build(protocol)
    labels = [lab for rep in seq.repetitions for lab in rep.readouts]
    lines, acs = acquired_lines(64, protocol.undersampling)  # type: ignore[union-attr]
    assert [lab.kspace_encode_step_1 for lab in labels] == lines and len(lines) == 16
    assert [lab.kspace_encode_step_1 for lab in labels if lab.flags & ACS_FLAGS] == sorted(acs)
    assert ACS_FLAGS == 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING - 1)


def test_acs_lines_beyond_the_budget_are_a_config_error() -> None:
    data = {"kind": "gre", "matrix": 32, "undersampling": {"acceleration": 8, "acs_lines": 8}}
    with pytest.raises(ConfigError, match=r"undersampling.acs_lines.*8.*≤ matrix/acceleration = 4"):
        parse_protocol(data, "p.yaml")
    with pytest.raises(ConfigError, match="undersampling"):
        parse_protocol({"kind": "gre", "undersampling": {"acceleration": 4, "pattern": "spiral"}}, "p.yaml")


def test_an_explicit_pattern_acquires_its_lines_and_the_acs_lines() -> None:
    data = {"kind": "gre", "matrix": 32, "undersampling": {"pattern": "explicit", "acs_lines": 4, "lines": [3, 29, 0]}}
    protocol = parse_protocol(data, "p.yaml")
    lines, acs = acquired_lines(32, protocol.undersampling)  # type: ignore[union-attr]
    assert lines == [0, 3, 14, 15, 16, 17, 29] and acs == {14, 15, 16, 17}
    assert [lab.kspace_encode_step_1 for rep in build(protocol) for lab in rep.readouts] == lines
    for bad in ([3, 3], [32], []):
        with pytest.raises(ConfigError, match=r"undersampling.lines.*distinct lines in \[0, 31\]"):
            parse_protocol({**data, "undersampling": {"pattern": "explicit", "lines": bad}}, "p.yaml")
    with pytest.raises(ConfigError, match=r"undersampling.lines.*unless pattern is 'explicit'"):
        parse_protocol({**data, "undersampling": {"pattern": "uniform", "lines": [1]}}, "p.yaml")


@pytest.mark.slow
def test_sense_unfolds_a_simulated_r3_gre() -> None:
    """A 1° flip without RF spoiling: each line sees nearly unsaturated magnetisation whenever it is acquired, so
    the accelerated and the full acquisition measure the same k-space (RF-spoiled GRE lines depend on their
    position in the train: a reordered acquisition differs by ~10 % per line on the brain's long-T2 CSF)."""
    n = 32
    twin = builtin("brain", matrix=n, coils=8)
    base = {"kind": "gre", "matrix": n, "dummies": 0, "te_ms": 4, "tr_ms": 10, "flip_angle_deg": 1,
            "rf_spoiling_deg": 0}
    raws = {}
    for name, us in (("full", {"acceleration": 1, "acs_lines": n}),
                     ("fast", {"acceleration": 3, "acs_lines": 8, "pattern": "uniform"})):
        seq = build(parse_protocol({**base, "undersampling": us}, name))
        raws[name] = to_rawdata(seq, simulate_graph(seq, twin), noise=1e-3, seed=1)
    ref = Recon(ReconConfig(method="sense", iterations=20))(raws["full"]).data.abs()
    sense = Recon(ReconConfig(method="sense", iterations=20, tikhonov=1e-3))(raws["fast"]).data.abs()
    zero_filled = Recon(ReconConfig(method="fft"))(raws["fast"]).data.abs()
    scale = float((ref * zero_filled).sum() / zero_filled.square().sum())
    e_sense, e_zf = nrmse(sense, ref), nrmse(scale * zero_filled, ref)
    assert e_sense < 0.15 and e_sense < 0.75 * e_zf, (e_sense, e_zf)  # 8 ACS lines limit the sensitivities


def test_a_smaller_matrix_keeps_the_acs_share() -> None:
    seq = build(load_protocol(REPO / "protocols" / "gre_r4.yaml"), matrix=16)
    labels = [lab for rep in seq.repetitions for lab in rep.readouts]
    assert len(labels) == 4  # 16 / R
    assert [lab.kspace_encode_step_1 for lab in labels if lab.flags & ACS_FLAGS] == [7, 8]  # 8 of 64 → 2 of 16


@pytest.mark.parametrize("pattern", ["uniform", "variable_density", "poisson_disc"])
@pytest.mark.parametrize(("order", "te_ms"), [("centric", 80), ("centric", 10), ("linear", None)])
def test_an_undersampled_tse_acquires_the_pattern_in_whole_trains(pattern: str, order: str, te_ms: int | None) -> None:
    spec = {"acceleration": 4, "acs_lines": 8, "pattern": pattern, "seed": 2}
    protocol = parse_protocol({"kind": "tse", "matrix": 64, "echo_train_length": 8, "order": order, "te_ms": te_ms,
                               "tr_ms": 1000, "undersampling": spec}, "tse.yaml")
    seq = build(protocol)
    lines, acs = acquired_lines(64, protocol.undersampling)  # type: ignore[arg-type, union-attr]
    labels = [lab for rep in seq.repetitions for lab in rep.readouts]
    assert sorted(lab.kspace_encode_step_1 for lab in labels) == lines  # each acquired line once
    assert {lab.kspace_encode_step_1 for lab in labels if lab.flags & ACS_FLAGS} == acs
    assert all(lab.flags == 0 for lab in labels if lab.kspace_encode_step_1 not in acs)
    centre = next(lab for lab in labels if lab.kspace_encode_step_1 == 32)
    assert centre.segment == protocol.effective_echo  # type: ignore[union-attr]
    shots = sum(rep.pulse.usage == "excitation" for rep in seq.repetitions)
    least = -(-len(lines) // 8)  # whole trains; linear may need one more to put the centre on the middle echo
    assert len(seq.repetitions) == 9 * shots and least <= shots <= least + (order == "linear")


def test_the_tse_r4_protocol_flags_its_acs_lines() -> None:
    protocol = load_protocol(REPO / "protocols" / "tse_r4.yaml")
    seq = build(protocol)
    labels = [lab for rep in seq.repetitions for lab in rep.readouts]
    lines, acs = acquired_lines(64, protocol.undersampling)  # type: ignore[arg-type, union-attr]
    assert sorted(lab.kspace_encode_step_1 for lab in labels) == lines and len(lines) == 22
    assert sorted(lab.kspace_encode_step_1 for lab in labels if lab.flags & ACS_FLAGS) == sorted(acs)
    assert sum(rep.pulse.usage == "excitation" for rep in seq.repetitions) == 3  # 22 lines in trains of 8


@pytest.mark.slow
def test_sense_unfolds_the_simulated_tse_r4() -> None:
    """The brain twin, 8 coils: SENSE of tse_r4 against SENSE of the same TSE fully sampled (all lines calibrate).
    Outer lines fall on other echoes than in the full scan (other T2 weighting), part of the difference."""
    twin = builtin("brain", matrix=64, coils=8)
    accelerated = load_protocol(REPO / "protocols" / "tse_r4.yaml")
    full = accelerated.model_copy(update={"undersampling": Undersampling(acceleration=1, acs_lines=64)})
    raws = {}
    for name, protocol in (("full", full), ("r4", accelerated)):
        seq = build(protocol)
        raws[name] = to_rawdata(seq, simulate_graph(seq, twin), noise=1e-3, seed=1)
    ref = Recon(ReconConfig(method="sense"))(raws["full"]).data.abs()
    sense = Recon(ReconConfig(method="sense"))(raws["r4"]).data.abs()  # as `mrbridge recon --method sense`
    tuned = Recon(ReconConfig(method="sense", iterations=20, tikhonov=1e-2))(raws["r4"]).data.abs()
    zero_filled = Recon(ReconConfig(method="fft"))(raws["r4"]).data.abs()
    scale = float((ref * zero_filled).sum() / zero_filled.square().sum())
    e_sense, e_tuned, e_zf = nrmse(sense, ref), nrmse(tuned, ref), nrmse(scale * zero_filled, ref)
    assert e_sense < 0.23 and e_tuned < 0.2 and e_tuned < 0.8 * e_zf, (e_sense, e_tuned, e_zf)  # 0.21, 0.18, 0.25
