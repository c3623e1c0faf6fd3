"""Phase-normalised networks: equivariant to a global phase, the identity stays the identity, bundles round-trip."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mrbridge.recon.networks import UNet
from mrbridge.recon.phase import PhaseNormalised, smooth_phase
from mrbridge.recon.pipeline import Recon, ReconConfig


def disc(n: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    return ((x**2 + y**2) < 0.6).to(torch.complex64) * (1 + 0.3 * x)


def test_smooth_phase_finds_a_constant_and_a_slow_phase() -> None:
    n = 32
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    inside = (x**2 + y**2) < 0.3
    for phi in (torch.full((n, n), 2.0), 0.8 * x):
        found = smooth_phase(disc(n) * torch.exp(1j * phi))
        error = torch.angle(found * torch.exp(-1j * phi).to(found.dtype))[inside].abs().max()
        assert float(error) < 0.05


def test_phase_normalised_net_is_equivariant_to_a_global_phase() -> None:
    torch.manual_seed(0)
    net = UNet(features=4, levels=1)
    for p in net.out.parameters():
        nn.init.normal_(p, std=0.1)
    wrapped = PhaseNormalised(net)
    x = disc()[None, None]
    turn = torch.exp(torch.tensor(1j * 2.1)).to(torch.complex64)
    with torch.no_grad():
        a, b = wrapped(x * turn), turn * wrapped(x)
        plain_a, plain_b = net(x * turn), turn * net(x)
    assert float((a - b).abs().max()) < 1e-4 * float(b.abs().max())
    assert float((plain_a - plain_b).abs().max()) > 1e-2 * float(plain_b.abs().max())  # the bare net is not
    fresh = PhaseNormalised(UNet(features=4, levels=1))  # zero-initialised last layer: the identity
    assert torch.allclose(fresh(x), x, atol=1e-6)
    assert math.isclose(float(smooth_phase(torch.zeros(4, 4, dtype=torch.complex64)).abs().min()), 1.0)


def test_phase_normalised_unrolled_bundle_round_trips(tmp_path: Path) -> None:
    config = ReconConfig.model_validate({"method": "sense", "network": "unrolled", "network_phase": "normalised",
                                         "network_features": 2, "network_depth": 1, "unrolled": {"iterations": 2}})
    recon = Recon(config)
    assert recon.unrolled is not None and all(isinstance(p, PhaseNormalised) for p in recon.unrolled.priors)
    recon.save(tmp_path)
    again = Recon.load(tmp_path)
    assert again.config == config
    post = Recon(ReconConfig(network="unet", network_phase="normalised", network_features=2, network_depth=1))
    assert isinstance(post.network, PhaseNormalised)
