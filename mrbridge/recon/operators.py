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
    """Exact discrete Fourier transform at arbitrary k-space positions, differentiable w.r.t. ``traj``.

    forward: image (…, z, y, x) → samples (…, M), y_m = Σ_r x(r)·exp(−i2π k_m·r) / √N, r at (i − n//2)·Δ;
    on a Cartesian grid it equals ``FourierOp`` (flattened). The 3-D sum factorises per axis, so each chunk
    of samples costs one complex matrix product (BLAS); the cost is O(M·N): right for matrices up to
    ~96² (and for every gradient w.r.t. the trajectory, which table-based NUFFTs do not give exactly).

    traj: Tensor  # (M, 3) 1/m, (kx, ky, kz); may require grad
    shape: (z, y, x) image grid;  fov: (x, y, z) m
    """

    def __init__(
        self,
        traj: torch.Tensor,
        shape: Sequence[int],
        fov: Sequence[float],
        *,
        chunk: int = 4096,
    ) -> None:
        shape = _shape(shape)
        if len(shape) != 3 or traj.dim() != 2 or traj.shape[1] != 3:
            raise ValueError(f"NonCartesianOp needs traj (M, 3) and shape (z, y, x), got {tuple(traj.shape)}, {shape}")
        super().__init__(shape, (traj.shape[0],))
        self.traj = traj
        self.fov = tuple(float(f) for f in fov)
        self.chunk = chunk
        self.scale = 1.0 / math.sqrt(math.prod(shape))

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
