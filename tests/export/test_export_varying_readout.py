"""Export of ADC runs whose samples have different moments (one learned moment per sample, as MRzero optimises).

The exporter plays them as a piecewise-linear readout gradient; the file's k at every sample (pypulseq's own
``calculate_kspace``), its safety, an import back and the simulated signal must all equal the model's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from mrbridge.errors import ConfigError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq, pns_slew, system_opts
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import GreProtocol
from mrbridge.sequence.safety import check_safety
from mrbridge.system import System
from tests.export.common import kspace_error_in_steps, read_back
from tests.export.handmade import gre
from tests.helpers import nrmse


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load("prisma")


def _wobbled(seq: Sequence, amplitude: float = 0.4, cycles: int = 2) -> Sequence:
    """Every ADC sample's moment varies: x = Δk·(1 + A·sin), y = Δk·A·cos, a few cycles per readout, a different
    phase per repetition; the run's total moment (and so k after it) is unchanged."""
    dk = 1 / seq.info.fov[0]
    reps = []
    for r, rep in enumerate(seq):
        g = rep.gradm.clone()
        idx = torch.nonzero(rep.adc_usage).flatten()
        ph = 2 * math.pi * cycles * torch.arange(len(idx), dtype=torch.float64) / len(idx) + 0.3 * r
        g[idx, 0] = (dk * (1 + amplitude * torch.sin(ph))).to(g.dtype)
        g[idx, 1] = (dk * amplitude * torch.cos(ph)).to(g.dtype)
        reps.append(dataclasses.replace(rep, gradm=g))
    return Sequence(reps, seq.info)


@pytest.fixture(scope="module")
def wobbled_gre() -> Sequence:
    return _wobbled(build(GreProtocol(matrix=16, dummies=0)))


def test_varying_readout_keeps_k_at_every_sample(tmp_path, prisma, wobbled_gre) -> None:
    result = export_seq(wobbled_gre, prisma, path=tmp_path / "wobble.seq")
    assert result.changes == []  # the GRE's timing holds the piecewise readout as it is
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    # k at every ADC sample: pypulseq's calculate_kspace of the written file against the model
    back = read_back(tmp_path / "wobble.seq")
    assert kspace_error_in_steps(back, result.sequence).max() < 1e-3
    torch.testing.assert_close(result.sequence.kspace(), wobbled_gre.kspace())
    # the readout really is piecewise linear: one flat level per sample, several distinct levels
    readout = next(b for b in map(back.get_block, back.block_events) if b.adc is not None)
    levels = np.unique(np.round(readout.gx.waveform, 3))
    assert len(levels) > 8
    report = check_safety(tmp_path / "wobble.seq", prisma)
    assert report.passed, report.summary()


def test_varying_readout_round_trip_simulates_alike(tmp_path, prisma, wobbled_gre) -> None:
    bloch = pytest.importorskip("mrbridge.sim.bloch")
    phantoms = pytest.importorskip("mrbridge.twin.phantoms")
    export_seq(wobbled_gre, prisma, path=tmp_path / "rt.seq")
    imported = import_seq(tmp_path / "rt.seq")
    steps = (imported.kspace() - wobbled_gre.kspace()) * torch.tensor(wobbled_gre.info.fov)
    assert steps.abs().max() < 1e-3
    twin = phantoms.builtin("brain", matrix=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = bloch.simulate_bloch(wobbled_gre, twin, spins=1024)
        signal = bloch.simulate_bloch(imported, twin, spins=1024)
    assert nrmse(signal, reference) < 0.01
    # the wobble matters: the constant readout's signal differs from the wobbled one by far more than 1 %
    plain = bloch.simulate_bloch(build(GreProtocol(matrix=16, dummies=0)), twin, spins=1024)
    assert nrmse(plain, reference) > 0.05


def test_too_steep_a_step_is_refused_naming_the_repetition(prisma) -> None:
    seq = build(GreProtocol(matrix=16, dummies=0))
    rep = seq[3]
    g = rep.gradm.clone()
    sample = int(torch.nonzero(rep.adc_usage).flatten()[8])
    g[sample, 0] += 60.0  # 1/m: a 30-mT/m step within one 50-µs dwell
    reps = list(seq)
    reps[3] = dataclasses.replace(rep, gradm=g)
    with pytest.raises(ConfigError, match=r"repetition 3, events 1–16: .* too fast .* PNS-safe limit"):
        export_seq(Sequence(reps, seq.info), prisma)


def test_a_step_beyond_the_piecewise_limit_is_played_and_three_times_it_is_refused(prisma) -> None:
    """A readout that steps once by ΔG (then stays): the per-window piecewise design (ramp within one dwell less one
    gradient raster) plays at most the ΔG with ΔG/τ = pns_slew(ΔG); the smooth design (or, when that is a little
    too steep, the one of least peak slew) plays 1.02× and 2× that within slew and PNS, and refuses 3×."""
    opts = system_opts(prisma)
    dwell, tau = 50e-6, 40e-6  # the longest transition on the 10-µs raster
    seq = gre(8, dwell=dwell)
    first, j = 1, 4  # the ADC run starts at event 1; the step is in its fifth window
    base = float(seq[0].gradm[first, 0]) / dwell  # Hz/m
    for factor, ok in ((1.02, True), (2.0, True), (3.0, False)):
        step = 1.0
        for _ in range(50):  # the largest step ΔG with ΔG/τ ≤ pns_slew(ΔG)
            step = pns_slew(step, opts, prisma.iec) * tau * factor
        g = seq[0].gradm.clone()
        # window j ramps base → base + ΔG in τ and stays: area (base + ΔG)·D − ΔG·τ/2; later windows flat
        g[first + j, 0] = (base + step) * dwell - step * tau / 2
        g[first + j + 1:first + 8, 0] = (base + step) * dwell
        reps = list(seq)
        reps[0] = dataclasses.replace(seq[0], gradm=g.to(torch.float64))
        stepped = Sequence(reps, seq.info)
        if ok:
            result = export_seq(stepped, prisma)
            assert kspace_error_in_steps(result.pulseq, stepped).max() < 1e-3
            report = check_safety(result.pulseq, prisma)
            assert report.passed, report.summary()
        else:
            with pytest.raises(ConfigError, match=r"repetition 0, events 1–8: .* too fast"):
                export_seq(stepped, prisma)


def test_dwell_off_the_gradient_raster_is_exported(prisma) -> None:
    """A 25-µs dwell (2.5 gradient rasters): the knots stay on the raster, the windows between them."""
    seq = _wobbled(gre(8, dwell=25e-6))
    result = export_seq(seq, prisma)
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    assert kspace_error_in_steps(result.pulseq, result.sequence).max() < 1e-3


def test_unequal_dwells_are_refused(prisma) -> None:
    seq = gre(8)
    t = seq[2].event_time.clone()
    t[3] *= 1.5
    reps = list(seq)
    reps[2] = dataclasses.replace(seq[2], event_time=t)
    with pytest.raises(ConfigError, match="repetition 2, events 1–8: an ADC run must have equal durations"):
        export_seq(Sequence(reps, seq.info), prisma)
