"""The unrolled recon (regularised SENSE + learned priors): its limits, gradients, bundle round trip, config."""

from __future__ import annotations

from pathlib import Path

import ismrmrd
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.func import functional_call

from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.operators import CoilOp, FourierOp
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.recon.unrolled import Trace, UnrolledConfig, UnrolledSense
from mrbridge.twin.coils import simulated_coils
from tests.helpers import assert_gradcheck, nrmse

N, FOV = 32, (0.2, 0.2, 0.005)


def undersampled_raw(n: int = N, coils: int = 4, noise: float = 0.01) -> RawData:
    """R≈3 Cartesian raw data: every third line plus 8 central lines labelled calibration-and-imaging."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    image = ((x / 0.8) ** 2 + (y / 0.7) ** 2 < 1).float() + (((x - 0.3) / 0.2) ** 2 + (y / 0.3) ** 2 < 1).float()
    sens = simulated_coils((1, n, n), FOV, coils)
    k = FourierOp((n, n))(sens * image.to(torch.complex64))[:, 0]
    gen = torch.Generator().manual_seed(3)
    k = k + noise * float(k.abs().max()) * torch.randn(k.shape, dtype=torch.complex64, generator=gen)
    centre = range(n // 2 - 4, n // 2 + 4)
    lines = [i for i in range(n) if i % 3 == 0 or i in centre]
    acs = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING - 1)
    header = RawHeader(encoded_fov=FOV, recon_fov=FOV, encoded_matrix=(n, n, 1), recon_matrix=(n, n, 1), coils=coils)
    return RawData(k[:, lines], header=header, labels={"kspace_encode_step_1": torch.tensor(lines)},
                   flags=torch.tensor([acs if i in centre else 0 for i in lines]), center_sample=n // 2)


def unrolled(lambda_init: list[float], *, cg: int = 8, method: str = "sense", **kw: object) -> Recon:
    """A Recon whose sense / cg solve is the unrolled network (small priors; ``kw``: more UnrolledConfig keys)."""
    config = {"iterations": len(lambda_init), "lambda_init": lambda_init, "cg_iterations": cg, **kw}
    return Recon(ReconConfig.model_validate({"method": method, "coil_combine": "sensitivity", "iterations": cg,
                                             "network": "unrolled", "unrolled": config, "network_features": 4,
                                             "network_depth": 2}))


class Halve(nn.Module):
    """A prior that halves the image (stands in for a trained network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


def test_one_step_with_an_identity_prior_and_lambda_to_zero_is_sense() -> None:
    raw = undersampled_raw()
    sense = Recon(ReconConfig(method="sense", iterations=8))(raw).data
    net = unrolled([1e-7])
    out = net(raw)
    assert nrmse(out.data.detach(), sense) < 1e-4  # a fresh prior is the identity (zero-initialised last layer)
    assert out.meta["unrolled_lambdas"] == pytest.approx([1e-7], rel=1e-5)
    # the recorded residual ‖E x − y‖/‖y‖ is the one computed from E and y directly
    (problem,), _ = net.sense_problems(raw)
    direct = nrmse(problem.mask * problem.op(sense[0, 0, 0]), problem.kspace)
    assert out.meta["unrolled_step_residual"] == pytest.approx([direct], rel=1e-3)


def test_lambda_to_infinity_returns_the_prior() -> None:
    raw = undersampled_raw()
    sense = Recon(ReconConfig(method="sense", iterations=8))(raw).data
    net = unrolled([1e-7, 1e7])
    assert net.unrolled is not None
    net.unrolled.priors = nn.ModuleList([Halve(), Halve()])
    out = net(raw).data.detach()
    # step 1 is SENSE, its prior ½·SENSE; step 2 (λ → ∞) keeps that prior, which is halved again
    assert nrmse(out, 0.25 * sense) < 1e-4
    assert nrmse(net(raw, network=False).data, sense) < 1e-6  # network=False: plain SENSE


def test_gradcheck_with_respect_to_the_lambdas() -> None:
    n, coils = 8, 2
    gen = torch.Generator().manual_seed(0)
    sens = simulated_coils((1, n, n), FOV, coils)[:, 0].to(torch.complex128)
    op = FourierOp((n, n)) @ CoilOp(sens)
    mask = (torch.rand(n, generator=gen) < 0.5).to(torch.float64)[:, None].expand(n, n)
    truth = torch.randn(n, n, dtype=torch.complex128, generator=gen)
    y = mask * op(truth)

    def gram(x: torch.Tensor) -> torch.Tensor:
        return op.H(mask * op(x))

    module = UnrolledSense(UnrolledConfig(iterations=3, lambda_init=[2.0, 1.0, 0.5], cg_iterations=3),
                           features=2, depth=1).double()
    for p in module.priors.parameters():  # non-trivial priors
        nn.init.normal_(p, std=0.3, generator=gen)
    log_lambdas = module.log_lambdas.detach().clone().requires_grad_(True)

    def run(ll: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, {"log_lambdas": ll}, (gram, op.H(y)))
        return torch.view_as_real(out)

    assert_gradcheck(run, log_lambdas)


def test_save_load_gives_identical_output(tmp_path: Path) -> None:
    raw = undersampled_raw()
    net = unrolled([3.0, 1.0], cg=4, shared_weights=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.save(tmp_path)
    again = Recon.load(tmp_path)
    assert again.config == net.config
    assert torch.equal(again(raw).data, net(raw).data)
    assert again.unrolled is not None and len(again.unrolled.priors) == 2


@pytest.mark.parametrize("prior", ["unet", "cnn"])
def test_a_small_last_layer_lets_every_layer_learn_from_the_first_step(prior: str) -> None:
    """network_init 0: each prior starts as the identity and only its last layer has a gradient; 0.01: the
    output moves a little and every layer has one (the plateau a zero last layer sits on)."""
    raw = undersampled_raw()
    grads = {}
    for std in (0.0, 0.01):
        torch.manual_seed(0)
        net = Recon(ReconConfig.model_validate({
            "method": "sense", "coil_combine": "sensitivity", "iterations": 4, "network": "unrolled",
            "network_features": 4, "network_depth": 2, "network_init": std,
            "unrolled": {"iterations": 2, "lambda_init": [1.0, 1.0], "cg_iterations": 4, "prior": prior}}))
        out = net(raw).data
        out.abs().sum().backward()
        assert net.unrolled is not None
        grads[std] = [float(p.grad.abs().max()) if p.grad is not None else 0.0
                      for p in net.unrolled.priors.parameters()]
        with torch.no_grad():
            identity = unrolled([1.0, 1.0], cg=4, prior=prior)(raw).data
        change = nrmse(out.detach(), identity)
        assert change == 0.0 if std == 0 else 0 < change < 0.05
    assert sum(g > 0 for g in grads[0.0]) == 2 * 2  # each of the 2 priors: its last layer's weight and bias
    assert all(g > 0 for g in grads[0.01])


def test_shared_weights_use_one_prior() -> None:
    net = unrolled([1.0] * 4, shared_weights=True)
    assert net.unrolled is not None and len(net.unrolled.priors) == 1
    assert isinstance(net.unrolled.log_lambdas, nn.Parameter) and net.unrolled.log_lambdas.shape == (4,)
    fixed = unrolled([1.0] * 2, lambdas="fixed")
    assert fixed.unrolled is not None and not any(p is fixed.unrolled.log_lambdas for p in fixed.parameters())


def test_non_cartesian_cg_step_with_lambda_to_zero_is_cg() -> None:
    raw = undersampled_raw(n=16, coils=2)
    cg = Recon(ReconConfig(method="cg", coil_combine="sensitivity", iterations=6))(raw).data
    out = unrolled([1e-7], cg=6, method="cg")(raw)
    assert nrmse(out.data.detach(), cg) < 1e-4
    assert len(out.meta["unrolled_prior_residual"]) == 1


def test_trace_records_every_step() -> None:
    n = 8
    op = FourierOp((n, n))
    y = op(torch.randn(n, n, dtype=torch.complex64))
    trace = Trace()
    UnrolledSense(UnrolledConfig(iterations=3, cg_iterations=20), features=2, depth=1)(
        lambda x: op.H(op(x)), op.H(y), y_norm2=float(y.abs().square().sum()), trace=trace)
    assert trace.lambdas == pytest.approx([1.0] * 3)
    # fully sampled, identity prior: xₙ → the data geometrically, residual (½)ⁿ of ‖y‖
    assert trace.step_residual == pytest.approx([0.5, 0.25, 0.125], abs=1e-3)


@pytest.mark.parametrize("bad", [
    {"method": "fft", "network": "unrolled"},
    {"method": "sense", "network": "unet", "unrolled": {}},
    {"method": "sense", "network": "unrolled", "unrolled": {"iterations": 3, "lambda_init": [1.0, 2.0]}},
    {"method": "sense", "network": "unrolled", "unrolled": {"lambda_init": -1.0}},
])
def test_bad_unrolled_configs_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReconConfig.model_validate(bad)
