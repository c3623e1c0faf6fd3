"""Recon bundles: config + weights round trip through recon.json / recon.pt (weights_only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mrbridge.errors import ConfigError, InputError
from mrbridge.recon.networks import ScaleNormalised, SimpleCNN, UNet
from mrbridge.recon.pipeline import Recon, ReconConfig


@pytest.mark.parametrize("network", ["cnn", "unet"])
def test_network_weights_round_trip(tmp_path: Path, network: str) -> None:
    torch.manual_seed(0)
    recon = Recon(ReconConfig(method="sense", iterations=7, network=network, network_features=4, network_depth=2))
    assert isinstance(recon.network, SimpleCNN if network == "cnn" else UNet)
    with torch.no_grad():
        for p in recon.parameters():
            p.normal_(0.0, 0.1)
    recon.save(tmp_path)
    assert json.loads((tmp_path / "recon.json").read_text())["iterations"] == 7
    state = torch.load(tmp_path / "recon.pt", weights_only=True)
    assert state.keys() == recon.state_dict().keys()
    loaded = Recon.load(tmp_path)
    assert loaded.config == recon.config
    image = torch.randn(1, 1, 3, 20, 18, dtype=torch.complex64)
    assert recon.network is not None and loaded.network is not None
    out = recon.network(image)
    assert out.shape == image.shape and not torch.allclose(out, image)
    assert torch.equal(loaded.network(image), out)


def test_a_scale_normalised_network_scales_with_the_data(tmp_path: Path) -> None:
    """``network_scale: normalised``: net(g·x) = g·net(x) for any receiver gain g (the bare net is not), and the
    bundle round-trips."""
    torch.manual_seed(0)
    recon = Recon(ReconConfig(network="unet", network_scale="normalised", network_features=4, network_depth=2,
                              network_init=0.5))
    assert isinstance(recon.network, ScaleNormalised) and isinstance(recon.network.net, UNet)
    image = torch.randn(2, 1, 3, 16, 16, dtype=torch.complex64) * torch.tensor([1.0, 30.0])[:, None, None, None,
                                                                                               None]
    with torch.no_grad():
        for gain in (0.01, 100.0):
            out, scaled = recon.network(image), recon.network(gain * image)
            assert float((scaled - gain * out).abs().max()) < 1e-5 * float((gain * out).abs().max())
        bare, bare_scaled = recon.network.net(image), recon.network.net(0.01 * image)  # biases do not scale
        assert float((bare_scaled - 0.01 * bare).abs().max()) > 1e-2 * float((0.01 * bare).abs().max())
    recon.save(tmp_path)
    loaded = Recon.load(tmp_path)
    assert loaded.config.network_scale == "normalised" and loaded.network is not None
    assert torch.equal(loaded.network(image), recon.network(image))
    with pytest.raises(ValueError, match=r"network_scale 'normalised' needs network 'cnn' or 'unet' \(got 'none'"):
        ReconConfig(network_scale="normalised")


def test_fresh_network_is_the_identity() -> None:
    image = torch.randn(2, 1, 16, 16, dtype=torch.complex64)
    for net in (SimpleCNN(8, 3), UNet(4, 2)):
        assert torch.allclose(net(image), image, atol=1e-6)


def test_bad_bundles_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"recon\.json"):
        Recon.load(tmp_path)
    (tmp_path / "recon.json").write_text(json.dumps({"method": "fft", "network": "resnet"}))
    with pytest.raises(ConfigError, match=r"network = 'resnet'"):
        Recon.load(tmp_path)
    (tmp_path / "recon.json").write_text(json.dumps({"method": "fft", "iterationz": 3}))
    with pytest.raises(ConfigError, match="iterationz"):
        Recon.load(tmp_path)
    Recon(ReconConfig(network="cnn", network_features=4)).save(tmp_path)
    (tmp_path / "recon.json").write_text(json.dumps({"network": "cnn", "network_features": 8}))
    with pytest.raises(InputError, match="weights do not fit"):
        Recon.load(tmp_path)
