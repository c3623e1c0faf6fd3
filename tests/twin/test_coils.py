"""Simulated receive coils: normalisation, distinctness, Biot–Savart falloff."""

from __future__ import annotations

import math

import pytest
import torch

from mrbridge.twin.coils import RING_RADIUS, simulated_coils


def test_one_coil_is_uniform() -> None:
    sens = simulated_coils((1, 8, 6), (0.2, 0.2, 0.005), 1)
    assert sens.shape == (1, 1, 8, 6)
    assert sens.dtype == torch.complex64
    assert torch.equal(sens, torch.ones_like(sens))


@pytest.mark.parametrize("coils", [2, 4, 8])
def test_rss_is_one_at_centre_and_coils_differ(coils: int) -> None:
    n = 32
    sens = simulated_coils((2, n, n), (0.22, 0.22, 0.01), coils)
    assert sens.shape == (coils, 2, n, n)
    assert sens.dtype == torch.complex64
    rss = sens.abs().pow(2).sum(0).sqrt()
    assert rss[0, n // 2, n // 2].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(sens[:, 0], sens[:, 1])  # no variation along z
    flat = sens[:, 0].reshape(coils, -1)
    corr = (flat.conj() @ flat.T).abs() / (flat.norm(dim=1)[:, None] * flat.norm(dim=1)[None, :])
    off = corr[~torch.eye(coils, dtype=torch.bool)]
    assert off.max() < 0.99  # every pair distinct


def test_magnitude_follows_one_over_distance() -> None:
    """Coil 0 sits at (R, 0): |s| ∝ 1/|r − p| along the x axis through the centre."""
    n, fov = 64, 0.2
    sens = simulated_coils((1, n, n), (fov, fov, 0.005), 4)[0, 0]
    radius = RING_RADIUS * fov
    x = (torch.arange(n) - n // 2) * fov / n
    expected = radius / (radius - x) / math.sqrt(4)
    torch.testing.assert_close(sens[n // 2].abs(), expected.to(torch.float32), rtol=1e-5, atol=1e-6)
    assert sens[n // 2, -1].abs() > 2 * sens[n // 2, 0].abs()  # brighter next to its wire
