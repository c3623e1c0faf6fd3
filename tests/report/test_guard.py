"""The hallucination guard: an image that explains the data passes; a structure added after the recon is flagged
where it was added."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import ismrmrd
import pytest
import torch

from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.image import Image
from mrbridge.recon.operators import FourierOp
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.report.guard import guard, guard_report, noise_sigma
from mrbridge.twin.coils import simulated_coils

N, FOV, SIGMA = 48, (0.2, 0.2, 0.005), 0.02


def accelerated_raw() -> RawData:
    """R≈2.5 Cartesian data of two ellipses, 8 coils, 12 ACS lines, complex noise σ = SIGMA and its noise scan."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    image = ((x / 0.8) ** 2 + (y / 0.7) ** 2 < 1).float() + (((x + 0.3) / 0.2) ** 2 + (y / 0.3) ** 2 < 1).float()
    sens = simulated_coils((1, N, N), FOV, 8)
    k = FourierOp((N, N))(sens * image.to(torch.complex64))[:, 0]
    gen = torch.Generator().manual_seed(5)
    k = k + SIGMA * torch.randn(k.shape, dtype=torch.complex64, generator=gen)
    centre = range(N // 2 - 6, N // 2 + 6)
    lines = [i for i in range(N) if i % 3 == 0 or i in centre]
    acs = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING - 1)
    header = RawHeader(encoded_fov=FOV, recon_fov=FOV, encoded_matrix=(N, N, 1), recon_matrix=(N, N, 1), coils=8)
    noise = SIGMA * torch.randn((8, 512), dtype=torch.complex64, generator=gen)
    return RawData(k[:, lines], header=header, labels={"kspace_encode_step_1": torch.tensor(lines)},
                   flags=torch.tensor([acs if i in centre else 0 for i in lines]), center_sample=N // 2, noise=noise)


def test_noise_sigma_is_the_noise_scans() -> None:
    raw = accelerated_raw()
    assert abs(noise_sigma(raw) - SIGMA) < 0.1 * SIGMA
    assert noise_sigma(replace(raw, noise=None)) == 0.0


def test_the_guard_flags_a_structure_added_after_the_recon(tmp_path: Path) -> None:
    raw = accelerated_raw()
    config = ReconConfig(method="sense", coil_combine="sensitivity", iterations=30, tikhonov=0.01)
    honest = Recon(config)(raw)
    clean = guard(raw, honest, config=config, replicas=8, iterations=20)
    assert not clean.flagged, clean.reasons
    assert clean.changed_fraction < 0.01 and clean.residual < 1.5 * clean.reference_residual

    # a small bright disc that the data never saw, added to the reconstructed image
    y, x = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    disc = ((x - 30) ** 2 + (y - 20) ** 2 <= 9).to(torch.complex64)
    tampered = replace(honest, data=honest.data + 0.5 * disc)
    report = guard(raw, tampered, config=config, replicas=8, iterations=20)
    assert report.flagged
    assert report.residual > report.reference_residual
    assert report.changed is not None
    changed = torch.from_numpy(report.changed)
    inside = disc.real.bool()
    assert changed[inside].float().mean() > 0.8  # the disc is found …
    assert changed[~inside].float().mean() < 0.01  # … and little else

    # in a report folder, for a learned recon: a figure and the numbers
    learned = Recon(config.model_copy(update={"network": "unet", "network_features": 2, "network_depth": 1}))
    drawn = guard_report(learned, raw, tampered, tmp_path)
    assert [p.name for p, _ in drawn] == ["guard.png"] and (tmp_path / "guard.png").stat().st_size > 0
    assert json.loads((tmp_path / "guard.json").read_text())["flagged"] is True
    assert guard_report(Recon(config), raw, tampered, tmp_path / "none") == []  # not a learned recon


def test_the_guard_names_the_trained_lambdas() -> None:
    raw = accelerated_raw()
    config = ReconConfig.model_validate({"method": "sense", "coil_combine": "sensitivity", "network": "unrolled",
                                         "network_features": 2, "network_depth": 1,
                                         "unrolled": {"iterations": 3, "lambda_init": [4.0, 2.0, 1.0]}})
    with torch.no_grad():
        image = Recon(config)(raw)
    report = guard(raw, Image(data=image.data, meta=image.meta), config=config, replicas=2, iterations=10)
    assert report.lambdas == pytest.approx([4.0, 2.0, 1.0], rel=1e-5)
    assert len(report.step_residual) == 3 and len(report.prior_residual) == 3
