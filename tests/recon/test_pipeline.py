"""Recon on simulated data: CG-SENSE, prewhitening, gradients through the whole module, errors."""

from __future__ import annotations

import math
from pathlib import Path

import ismrmrd
import pytest
import torch
from torch.func import functional_call

from mrbridge.errors import InputError
from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.coils import estimate_sensitivities
from mrbridge.recon.operators import FourierOp, NonCartesianOp
from mrbridge.recon.pipeline import Recon, ReconConfig, prewhiten
from mrbridge.twin.coils import simulated_coils
from tests.helpers import assert_gradcheck, nrmse

N, FOV = 64, (0.2, 0.2, 0.005)


def phantom() -> torch.Tensor:
    """(1, N, N) complex: two ellipses with a smooth phase."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    m = ((x / 0.8) ** 2 + (y / 0.9) ** 2 < 1).float() + 0.5 * (((x - 0.2) / 0.3) ** 2 + (y / 0.4) ** 2 < 1).float()
    return (m * torch.exp(1j * 0.5 * x)).to(torch.complex64)[None]


def undersampled(coils: int = 8, acs: int = 24, noise: float = 0.0002) -> tuple[RawData, torch.Tensor]:
    """R=2 Cartesian raw data with ``acs`` calibration lines (odd ones calibration-only), and the truth
    as coil combination sees it (the object times the root-sum-of-squares of the coils)."""
    truth = phantom()
    sens = simulated_coils((1, N, N), FOV, coils)
    k = FourierOp((N, N))(sens * truth)[:, 0]  # (coils, y, x)
    gen = torch.Generator().manual_seed(1)
    k = k + noise * float(k.abs().max()) * torch.randn(k.shape, dtype=torch.complex64, generator=gen)
    lo = N // 2 - acs // 2
    lines = [y for y in range(N) if y % 2 == 0 or lo <= y < lo + acs]
    cal_only = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION - 1)
    cal_img = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING - 1)
    flags = [(cal_only if y % 2 else cal_img) if lo <= y < lo + acs else 0 for y in lines]
    header = RawHeader(encoded_fov=FOV, recon_fov=FOV, encoded_matrix=(N, N, 1), recon_matrix=(N, N, 1), coils=coils)
    raw = RawData(
        k[:, lines],
        header=header,
        labels={"kspace_encode_step_1": torch.tensor(lines)},
        flags=torch.tensor(flags),
        center_sample=N // 2,
    )
    return raw, truth * sens.abs().square().sum(0).sqrt()


def fitted_nrmse(image: torch.Tensor, truth: torch.Tensor) -> float:
    a, b = image.abs().reshape(-1), truth.abs().reshape(-1)
    return nrmse(a * float((a * b).sum() / (a * a).sum()), b)


def test_cg_sense_beats_zero_filling_at_r2() -> None:
    raw, truth = undersampled()
    sense = Recon(ReconConfig(method="sense", iterations=15, tikhonov=1e-3))(raw)
    zero_filled = Recon(ReconConfig(method="fft"))(raw)
    assert sense.data.shape == (1, 1, 1, N, N) and sense.data.is_complex()
    e_sense, e_zf = fitted_nrmse(sense.data, truth), fitted_nrmse(zero_filled.data, truth)
    assert e_sense < 0.5 * e_zf, (e_sense, e_zf)
    assert e_sense < 0.1


def test_sense_without_calibration_lines_is_an_input_error() -> None:
    raw, _ = undersampled()
    raw.flags = torch.zeros_like(raw.flags)
    with pytest.raises(InputError, match="calibration"):
        Recon(ReconConfig(method="sense"))(raw)


def test_walsh_sensitivities_align_with_the_true_coils() -> None:
    truth = phantom()
    sens = simulated_coils((1, N, N), FOV, 6)
    est = estimate_sensitivities(sens * truth, kernel=5)
    inside = truth.abs()[0] > 0.5
    alignment = (est.conj() * sens).sum(0).abs()[0] / (sens.abs().square().sum(0).sqrt()[0])
    assert float(alignment[inside].min()) > 0.99
    assert torch.allclose(est.abs().square().sum(0)[0][inside], torch.ones(()), atol=1e-4)


@pytest.mark.parametrize("scale", [1e-12, 1e5])
def test_walsh_sensitivities_do_not_depend_on_the_data_scale(scale: float) -> None:
    """Measured coil images of magnitude 1e5 (or tiny ones) give the same maps, not NaN (float32 power iteration)."""
    images = simulated_coils((1, N, N), FOV, 6) * phantom()
    est = estimate_sensitivities(images * scale, kernel=5)
    assert torch.isfinite(torch.view_as_real(est)).all()
    assert torch.allclose(est, estimate_sensitivities(images, kernel=5), atol=1e-5)


def test_prewhitening_decorrelates_coils() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.3, 0.2j, 2.0]], dtype=torch.complex64)
    noise = mix @ torch.randn(3, 20000, dtype=torch.complex64, generator=gen)
    data = mix @ torch.randn(3, 20000, dtype=torch.complex64, generator=gen)
    white = prewhiten(data.reshape(3, 100, 200), noise).reshape(3, -1)
    cov = white @ white.conj().T / white.shape[1]
    power = torch.diagonal(noise @ noise.conj().T / noise.shape[1]).real.mean()  # the scale is kept
    assert torch.allclose(cov / power, torch.eye(3, dtype=cov.dtype), atol=0.05)
    assert not torch.allclose(data @ data.conj().T / data.shape[1] / power, torch.eye(3, dtype=cov.dtype), atol=0.05)


def test_prewhitening_keeps_the_scale_of_one_coil() -> None:
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(1, 8, 16, dtype=torch.complex64, generator=gen)
    noise = 0.05 * torch.randn(1, 4000, dtype=torch.complex64, generator=gen)
    torch.testing.assert_close(prewhiten(data, noise), data)


def tiny_raw(kdata: torch.Tensor, traj: torch.Tensor | None) -> RawData:
    n = 4
    header = RawHeader(encoded_matrix=(n, n, 1), recon_matrix=(n, n, 1), encoded_fov=FOV, recon_fov=FOV)
    labels = {"kspace_encode_step_1": torch.arange(n)}
    return RawData(kdata, header=header, traj=traj, labels=labels, center_sample=n // 2)


def test_recon_gradcheck_wrt_kdata_and_trajectory() -> None:
    gen = torch.Generator().manual_seed(3)
    kdata = torch.randn(1, 4, 4, dtype=torch.complex128, generator=gen).requires_grad_(True)
    ky, kx = torch.meshgrid(torch.arange(4) - 2.0, torch.arange(4) - 2.0, indexing="ij")
    traj = torch.stack((kx / FOV[0], ky / FOV[1], torch.zeros_like(kx)), -1).double()
    traj = (traj + 0.3 * torch.rand(traj.shape, generator=gen, dtype=torch.float64) / FOV[0]).requires_grad_(True)
    for method in ("adjoint", "cg"):
        recon = Recon(ReconConfig(method=method, iterations=3, coil_combine="sensitivity", tikhonov=0.1))
        assert_gradcheck(lambda k, t, r=recon: r(tiny_raw(k, t)).data, kdata, traj, fast_mode=True)
    fft = Recon(ReconConfig(method="fft"))
    assert_gradcheck(lambda k: fft(tiny_raw(k, None)).data, kdata)


def test_labels_outside_the_matrix_are_an_input_error() -> None:
    raw = tiny_raw(torch.zeros(1, 4, 4, dtype=torch.complex64), None)
    raw.labels["kspace_encode_step_1"] = torch.tensor([0, 1, 2, 9])
    with pytest.raises(InputError, match="kspace_encode_step_1 up to 9"):
        Recon()(raw)


def test_trained_tikhonov_gradient_and_solution() -> None:
    """λ as a parameter: the CG image is (AᴴA + λI)⁻¹Aᴴy (against a direct solve), and the image passes
    gradcheck w.r.t. log λ."""
    gen = torch.Generator().manual_seed(5)
    ky, kx = torch.meshgrid(torch.arange(4) - 2.0, torch.arange(4) - 2.0, indexing="ij")
    traj = torch.stack((kx / FOV[0], ky / FOV[1], torch.zeros_like(kx)), -1).double()
    traj = traj + 0.4 * torch.rand(traj.shape, generator=gen, dtype=torch.float64) / FOV[0]
    kdata = torch.randn(1, 4, 4, dtype=torch.complex128, generator=gen)
    config = ReconConfig(method="cg", iterations=16, coil_combine="sensitivity", tikhonov=0.3, train_tikhonov=True)
    recon = Recon(config).double()
    assert recon.log_tikhonov is not None and float(recon.tikhonov().detach()) == pytest.approx(0.3)
    image = recon(tiny_raw(kdata, traj)).data.detach().reshape(-1)
    op = NonCartesianOp(traj.reshape(-1, 3), (1, 4, 4), FOV)
    a = op(torch.eye(16, dtype=torch.complex128).reshape(16, 1, 4, 4)).T  # (samples, voxels)
    direct = torch.linalg.solve(a.conj().T @ a + 0.3 * torch.eye(16), a.conj().T @ kdata.reshape(-1))
    torch.testing.assert_close(image, direct, rtol=1e-6, atol=1e-8)

    short = Recon(config.model_copy(update={"iterations": 5})).double()  # unconverged: every iteration counts
    log_lambda = torch.tensor(math.log(0.3), dtype=torch.float64, requires_grad=True)
    assert_gradcheck(lambda v: functional_call(short, {"log_tikhonov": v}, (tiny_raw(kdata, traj),)).data,
                     log_lambda)
    with pytest.raises(ValueError, match="train_tikhonov needs method"):
        ReconConfig(method="fft", tikhonov=0.1, train_tikhonov=True)
    with pytest.raises(ValueError, match="tikhonov > 0"):
        ReconConfig(method="cg", train_tikhonov=True)


def test_trained_tikhonov_round_trips_through_a_bundle(tmp_path: Path) -> None:
    recon = Recon(ReconConfig(method="cg", tikhonov=0.05, train_tikhonov=True))
    with torch.no_grad():
        recon.log_tikhonov.fill_(math.log(0.7))  # type: ignore[union-attr]
    recon.save(tmp_path)
    assert float(Recon.load(tmp_path).tikhonov().detach()) == pytest.approx(0.7)
    (tmp_path / "recon.pt").unlink()
    with pytest.raises(InputError, match="train_tikhonov=True need the trained weights"):
        Recon.load(tmp_path)


def test_adjoint_radial_recon_with_pipe_density_compensation_resembles_the_object() -> None:
    """Radial spokes oversample the centre: the plain adjoint is blurred (1/|k| weighting), Pipe's weights undo it."""
    from mrbridge.raw.rawdata import RawHeader
    from mrbridge.recon.operators import NonCartesianOp

    n, fov, spokes = 32, 0.2, 64
    idx = torch.arange(n) - n // 2
    yy, xx = torch.meshgrid(idx, idx, indexing="ij")
    truth = ((xx - 3) ** 2 + yy**2 < 60).to(torch.complex64) + 0.5 * ((xx + 6) ** 2 + (yy + 5) ** 2 < 12)
    radius = (torch.arange(2 * n) - n) / (2 * fov)  # 2× oversampled spoke through the centre
    angles = torch.arange(spokes) * math.radians(111.246)
    traj = torch.stack([radius[None] * torch.cos(angles)[:, None], radius[None] * torch.sin(angles)[:, None],
                        torch.zeros(spokes, 2 * n)], -1).to(torch.float32)  # (spokes, samples, 3)
    op = NonCartesianOp(traj.reshape(-1, 3), (1, n, n), (fov, fov, 0.005))
    kdata = op(truth[None]).reshape(1, spokes, 2 * n)
    header = RawHeader(trajectory="radial", encoded_fov=(fov, fov, 0.005), encoded_matrix=(n, n, 1),
                       recon_fov=(fov, fov, 0.005), recon_matrix=(n, n, 1))
    raw = RawData(kdata, header=header, traj=traj, center_sample=n)

    def corr(config: ReconConfig) -> float:
        image = Recon(config)(raw).data.reshape(n, n).abs()
        return float(torch.corrcoef(torch.stack([image.reshape(-1), truth.abs().reshape(-1)]))[0, 1])

    plain = corr(ReconConfig(method="adjoint"))
    weighted = corr(ReconConfig(method="adjoint", density_compensation="pipe"))
    assert weighted > 0.9 and weighted > plain + 0.05, (plain, weighted)


def test_gradients_that_start_at_zero_still_give_an_image_and_a_trajectory_gradient() -> None:
    """A sequence learned from zero (MRzero) starts with every moment 0: k = 0 everywhere, yet its matrix is an
    image's, so the recon is an image (not an FID's spectrum) and the loss reaches the trajectory."""
    from mrbridge.raw.rawdata import RawHeader

    n = 8
    traj = torch.zeros(n, n, 3, requires_grad=True)
    header = RawHeader(trajectory="other", encoded_matrix=(n, n, 1), recon_matrix=(n, n, 1))
    kdata = torch.randn(1, n, n, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    raw = RawData(kdata, header=header, traj=traj, center_sample=n // 2)
    image = Recon(ReconConfig(method="cg", tikhonov=0.01))(raw)
    assert image.meta["method"] == "cg" and image.data.shape[-2:] == (n, n)
    image.data.abs().square().sum().backward()
    assert traj.grad is not None and float(traj.grad.abs().sum()) > 0
