"""Comparison numbers: fitted scale, NRMSE/PSNR/SSIM, label resampling, and the data-consistency residual."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.report.metrics import compare_images, data_consistency, fit_scale, labels_on_grid, psnr, ssim
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO


def test_scale_nrmse_psnr_ssim_on_known_images() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 1, 1, 32, 32, generator=gen)
    assert fit_scale(ref, 3.0 * ref) == pytest.approx(3.0)
    metrics, scaled = compare_images(ref, 2.5 * ref)
    assert metrics.scale == pytest.approx(2.5) and metrics.nrmse == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(scaled, 2.5 * ref)
    peaked = ref.clone()
    peaked[..., 0, 0] = 1.0
    assert psnr(peaked + 0.1, peaked) == pytest.approx(20.0)  # peak 1, RMSE 0.1
    assert ssim(ref, ref) == pytest.approx(1.0)
    noisy = ssim(ref + 0.5 * torch.rand(ref.shape, generator=gen), ref)
    assert noisy < 0.9
    assert ssim(ref + 0.05 * torch.rand(ref.shape, generator=gen), ref) > noisy


def test_labels_on_grid_is_nearest_neighbour_in_metres() -> None:
    labels = torch.arange(16, dtype=torch.int64).reshape(1, 4, 4)
    fov = (0.04, 0.04, 0.005)
    assert torch.equal(labels_on_grid(labels, fov, (1, 4, 4), fov), labels)
    fine = labels_on_grid(labels, fov, (1, 8, 8), fov)  # 5 mm voxels: each source voxel covers 2 × 2
    assert torch.equal(fine[0, 4, 4], labels[0, 2, 2]) and torch.equal(fine[0, 0, 0], labels[0, 0, 0])
    wide = labels_on_grid(labels, fov, (1, 4, 4), (0.08, 0.08, 0.005))  # twice the FOV: outside is 0
    assert int(wide[0, 0, 0]) == 0 and int(wide[0, 2, 2]) == int(labels[0, 2, 2])


@pytest.mark.parametrize("coils", [1, 3])
def test_data_consistency_measures_invented_detail(coils: int) -> None:
    """RSS recon: the residual is 0, and ‖b‖/‖x‖ after adding detail b the data do not hold (‖E b‖ = ‖b‖: the
    RSS maps have unit norm per voxel and the FFT is unitary)."""
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(update={"dummies": 0})
    raw = simulate(build(protocol, matrix=16), builtin("brain", matrix=16, coils=coils))
    recon = Recon()
    image = recon(raw)
    exact = data_consistency(recon, raw, image)
    assert exact is not None and exact < 1e-5
    detail = torch.zeros_like(image.data)
    detail[..., 6:9, 7:10] = 0.2 * float(image.data.max())  # a bright blob inside the head
    invented = replace(image, data=image.data + detail)
    expected = float(detail.norm() / image.data.norm())
    assert data_consistency(recon, raw, invented) == pytest.approx(expected, rel=1e-3)
    # complex (sensitivity-combined) images go through the recon's own Walsh maps
    sens_recon = Recon(ReconConfig(coil_combine="sensitivity"))
    residual = data_consistency(sens_recon, raw, sens_recon(raw))
    assert residual is not None and math.isfinite(residual) and residual < 0.5
