"""Linear operators with adjoints that compose: the forward models of reconstruction.

Every operator acts on the *trailing* dimensions given by ``ishape`` and returns trailing ``oshape``;
leading (batch) dimensions pass through. Shapes are checked on every call (as in sigpy), ``op.H`` is the
adjoint, ``A @ B`` composes, ``A + B`` adds and ``2.0 * A`` scales.

Sign convention (DESIGN.md): s(k) = Σ_r m(r)·exp(−i2π k·r), voxel centres at (i − n//2)·Δ, so the forward
operator image → k-space is the centred FFT and the image is the inverse FFT of k-space.

>>> import torch
>>> F = FourierOp((4, 4))
>>> x = torch.randn(4, 4, dtype=torch.complex64)
>>> bool(torch.allclose(F.H(F(x)), x, atol=1e-6))
True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from mrbridge.recon.nufft import nufft1, nufft2


def _shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(n) for n in shape)


class LinearOperator(ABC):
    """A linear map from tensors with trailing shape ``ishape`` to trailing shape ``oshape``."""

    def __init__(self, ishape: Sequence[int], oshape: Sequence[int]) -> None:
        self.ishape = _shape(ishape)
        self.oshape = _shape(oshape)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator: x (…, *ishape) → (…, *oshape)."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint: y (…, *oshape) → (…, *ishape)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check(self, x, self.ishape, "input")
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:
        """The adjoint operator."""
        return AdjointOp(self)

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        return ComposedOp(self, other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        return SumOp(self, other)

    def __mul__(self, scalar: float | complex) -> LinearOperator:
        return ScaledOp(self, scalar)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ishape={self.ishape}, oshape={self.oshape})"


def _check(op: LinearOperator, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    n = len(shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != shape:
        raise ValueError(f"{op!r}: {what} must have trailing shape {shape}, got {tuple(x.shape)}")


class AdjointOp(LinearOperator):
    """The adjoint A^H of an operator A (``A.H``); ``A.H.H`` is ``A`` again."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.oshape, op.ishape)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    @property
    def H(self) -> LinearOperator:
        return self.op

    def __repr__(self) -> str:
        return f"{self.op!r}.H"


class ComposedOp(LinearOperator):
    """A @ B: apply B, then A. A may act on trailing dims of B's output (e.g. FourierOp @ CoilOp)."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        n = len(a.ishape)
        if len(b.oshape) < n or b.oshape[len(b.oshape) - n :] != a.ishape:
            raise ValueError(f"cannot compose {a!r} @ {b!r}: {b.oshape} does not end with {a.ishape}")
        super().__init__(b.ishape, b.oshape[: len(b.oshape) - n] + a.oshape)
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.forward(self.b.forward(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.b.adjoint(self.a.adjoint(y))

    def __repr__(self) -> str:
        return f"({self.a!r} @ {self.b!r})"


class SumOp(LinearOperator):
    """A + B (same shapes)."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        if (a.ishape, a.oshape) != (b.ishape, b.oshape):
            raise ValueError(f"cannot add {a!r} + {b!r}: shapes differ")
        super().__init__(a.ishape, a.oshape)
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.forward(x) + self.b.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.a.adjoint(y) + self.b.adjoint(y)


class ScaledOp(LinearOperator):
    """c·A for a scalar c (the adjoint uses conj(c))."""

    def __init__(self, op: LinearOperator, scalar: float | complex) -> None:
        if not isinstance(scalar, (int, float, complex)):
            raise TypeError(f"{op!r} can only be multiplied by a Python scalar, got {type(scalar).__name__}")
        super().__init__(op.ishape, op.oshape)
        self.op, self.scalar = op, scalar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scalar * self.op.forward(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.scalar.conjugate() * self.op.adjoint(y)


class IdentityOp(LinearOperator):
    """The identity on trailing shape ``shape``."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y


class FourierOp(LinearOperator):
    """Centred orthonormal Cartesian FFT over the trailing ``len(shape)`` dimensions.

    forward: image (…, *shape) → k-space (…, *shape), ``fftshift(fftn(ifftshift(x)))``, norm="ortho";
    adjoint = inverse (the reconstruction). k index j ↔ k = (j − n//2)/FOV.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(shape, shape)
        self.dims = tuple(range(-len(self.ishape), 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dims
        return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, d), dim=d, norm="ortho"), d)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        d = self.dims
        return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(y, d), dim=d, norm="ortho"), d)


class SamplingOp(LinearOperator):
    """Pick samples from a grid: (…, *shape) → (…, M) at flat ``index`` (M,); the adjoint zero-fills.

    Repeated indices are allowed (the adjoint sums them).
    """

    def __init__(self, index: torch.Tensor, shape: Sequence[int]) -> None:
        shape = _shape(shape)
        if index.dim() != 1 or index.dtype != torch.int64:
            raise ValueError(f"SamplingOp index must be (M,) int64, got {tuple(index.shape)} {index.dtype}")
        n = math.prod(shape)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise ValueError(f"SamplingOp index outside the grid {shape} (0..{n - 1})")
        super().__init__(shape, (index.numel(),))
        self.index = index

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> SamplingOp:
        """Sampling of the True entries of a boolean ``mask`` (*shape)."""
        return cls(torch.flatten(mask).nonzero().squeeze(1), mask.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[: x.dim() - len(self.ishape)], -1)
        return flat[..., self.index.to(x.device)]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        batch = y.shape[:-1]
        out = y.new_zeros(*batch, math.prod(self.ishape))
        out = out.index_add(-1, self.index.to(y.device), y)
        return out.reshape(*batch, *self.ishape)


class CoilOp(LinearOperator):
    """Multiply by coil sensitivities: image (…, *shape) → coil images (…, coils, *shape).

    sens: Tensor  # (coils, *shape) complex
    """

    def __init__(self, sens: torch.Tensor) -> None:
        super().__init__(sens.shape[1:], sens.shape)
        self.sens = sens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-len(self.ishape) - 1) * self.sens

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (self.sens.conj() * y).sum(-len(self.ishape) - 1)


class NonCartesianOp(LinearOperator):
    """Fourier transform at arbitrary k-space positions, differentiable w.r.t. the image AND ``traj``.

    forward: image (…, z, y, x) → samples (…, M), y_m = Σ_r x(r)·exp(−i2π k_m·r) / √N, r at (i − n//2)·Δ;
    on a Cartesian grid it equals ``FourierOp`` (flattened).

    Two implementations, equal to ≤ 1e-4 relative (tests/recon/test_nufft.py):

    * ``exact=True``: the dense DFT. The 3-D sum factorises per axis, so each chunk of samples costs one
      complex matrix product (BLAS); O(M·N) — exact to rounding; the test reference.
    * ``exact=False``: a NUFFT (finufft, :mod:`mrbridge.recon.nufft`) of relative accuracy ``eps``,
      O(N log N + M), with its own autograd (gradients w.r.t. the points are NUFFTs too). Axes of one voxel
      (2-D slices) are left out of the transform: there r = 0 and k along them does not matter. It computes in
      double precision whenever ``eps`` is below what single precision reaches (< 1e-6; the default ``EPS`` is)
      and returns the input's precision.
    * ``exact=None`` (default): dense when M·N ≤ ``DENSE_LIMIT`` (~16² samples × 16² voxels: there the
      DFT is exact and as fast as the NUFFT, 1–2 ms on one core), else the NUFFT (6× faster at 32², 17× at 96²).

    Why ``EPS`` is 1e-10: CG on (AᴴA + λI)x = Aᴴy amplifies an error e of Aᴴy in the null space of A by 1/λ
    while the image itself is scaled by 1/‖AᴴA‖; NUFFT errors are ε·‖y‖₁ spread over all voxels, so the image
    error is ≈ ε·M/λ·‖y‖₁/|⟨y⟩| relative. A trajectory learned from zero (every sample at k ≈ 0, ‖AᴴA‖ = M)
    with RF-spoiled, phase-scattered data and λ = 0.01 needs ε ≲ 1e-9 at 32². With single precision (1e-5)
    GRE-from-zero's first gradient w.r.t. the trajectory (all samples at k = 0) was 2·10⁴× the dense DFT's
    (cosine 0.2); Adam's second-moment estimate kept that size, so the trajectory barely moved afterwards
    (validation NRMSE 0.30 after 100 steps; 0.14 when only the first step is exact; 0.10 by step 350 at 1e-10
    throughout, as with the float32 dense DFT, exact at k = 0). Double precision at 1e-10 costs ≈ 1.1–1.6× the
    single one at 1e-5.

    ``normal(x)`` is AᴴA x by Toeplitz embedding (two FFTs of twice the grid per call): use it in iterative solvers.

    traj: Tensor  # (M, 3) 1/m, (kx, ky, kz); may require grad
    shape: (z, y, x) image grid;  fov: (x, y, z) m
    chunk: samples per block of the dense DFT;  eps: NUFFT relative accuracy (None: ``EPS``)
    """

    #: largest samples × voxels computed by the dense DFT when ``exact`` is None
    DENSE_LIMIT = 1 << 16
    #: default NUFFT relative accuracy (computed in double precision; see the class docstring)
    EPS = 1e-10
    #: the smallest ``eps`` computed in single precision (finufft's float32 transforms reach ~1e-6)
    SINGLE_EPS = 1e-6

    def __init__(
        self,
        traj: torch.Tensor,
        shape: Sequence[int],
        fov: Sequence[float],
        *,
        chunk: int = 4096,
        exact: bool | None = None,
        eps: float | None = None,
    ) -> None:
        shape = _shape(shape)
        if len(shape) != 3 or traj.dim() != 2 or traj.shape[1] != 3:
            raise ValueError(f"NonCartesianOp needs traj (M, 3) and shape (z, y, x), got {tuple(traj.shape)}, {shape}")
        super().__init__(shape, (traj.shape[0],))
        self.traj = traj
        self.fov = tuple(float(f) for f in fov)
        self.chunk = chunk
        self.scale = 1.0 / math.sqrt(math.prod(shape))
        size = traj.shape[0] * math.prod(shape)
        self.exact = size <= self.DENSE_LIMIT if exact is None else bool(exact)
        self.eps = self.EPS if eps is None else float(eps)

    # ------------------------------------------------------------------ NUFFT
    def _axes(self) -> list[int]:
        """Image axes (0 = z, 1 = y, 2 = x) in the transform: those with more than one voxel (at least x)."""
        return [a for a in range(3) if self.ishape[a] > 1] or [2]

    def _work(self, like: torch.Tensor) -> torch.dtype:
        """The complex dtype the NUFFT computes in: double below ``SINGLE_EPS``, else that of ``like``/``traj``."""
        if self.eps < self.SINGLE_EPS or torch.float64 in (like.dtype, self.traj.dtype) \
                or like.dtype == torch.complex128:
            return torch.complex128
        return torch.complex64

    @staticmethod
    def _out(like: torch.Tensor) -> torch.dtype:
        """The complex dtype returned for an input ``like`` (its own, or the complex one of a real input)."""
        if like.is_complex():
            return like.dtype
        return torch.complex128 if like.dtype == torch.float64 else torch.complex64

    def _omega(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(M, d) radians per voxel, ω = 2π k Δ, columns in image-axis order (z, y, x) of ``_axes``; real
        dtype of the complex ``dtype``."""
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        traj = self.traj.to(device=device, dtype=real)
        cols = [traj[:, 2 - a] * (2 * math.pi * self.fov[2 - a] / self.ishape[a]) for a in self._axes()]
        return torch.stack(cols, 1)

    def _nufft_forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = self._axes()
        batch = x.shape[:-3]
        sub = tuple(self.ishape[a] for a in axes)
        work = self._work(x)
        y = nufft2(x.reshape(*batch, *sub).to(work), self._omega(x.device, work), eps=self.eps)
        return (y * self.scale).to(self._out(x))

    def _nufft_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        axes = self._axes()
        batch = y.shape[:-1]
        sub = tuple(self.ishape[a] for a in axes)
        work = self._work(y)
        x = nufft1(y.to(work), self._omega(y.device, work), sub, eps=self.eps) * self.scale
        return x.to(self._out(y)).reshape(*batch, *self.ishape)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """AᴴA x (…, z, y, x) → (…, z, y, x) by Toeplitz embedding: one FFT pair on a grid twice the size.

        AᴴA is a convolution, (AᴴA x)_j = Σ_j' x_j' T(j − j') with T(d) = (1/N) Σ_m exp(+i ω_m·d), d ∈ [−n, n)
        per axis — one type-1 NUFFT of ones, computed on the first call and kept (it follows ``traj``'s autograd,
        so the gradient w.r.t. the trajectory flows through it too). For iterative solvers: per iteration it
        costs two FFTs of (2n)ᵈ instead of a NUFFT pair. The dense DFT (``exact``) computes A.H(A(x)) itself.
        """
        _check(self, x, self.ishape, "input")
        if self.exact:
            return self.adjoint(self.forward(x))
        axes = self._axes()
        sub = tuple(self.ishape[a] for a in axes)
        dims = tuple(range(-len(sub), 0))
        kernel = self._toeplitz_kernel(x)
        batch = x.shape[:-3]
        xs = x.reshape(*batch, *sub)
        pad: list[int] = []
        for n in reversed(sub):
            pad += [0, n]
        big = torch.fft.fftn(torch.nn.functional.pad(xs, pad), dim=dims)
        y = torch.fft.ifftn(big * kernel, dim=dims)
        for d, n in zip(dims, sub, strict=True):
            y = y.narrow(d, 0, n)
        return y.reshape(*batch, *self.ishape)

    def _toeplitz_kernel(self, like: torch.Tensor) -> torch.Tensor:
        """FFT of the circulant embedding of T on the (2n)ᵈ grid, complex dtype of ``like``."""
        dtype = like.dtype if like.is_complex() else torch.complex64
        key = (dtype, like.device, self.traj._version)
        cached = getattr(self, "_kernel", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        sub = tuple(self.ishape[a] for a in self._axes())
        work = self._work(like)
        omega = self._omega(like.device, work)
        ones = torch.ones(omega.shape[0], dtype=work, device=like.device)
        t = nufft1(ones, omega, tuple(2 * n for n in sub), eps=self.eps) * self.scale**2  # index i ↔ d = i − n
        dims = tuple(range(-len(sub), 0))
        kernel = torch.fft.fftn(torch.fft.ifftshift(t, dims), dim=dims).to(dtype)  # d = 0 at index 0
        self._kernel = (key, kernel)
        return kernel

    # ------------------------------------------------------------------ dense DFT
    def _phases(self, k: torch.Tensor, axis: int, n: int) -> torch.Tensor:
        """exp(−i2π k_axis·r) for the chunk: (Mc, n) complex."""
        delta = self.fov[axis] / n
        r = (torch.arange(n, device=k.device, dtype=k.dtype) - n // 2) * delta
        p = -2 * math.pi * k[:, axis, None] * r
        return torch.complex(torch.cos(p), torch.sin(p))

    def _chunks(self) -> list[tuple[int, int]]:
        m = self.oshape[0]
        return [(s, min(s + self.chunk, m)) for s in range(0, m, self.chunk)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return self._nufft_forward(x)
        nz, ny, nx = self.ishape
        batch = x.shape[:-3]
        xb = x.reshape(-1, nz, ny, nx)
        out = []
        for s, e in self._chunks():
            k = self.traj[s:e].to(x.device)
            ex, ey, ez = self._phases(k, 0, nx), self._phases(k, 1, ny), self._phases(k, 2, nz)
            t = xb @ ex.to(x.dtype).T  # (B, z, y, Mc)
            t = torch.einsum("bzym,my->bzm", t, ey.to(x.dtype))
            out.append(torch.einsum("bzm,mz->bm", t, ez.to(x.dtype)))
        y = torch.cat(out, -1) if out else xb.new_zeros(xb.shape[0], 0)
        return (y * self.scale).reshape(*batch, -1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.exact:
            return self._nufft_adjoint(y)
        nz, ny, nx = self.ishape
        batch = y.shape[:-1]
        yb = y.reshape(-1, y.shape[-1])
        x = yb.new_zeros(yb.shape[0], nz * ny, nx)
        for s, e in self._chunks():
            k = self.traj[s:e].to(y.device)
            ex, ey, ez = self._phases(k, 0, nx), self._phases(k, 1, ny), self._phases(k, 2, nz)
            u = torch.einsum("bm,mz,my->bzym", yb[:, s:e], ez.conj().to(y.dtype), ey.conj().to(y.dtype))
            x = x + u.reshape(yb.shape[0], nz * ny, e - s) @ ex.conj().to(y.dtype)
        return (x * self.scale).reshape(*batch, nz, ny, nx)
