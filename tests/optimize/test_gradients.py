"""Losses against known values, and gradients from the loss to flip angles and moments (vs finite differences)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
import torch

from mrbridge.optimize import losses
from mrbridge.optimize.data import TwinSet
from mrbridge.optimize.model import JointModel
from mrbridge.optimize.parametrize import SequenceParameters, build_template
from mrbridge.optimize.task import FlipAngleParam, GradmParam, TimeParam, parse_task
from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import GreProtocol, IrGreProtocol
from mrbridge.system import System
from tests.optimize.tasks import gre_from_zero


def test_image_losses_known_values() -> None:
    x = torch.zeros(2, 16, 16)
    y = torch.full((2, 16, 16), 0.5)
    assert float(losses.mse(x, y)) == pytest.approx(0.25)
    assert float(losses.l1(x, y)) == pytest.approx(0.5)
    assert float(losses.psnr(x, y)) == pytest.approx(10 * math.log10(1 / 0.25))
    assert float(losses.nrmse(x, y)) == pytest.approx(1.0)
    img = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert float(losses.ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    assert float(losses.ssim(img, 1 - img)) < 0  # anti-correlated structure
    noisy = img + 0.05 * torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(1))
    assert 0.5 < float(losses.ssim(noisy, img)) < 1.0
    scaled = losses.fit_scale(3 * img.to(torch.complex64), img.to(torch.complex64))
    assert torch.allclose(scaled.real, img, atol=1e-5)


def test_ssim_gradcheck() -> None:
    x = torch.rand(1, 12, 12, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 12, 12, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: losses.ssim(a, y), (x,), fast_mode=True)


def test_hardware_penalty_is_zero_inside_the_limits() -> None:
    system = System.load("generic3t")
    seq = build(GreProtocol(matrix=16, dummies=0))
    assert float(losses.hardware_penalty(seq, system)) == 0.0  # the builders respect a 3T scanner
    # one repetition: a 2-ms event at 2× the maximum amplitude between two long empty events
    g, s = system.max_grad, system.max_slew
    rep = seq[0]
    rep.event_time = torch.tensor([2e-3] + [1.0] * (rep.event_count - 1))
    rep.gradm = torch.zeros(rep.event_count, 3)
    rep.gradm[0, 0] = 2 * g * 2e-3
    one = Sequence([rep], seq.info)
    ramp_up = 2 * g / (1e-3 * s)  # from 0 at the pulse over half the event
    ramp_down = 2 * g / ((2e-3 + 1.0) / 2 * s)
    expected = 1.0 + max(ramp_up - 1, 0) ** 2 + max(ramp_down - 1, 0) ** 2
    assert float(losses.hardware_penalty(one, system)) == pytest.approx(expected, rel=1e-4)


def test_sar_penalties_scale_with_the_angle_squared() -> None:
    system = System.load("generic3t")
    seq = build(GreProtocol(matrix=16, dummies=0, flip_angle_deg=10))
    double = build(GreProtocol(matrix=16, dummies=0, flip_angle_deg=20))
    assert float(losses.flip_squared(double)) == pytest.approx(4 * float(losses.flip_squared(seq)), rel=1e-5)
    sar = float(losses.sar_estimate(seq, system))
    assert float(losses.sar_estimate(double, system)) == pytest.approx(4 * sar, rel=1e-5)
    # each pulse is exported as pypulseq's 1-ms sinc (TBW 4, apodisation 0.5): E = ∫B1² dt per TR, B1 = signal/γ
    rf = pp.make_sinc_pulse(flip_angle=math.radians(10), duration=1e-3, time_bw_product=4, apodization=0.5,
                            system=pp.Opts(rf_raster_time=1e-6))
    energy = float(np.sum(np.abs(rf.signal) ** 2) * 1e-6) / system.gamma_hz_per_t**2 * 1e12  # µT²·s
    coil = system.sar["head"]
    expected = coil.watts_per_ut2 * energy / float(seq[0].duration) / (coil.exposed_mass_fraction * 70)
    assert sar == pytest.approx(expected, rel=2e-3)


def test_parameters_write_into_the_sequence() -> None:
    template = build_template(IrGreProtocol(matrix=8, lines_per_inversion=8, gre_tr_ms=10, tr_ms=1000), 2)
    specs = [FlipAngleParam(name="flip_angle", shared=True, init=12.0),
             GradmParam(name="gradm", axes=["y"], events="adc", init="zero"),
             TimeParam(name="ti", init=250.0)]
    params = SequenceParameters(template, specs)
    seq = params.sequence().detach()
    exc = [rep for rep in seq if rep.pulse.usage == "excitation"]
    assert all(abs(math.degrees(float(r.pulse.angle)) - 12.0) < 1e-4 for r in exc)
    assert all(float(rep.gradm[rep.adc_usage, 1].abs().sum()) == 0 for rep in seq)
    inversions = [rep for rep in seq if rep.pulse.usage == "inversion"]
    assert len(inversions) == 2 and all(float(r.event_time[0]) == pytest.approx(0.25) for r in inversions)
    assert float(seq[1].gradm[0, 0]) == float(template[1].gradm[0, 0])  # x untouched


def _model(tmp_path: Path) -> JointModel:
    task = parse_task(gre_from_zero(), "tiny", tmp_path)
    return JointModel(task, TwinSet(task.task.data, task.protocol.matrix))


def test_gradient_reaches_flip_angles_and_moments(tmp_path: Path) -> None:
    model = _model(tmp_path)
    terms = model.loss_terms(model([0], [0]))
    terms["loss"].backward()
    flip, moments = model.params.raw
    assert flip.grad is not None and moments.grad is not None
    assert torch.isfinite(flip.grad).all() and torch.isfinite(moments.grad).all()
    assert float(flip.grad.abs().sum()) > 0 and float(moments.grad.abs().sum()) > 0


def test_gradient_matches_finite_differences(tmp_path: Path) -> None:
    """d loss / d (one flip angle, one moment) by autograd and by central differences."""
    model = _model(tmp_path)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        model.params.raw[1].copy_(0.3 * torch.randn(model.params.raw[1].shape, generator=gen))
        model.params.raw[0].fill_(4.0)

    def loss() -> torch.Tensor:
        return model.loss_terms(model([0], [0]))["loss"]

    loss().backward()
    for raw, index, step in ((model.params.raw[0], (3,), 0.5), (model.params.raw[1], (40, 0), 0.02)):
        auto = float(raw.grad[index])  # type: ignore[index]
        with torch.no_grad():
            raw[index] += step
            up = float(loss())
            raw[index] -= 2 * step
            down = float(loss())
            raw[index] += step
        numeric = (up - down) / (2 * step)
        assert auto == pytest.approx(numeric, rel=0.05, abs=1e-3 * abs(numeric) + 1e-7)


def test_one_readout_moment_per_repetition() -> None:
    """shared: repetition gives every ADC event of a readout the same moment: a constant readout gradient."""
    template = build_template(GreProtocol(matrix=8, dummies=0))
    spec = GradmParam(name="gradm", axes=["x", "y"], events="adc", shared="repetition", init="template")
    params = SequenceParameters(template, [spec])
    assert params.raw[0].shape == (8, 2)
    with torch.no_grad():
        params.raw[0].copy_(torch.arange(16.0).reshape(8, 2))
    seq = params.sequence().detach()
    for r, rep in enumerate(seq):
        moments = rep.gradm[rep.adc_usage, :2] * seq.info.fov[0]
        assert torch.allclose(moments, torch.tensor([2.0 * r, 2.0 * r + 1]).expand_as(moments), atol=1e-4)
    assert SequenceParameters(template, [spec]).values()["gradm"][0].tolist() == pytest.approx([1.0, 0.0])


def test_reference_image_noise_is_the_image_noise(tmp_path: Path) -> None:
    """noise_of reference_image: σ of the FFT image noise = noise × max of the reference image."""
    from tests.optimize.tasks import spin

    task = spin()
    task["data"]["noise"] = 0.1
    resolved = parse_task(task, "tiny", tmp_path)
    model = JointModel(resolved, TwinSet(resolved.task.data, resolved.protocol.matrix))
    seq = model.reference
    assert seq is not None
    _, scale, _ = model.target(0)
    signal = model._reference_signal(0)
    noisy = model.recon(model.raw(seq, signal, 0, seed=5), network=False).data[0, 0, 0]  # RSS magnitude, (y, x)
    background = model.data[0].pd[0] == 0  # outside the head the magnitude is noise only: Rayleigh, mean σ√(π/2)
    sigma = float(noisy[background].mean()) / math.sqrt(math.pi / 2)
    assert sigma == pytest.approx(0.1 * scale, rel=0.3)


def test_identity_times_are_projected_onto_their_bounds_and_keep_their_gradient() -> None:
    """Projected gradient: a TI pushed below its bound comes back to the bound, where its gradient is alive
    (a softplus there has slope e^−u ≈ 0 and freezes)."""
    template = build_template(IrGreProtocol(matrix=8, lines_per_inversion=8, gre_tr_ms=10, tr_ms=1000), 1)
    spec = TimeParam(name="ti", init="zero", bounds_ms=(0.1, None), parametrization="identity")
    params = SequenceParameters(template, [spec])
    with torch.no_grad():
        params.raw[0].fill_(-300.0)  # where one Adam step of lr 300 ms would leave it
    params.project()
    assert float(params.values()["ti"][0].detach()) == pytest.approx(0.1)
    seq = params.sequence()
    inversion = next(rep for rep in seq if rep.pulse.usage == "inversion")
    inversion.event_time[0].backward()
    assert params.raw[0].grad is not None and float(params.raw[0].grad[0]) == pytest.approx(1e-3)  # s per ms
    with pytest.raises(ValueError, match="needs a lower bound"):
        TimeParam(name="ti", bounds_ms=None, parametrization="identity").bounds()
