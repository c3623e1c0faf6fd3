"""NUFFT (finufft + own autograd) against the dense DFT: values, adjoint, gradients w.r.t. image and points."""

from __future__ import annotations

import math

import pytest
import torch

from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.dcf import pipe_dcf
from mrbridge.recon.nufft import nufft1, nufft2
from mrbridge.recon.operators import NonCartesianOp
from mrbridge.recon.pipeline import Recon, ReconConfig
from tests.helpers import assert_adjoint, assert_gradcheck, nrmse

SHAPES = [(1, 16, 16), (1, 15, 12), (6, 8, 7), (5, 6, 4)]  # 2-D even/odd, 3-D odd/even


def setup(shape: tuple[int, int, int], m: int, seed: int = 0) -> tuple[torch.Tensor, tuple[float, float, float]]:
    g = torch.Generator().manual_seed(seed)
    fov = (0.22, 0.2, 0.01 * shape[0])
    nz, ny, nx = shape
    half = torch.tensor([nx / fov[0], ny / fov[1], nz / fov[2]], dtype=torch.float64) / 2
    traj = (torch.rand(m, 3, generator=g, dtype=torch.float64) * 2 - 1) * half * 1.3  # beyond Nyquist too
    return traj, fov


def crandn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))


def pair(traj: torch.Tensor, shape: tuple[int, int, int], fov: tuple[float, float, float]) -> tuple:
    return NonCartesianOp(traj, shape, fov, exact=False), NonCartesianOp(traj, shape, fov, exact=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_adjoint_equal_the_dense_dft(shape: tuple[int, int, int]) -> None:
    traj, fov = setup(shape, 300)
    fast, dense = pair(traj, shape, fov)
    assert not fast.exact and dense.exact
    x, y = crandn(2, *shape), crandn(2, 300, seed=2)
    assert nrmse(fast(x), dense(x)) <= 1e-4
    assert nrmse(fast.H(y), dense.H(y)) <= 1e-4
    # a 1e-2 error in the trajectory is seen: the comparison can fail
    assert nrmse(NonCartesianOp(traj * 1.01, shape, fov, exact=False)(x), dense(x)) > 1e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_wrt_image_and_points_equal_the_dense_dft(shape: tuple[int, int, int]) -> None:
    traj, fov = setup(shape, 200, seed=3)
    x, target = crandn(3, *shape), crandn(3, 200, seed=4)
    img, back = crandn(3, *shape, seed=5), crandn(3, 200, seed=6)
    grads = []
    for exact in (False, True):
        t = traj.clone().requires_grad_(True)
        xi = x.clone().requires_grad_(True)
        yi = target.clone().requires_grad_(True)
        op = NonCartesianOp(t, shape, fov, exact=exact)
        loss = (op(xi) - target).abs().square().sum() + (op.H(yi) - img).abs().square().sum()
        loss = loss + (op.H(op(xi)) * back[0, 0]).real.sum()  # both transforms of one point set in one graph
        grads.append(torch.autograd.grad(loss, (t, xi, yi)))
    for fast, dense in zip(*grads, strict=True):
        assert nrmse(fast, dense) <= 1e-4
    kz_grad = grads[0][0][:, 2]
    assert (kz_grad.abs().max() == 0) == (shape[0] == 1)  # a single slice does not depend on kz


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_adjointness(dtype: torch.dtype) -> None:
    for shape in SHAPES:
        traj, fov = setup(shape, 150)
        op = NonCartesianOp(traj.float() if dtype == torch.complex64 else traj, shape, fov, exact=False)
        assert_adjoint(op, crandn(2, *shape).to(dtype), crandn(2, 150, seed=7).to(dtype),
                       rtol=1e-5)


def test_gradcheck_wrt_image_and_points() -> None:
    shape = (1, 5, 4)
    traj, fov = setup(shape, 7)
    traj.requires_grad_(True)
    x = crandn(2, *shape).requires_grad_(True)
    y = crandn(2, 7, seed=8).requires_grad_(True)

    def forward(t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return NonCartesianOp(t, shape, fov, exact=False, eps=1e-12)(image)

    def adjoint(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return NonCartesianOp(t, shape, fov, exact=False, eps=1e-12).H(v)

    assert_gradcheck(forward, traj, x)
    assert_gradcheck(adjoint, traj, y)
    traj3, fov3 = setup((3, 4, 3), 6)
    traj3.requires_grad_(True)
    x3 = crandn(1, 3, 4, 3).requires_grad_(True)
    assert_gradcheck(lambda t, image: NonCartesianOp(t, (3, 4, 3), fov3, exact=False, eps=1e-12)(image), traj3, x3)


def test_functions_second_derivative_and_convention() -> None:
    """The raw transforms: a mode (0, 1) at ω = (0, π/2) gives e^{−iπ/2}; gradgradcheck of type 2."""
    f = torch.zeros(4, 4, dtype=torch.complex128)
    f[2, 3] = 1
    y = nufft2(f, torch.tensor([[0.0, math.pi / 2]], dtype=torch.float64))
    assert torch.allclose(y, torch.tensor([-1j], dtype=torch.complex128), atol=1e-10)
    w = (torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 6 - 3)
    w.requires_grad_(True)
    fs = crandn(2, 3, 4).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a, b: nufft2(a, b, eps=1e-12), (fs, w), atol=1e-6, rtol=1e-4)
    vs = crandn(2, 5, seed=3).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a, b: nufft1(a, b, (3, 4), eps=1e-12), (vs, w), atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="points must be real"):
        nufft2(fs, w.to(torch.complex128))


def test_large_2d_matches_dense_on_a_subset() -> None:
    """128² with 8 coils: the NUFFT (float32, default eps) against the exact DFT at 500 of its points."""
    shape = (1, 128, 128)
    traj, fov = setup(shape, 20000, seed=11)
    x = crandn(8, *shape, seed=12).to(torch.complex64)
    fast = NonCartesianOp(traj.float(), shape, fov)
    assert not fast.exact  # chosen by size
    sub = NonCartesianOp(traj[:500], shape, fov, exact=True)
    assert nrmse(fast(x)[:, :500], sub(x.to(torch.complex128))) <= 1e-4


def test_pipe_dcf_gives_radial_weights_and_a_scaled_adjoint_recon() -> None:
    """Radial sampling: Pipe's weights are the k-space area per sample, π|k|·δk/spokes (in units of Δk²), and
    the density-compensated adjoint of a disc reproduces it; a fully sampled Cartesian grid gets weight 1."""
    n, spokes, samples, fov = 64, 100, 128, (0.2, 0.2, 0.005)
    angle = torch.arange(spokes, dtype=torch.float64) * math.pi * 2 / (1 + math.sqrt(5))
    r = (torch.arange(samples, dtype=torch.float64) - samples // 2) / samples * n / fov[0]
    traj = torch.zeros(spokes, samples, 3, dtype=torch.float64)
    traj[..., 0] = r * torch.cos(angle)[:, None]
    traj[..., 1] = r * torch.sin(angle)[:, None]
    traj = traj.reshape(-1, 3)
    w = pipe_dcf(traj, (1, n, n), fov)
    assert w.shape == (spokes * samples,) and bool((w > 0).all())
    kr = traj[:, :2].norm(dim=1)
    expected = math.pi * kr * fov[0] / spokes * (n / samples)  # π|k|/spokes · δk, k in units of Δk
    for lo in (0.2, 0.4, 0.6):  # annuli; single samples vary with the local golden-angle gap (and K blurs the edge)
        ring = (kr > lo * kr.max()) & (kr < (lo + 0.2) * kr.max())
        assert abs(float(w[ring].sum() / expected[ring].sum()) - 1) < 0.1
    y, x = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    disc = ((x**2 + y**2) < (0.35 * n) ** 2).to(torch.complex128)[None]
    op = NonCartesianOp(traj, (1, n, n), fov)
    assert nrmse(op.H(w * op(disc)), disc) < 0.1
    assert nrmse(op.H(op(disc)), disc) > 1  # without compensation the centre of k-space dominates
    k = torch.stack(torch.meshgrid(torch.arange(-8, 8.0), torch.arange(-8, 8.0), indexing="ij"), -1).reshape(-1, 2)
    grid = torch.cat([k / 0.2, torch.zeros(256, 1)], 1).double()
    assert torch.allclose(pipe_dcf(grid, (1, 16, 16), fov), torch.ones(256, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 16, 15), (4, 6, 5)])
def test_toeplitz_normal_equals_dense_normal_with_gradients(shape: tuple[int, int, int]) -> None:
    traj, fov = setup(shape, 250, seed=13)
    x = crandn(2, *shape, seed=14)
    out, grads = [], []
    for exact in (False, True):
        t = traj.clone().requires_grad_(True)
        op = NonCartesianOp(t, shape, fov, exact=exact)
        y = op.normal(x)
        out.append(y.detach())
        grads.append(torch.autograd.grad((y * x.conj()).real.sum() + y.abs().square().sum(), t)[0])
    assert nrmse(out[0], out[1]) <= 1e-4
    assert nrmse(grads[0], grads[1]) <= 1e-4
    with pytest.raises(ValueError, match="trailing shape"):
        NonCartesianOp(traj, shape, fov, exact=False).normal(x[..., :-1])


def _cg_recon_trajectory_gradient(base: torch.Tensor, kdata: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂‖image − target‖²/∂traj (n, n, 2) through ``Recon`` (CG, 10 iterations, λ = 0.01), traj in base's dtype."""
    n = target.shape[-1]
    fov = (0.2, 0.2, 0.005)
    header = RawHeader(trajectory="other", encoded_matrix=(n, n, 1), recon_matrix=(n, n, 1), encoded_fov=fov,
                       recon_fov=fov)
    traj = base.clone().requires_grad_(True)
    kd = kdata.to(torch.complex128 if base.dtype == torch.float64 else torch.complex64)
    image = Recon(ReconConfig(method="cg", iterations=10, tikhonov=0.01, coil_combine="sensitivity"))(
        RawData(kd, header=header, traj=traj, center_sample=n // 2)).data.reshape(n, n)
    assert image.is_complex()
    (image - target.to(image.dtype)).abs().square().sum().backward()
    assert traj.grad is not None
    return traj.grad[..., :2].double()


def test_trajectory_gradient_through_the_cg_recon_near_k0_equals_the_dense_dft(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GRE learned from zero: every sample at or near k = 0, so AᴴA ≈ M·(rank one) and CG with λ = 0.01
    amplifies NUFFT errors in A's null space by ≈ M/λ. With the single-precision NUFFT (eps 1e-5) the first
    trajectory gradient of GRE-from-zero was 2·10⁴× the dense DFT's (cosine 0.2): Adam's first step scattered the
    samples and its second-moment estimate, poisoned by that gradient, froze the trajectory (NRMSE 0.27 vs 0.10).
    The default (double precision, 1e-10) agrees with the float64 dense DFT; single precision is caught."""
    n = 24
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, n, 3, generator=gen) * 0.05  # 1/m: 1 % of Δk = 5/m
    base[..., 2] = 0
    kdata = torch.randn(1, n, n, dtype=torch.complex64, generator=gen)  # scattered phases (RF spoiling)
    target = torch.randn(n, n, dtype=torch.complex64, generator=gen)

    def grad(dense: bool, traj: torch.Tensor, eps: float = NonCartesianOp.EPS) -> torch.Tensor:
        monkeypatch.setattr(NonCartesianOp, "DENSE_LIMIT", 1 << 40 if dense else 0)
        monkeypatch.setattr(NonCartesianOp, "EPS", eps)
        return _cg_recon_trajectory_gradient(traj, kdata, target)

    reference = grad(True, base.double())
    assert nrmse(grad(False, base), reference) <= 1e-3
    assert nrmse(grad(False, base, eps=1e-5), reference) > 1e-2  # the old single-precision transform
    zero = torch.zeros_like(base)  # the very first step: all samples at k = 0 (CG is past convergence, so
    dense, fast = grad(True, zero), grad(False, zero)  # rounding decides details; the size must agree)
    assert 0.5 < float(fast.norm() / dense.norm()) < 2
    assert float(grad(False, zero, eps=1e-5).norm() / dense.norm()) > 100
