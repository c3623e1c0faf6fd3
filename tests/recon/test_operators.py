"""Operators: adjointness, the sign convention, shape checks, gradients w.r.t. the trajectory, CG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrbridge.recon.operators import (
    CoilOp,
    FourierOp,
    IdentityOp,
    NonCartesianOp,
    SamplingOp,
)
from mrbridge.recon.solvers import conjugate_gradient
from tests.helpers import assert_adjoint, assert_gradcheck

torch.manual_seed(0)


def crandn(*shape: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def random_traj(m: int, shape: tuple[int, int, int], fov: tuple[float, float, float]) -> torch.Tensor:
    nz, ny, nx = shape
    half = torch.tensor([nx / fov[0], ny / fov[1], nz / fov[2]]) / 2
    return ((torch.rand(m, 3) * 2 - 1) * half).to(torch.float64)


@pytest.mark.parametrize("shape", [(8, 8), (5, 6, 7), (1, 16, 9)])
def test_fourier_adjoint_and_unitary(shape: tuple[int, ...]) -> None:
    op = FourierOp(shape)
    x, y = crandn(3, *shape), crandn(3, *shape)
    assert_adjoint(op, x, y)
    assert torch.allclose(op.H(op(x)), x, atol=1e-5)


def test_fourier_adjoint_is_numpy_centred_inverse_fft() -> None:
    k = crandn(2, 12, 9)
    expected = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k.numpy(), (-2, -1)), axes=(-2, -1)), (-2, -1))
    ours = FourierOp((12, 9)).H(k).numpy() / math.sqrt(12 * 9)
    assert np.allclose(ours, expected, atol=1e-6)


def test_fourier_sign_convention_point_source() -> None:
    """A point at voxel i0 (position (i0 − n//2)Δ) has k-space exp(−i2π k r)/√n with k = (j − n//2)/FOV."""
    n, i0 = 9, 6
    x = torch.zeros(1, n, dtype=torch.complex128)
    x[0, i0] = 1
    k = FourierOp((1, n))(x)[0]
    j = torch.arange(n)
    expected = torch.exp(-2j * math.pi * (j - n // 2).double() * (i0 - n // 2) / n) / math.sqrt(n)
    assert torch.allclose(k, expected, atol=1e-12)


def test_sampling_adjoint_with_repeated_indices_and_mask() -> None:
    op = SamplingOp(torch.tensor([0, 5, 5, 11]), (3, 4))
    assert_adjoint(op, crandn(2, 3, 4), crandn(2, 4))
    mask = torch.rand(6, 5) > 0.5
    m = SamplingOp.from_mask(mask)
    x = crandn(6, 5)
    assert torch.equal(m(x), x[mask])
    assert torch.equal(m.H(m(x)), x * mask)


def test_coil_adjoint_and_composition() -> None:
    sens = crandn(4, 1, 6, 5)
    coil = CoilOp(sens)
    assert_adjoint(coil, crandn(1, 6, 5), crandn(4, 1, 6, 5))
    a = FourierOp((6, 5)) @ coil
    assert a.ishape == (1, 6, 5) and a.oshape == (4, 1, 6, 5)
    assert_adjoint(a, crandn(1, 6, 5), crandn(4, 1, 6, 5))
    s = 2.0 * a.H @ a + 0.5j * IdentityOp((1, 6, 5))
    assert_adjoint(s, crandn(1, 6, 5), crandn(1, 6, 5))
    assert a.H.H is a


def test_shape_errors_are_clear() -> None:
    op = FourierOp((8, 8))
    with pytest.raises(ValueError, match=r"trailing shape \(8, 8\), got \(4, 8, 7\)"):
        op(torch.zeros(4, 8, 7, dtype=torch.complex64))
    with pytest.raises(ValueError, match="cannot compose"):
        FourierOp((4, 4)) @ CoilOp(crandn(2, 1, 5, 5))


def test_noncartesian_adjoint() -> None:
    shape, fov = (2, 6, 5), (0.2, 0.25, 0.01)
    op = NonCartesianOp(random_traj(50, shape, fov).float(), shape, fov, chunk=16)
    assert_adjoint(op, crandn(3, *shape), crandn(3, 50))


def test_noncartesian_on_the_grid_equals_fft() -> None:
    nz, ny, nx = 1, 8, 6
    fov = (0.24, 0.2, 0.005)
    ky, kx = torch.meshgrid(torch.arange(ny) - ny // 2, torch.arange(nx) - nx // 2, indexing="ij")
    traj = torch.stack((kx / fov[0], ky / fov[1], torch.zeros_like(kx, dtype=torch.float32)), -1).reshape(-1, 3)
    x = crandn(2, nz, ny, nx)
    ours = NonCartesianOp(traj, (nz, ny, nx), fov)(x)
    assert torch.allclose(ours, FourierOp((ny, nx))(x).reshape(2, -1), atol=1e-5)


def test_noncartesian_gradcheck_wrt_trajectory_and_data() -> None:
    shape, fov = (1, 4, 3), (0.2, 0.2, 0.005)
    traj = random_traj(5, shape, fov).requires_grad_(True)
    x = crandn(1, *shape, dtype=torch.complex128).requires_grad_(True)

    def forward(t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return NonCartesianOp(t, shape, fov, chunk=2)(image)

    def adjoint(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return NonCartesianOp(t, shape, fov, chunk=2).H(y)

    assert_gradcheck(forward, traj, x)
    assert_gradcheck(adjoint, traj, crandn(5, dtype=torch.complex128).requires_grad_(True))


def test_cg_reaches_the_least_squares_solution() -> None:
    shape, fov = (1, 4, 4), (0.2, 0.2, 0.005)
    op = NonCartesianOp(random_traj(40, shape, fov), shape, fov)
    dense = op(torch.eye(16, dtype=torch.complex128).reshape(16, *shape)).T  # (40, 16)
    y = crandn(40, dtype=torch.complex128)
    expected = torch.linalg.lstsq(dense, y[:, None]).solution[:, 0]
    x = conjugate_gradient(lambda v: op.H(op(v)), op.H(y), iterations=200, tolerance=1e-12)
    assert torch.allclose(x.reshape(-1), expected, atol=1e-8)
    assert not torch.allclose(conjugate_gradient(lambda v: op.H(op(v)), op.H(y), iterations=2).reshape(-1), expected)
