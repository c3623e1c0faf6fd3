"""Non-uniform FFT (finufft) as torch autograd functions, differentiable w.r.t. the values AND the points.

Convention (that of finufft with ``modeord=0``): an image ``f`` of trailing shape ``n = (n_1, …, n_d)`` holds the
Fourier modes ``j_a = i_a − n_a//2`` (``i_a`` the array index), and a point is ``ω ∈ ℝᵈ`` in radians per voxel:

    type 2 (image → samples):  y_m = Σ_j f_j · exp(−i ω_m·j)         ``nufft2(f, ω)``
    type 1 (samples → image):  f_j = Σ_m y_m · exp(+i ω_m·j)         ``nufft1(y, ω, n)``  (the adjoint of type 2)

With ``ω_a = 2π k_a Δ_a`` these are mrbridge's s(k) = Σ_r m(r)·exp(−i2π k·r) at r = (i − n//2)·Δ and its adjoint.
The point axis ``a`` pairs with image dimension ``a`` (so for images (…, y, x) pass ω = (ω_y, ω_x)).

Gradients (torch's convention for a real loss L: the gradient of a complex tensor is 2∂L/∂z̄, of a real one ∂L/∂t;
g denotes the incoming gradient of the output):

* type 2, values:  ∂L/∂f = type 1 of g (the adjoint; y is holomorphic and linear in f).
* type 2, points:  ∂y_m/∂ω_{m,a} = Σ_j f_j·(−i j_a)·exp(−i ω_m·j) = type 2 of (−i j_a f), so
  ∂L/∂ω_{m,a} = Re Σ_batch conj(g_m) · type2(−i j_a f)_m   — one more type-2 transform per axis.
* type 1, values:  ∂L/∂y = type 2 of g.
* type 1, points:  ∂f_j/∂ω_{m,a} = y_m (i j_a) exp(+i ω_m·j), so
  ∂L/∂ω_{m,a} = Re Σ_j conj(g_j) y_m (i j_a) e^{iω_m·j} = Re Σ_batch y_m · conj(type2(−i j_a g)_m).

The backward passes are written with these same functions, so second derivatives work too.
Computation is on the CPU by finufft (threads: ``torch.get_num_threads()``); tensors on CUDA use cufinufft when it
is importable, else they are moved to the CPU and back (the CUDA path is untested here: no GPU in development).

>>> import torch, math
>>> f = torch.zeros(4, 4, dtype=torch.complex128); f[2, 3] = 1           # mode j = (0, 1)
>>> w = torch.tensor([[0.0, math.pi / 2]], dtype=torch.float64)
>>> y = nufft2(f, w)
>>> bool(torch.allclose(y, torch.tensor([-1j], dtype=torch.complex128)))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

try:  # pragma: no cover - depends on the installation
    import finufft as _finufft
except ImportError:  # pragma: no cover
    _finufft = None


def default_eps(dtype: torch.dtype) -> float:
    """The requested relative accuracy: 1e-6 in double precision, 1e-5 in single."""
    return 1e-6 if dtype in (torch.float64, torch.complex128) else 1e-5


def _complex(dtype: torch.dtype) -> torch.dtype:
    return {torch.float32: torch.complex64, torch.float64: torch.complex128}.get(dtype, dtype)


def _mode_weights(shape: Sequence[int], axis: int, like: torch.Tensor) -> torch.Tensor:
    """−i·j_a broadcastable over (…, *shape): the factor that turns a transform into its ∂/∂ω_a."""
    d = len(shape)
    n = shape[axis]
    j = torch.arange(n, device=like.device, dtype=like.real.dtype) - n // 2
    view = [1] * d
    view[axis] = n
    return (-1j * j).to(like.dtype).reshape(view)


# --------------------------------------------------------------------------- raw transforms (no autograd)
def _wrap(omega: np.ndarray) -> np.ndarray:
    """Points folded into [−π, π): the transforms are 2π-periodic in ω since the modes are integers."""
    return np.ascontiguousarray(np.remainder(omega + np.pi, 2 * np.pi) - np.pi)


def _run_cpu(kind: int, data: torch.Tensor, omega: torch.Tensor, shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """One finufft call. type 2: data (B, *shape) → (B, M); type 1: data (B, M) → (B, *shape)."""
    if _finufft is None:  # pragma: no cover
        raise ImportError("mrbridge.recon.nufft needs the finufft package (pip install finufft)")
    cdtype = data.dtype
    np_c = np.complex128 if cdtype == torch.complex128 else np.complex64
    np_r = np.float64 if cdtype == torch.complex128 else np.float32
    b = data.shape[0]
    d = len(shape)
    pts = omega.detach().cpu().numpy().astype(np_r)
    coords = [_wrap(pts[:, a]).astype(np_r) for a in range(d)]
    arr = np.ascontiguousarray(data.detach().cpu().resolve_conj().numpy().astype(np_c, copy=False))
    if b == 0 or pts.shape[0] == 0:
        out_shape = (b, pts.shape[0]) if kind == 2 else (b, *shape)
        return torch.zeros(out_shape, dtype=cdtype, device=data.device)
    # upsampling σ = 1.25 (a smaller fine grid, wider kernel) takes about half the time of σ = 2 where finufft reaches
    # eps with it without narrowing its kernel (and warning on stderr): double precision to 1e-8, single to 1e-4
    sigma = 1.25 if eps >= (1e-8 if np_c == np.complex128 else 1e-4) else 2.0
    plan = _finufft.Plan(kind, shape, n_trans=b, eps=eps, isign=-1 if kind == 2 else 1, dtype=np_c,
                         nthreads=max(1, torch.get_num_threads()), upsampfac=sigma)
    plan.setpts(*coords)
    out = plan.execute(arr)
    out = out.reshape((b, pts.shape[0]) if kind == 2 else (b, *shape))
    return torch.from_numpy(np.ascontiguousarray(out)).to(data.device)


def _run_cuda(kind: int, data: torch.Tensor, omega: torch.Tensor, shape: tuple[int, ...],
              eps: float) -> torch.Tensor | None:  # pragma: no cover - needs a GPU and cufinufft
    """cufinufft on CUDA tensors, or None when cufinufft is not importable (untested: no GPU in development)."""
    try:
        import cufinufft
    except ImportError:
        return None
    real = torch.float64 if data.dtype == torch.complex128 else torch.float32
    pts = torch.remainder(omega.detach().to(real) + math.pi, 2 * math.pi) - math.pi
    coords = [pts[:, a].contiguous() for a in range(len(shape))]
    b = data.shape[0]
    plan = cufinufft.Plan(kind, shape, n_trans=b, eps=eps, isign=-1 if kind == 2 else 1,
                          dtype="complex128" if data.dtype == torch.complex128 else "complex64")
    plan.setpts(*coords)
    out = plan.execute(data.detach().contiguous())
    return torch.as_tensor(out, device=data.device).reshape((b, pts.shape[0]) if kind == 2 else (b, *shape))


def _run(kind: int, data: torch.Tensor, omega: torch.Tensor, shape: tuple[int, ...], eps: float) -> torch.Tensor:
    if data.is_cuda:
        out = _run_cuda(kind, data, omega, shape, eps)
        if out is not None:
            return out
    return _run_cpu(kind, data, omega, shape, eps)


# --------------------------------------------------------------------------- autograd
class _Type2(torch.autograd.Function):
    """f (B, *shape) complex, ω (M, d) real → y (B, M)."""

    @staticmethod
    def forward(ctx: Any, f: torch.Tensor, omega: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(f, omega)
        ctx.eps = eps
        return _run(2, f, omega, tuple(f.shape[1:]), eps)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        f, omega = ctx.saved_tensors
        shape = tuple(f.shape[1:])
        grad_f = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_f = _Type1.apply(g, omega, shape, ctx.eps)
        if ctx.needs_input_grad[1]:
            d = len(shape)
            weighted = torch.cat([f * _mode_weights(shape, a, f) for a in range(d)])  # (d·B, *shape)
            dy = _Type2.apply(weighted, omega, ctx.eps).reshape(d, f.shape[0], -1)  # (d, B, M)
            grad_w = (g.conj().unsqueeze(0) * dy).real.sum(1).T.to(omega.dtype)  # (M, d)
        return grad_f, grad_w, None


class _Type1(torch.autograd.Function):
    """y (B, M) complex, ω (M, d) real → f (B, *shape)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, omega: torch.Tensor, shape: tuple[int, ...], eps: float) -> torch.Tensor:
        ctx.save_for_backward(y, omega)
        ctx.eps, ctx.shape = eps, shape
        return _run(1, y, omega, shape, eps)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        y, omega = ctx.saved_tensors
        shape = ctx.shape
        grad_y = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_y = _Type2.apply(g, omega, ctx.eps)
        if ctx.needs_input_grad[1]:
            d = len(shape)
            weighted = torch.cat([g * _mode_weights(shape, a, g) for a in range(d)])
            dy = _Type2.apply(weighted, omega, ctx.eps).reshape(d, y.shape[0], -1)
            grad_w = (y.unsqueeze(0) * dy.conj()).real.sum(1).T.to(omega.dtype)
        return grad_y, grad_w, None, None


def _prepare(values: torch.Tensor, omega: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if omega.dim() != 2 or omega.is_complex():
        raise ValueError(f"{what}: points must be real (M, d), got {tuple(omega.shape)} {omega.dtype}")
    cdtype = _complex(values.dtype) if not values.is_complex() else values.dtype
    if omega.dtype == torch.float64 and cdtype == torch.complex64:
        cdtype = torch.complex128
    return values.to(cdtype), omega


def nufft2(image: torch.Tensor, omega: torch.Tensor, *, eps: float | None = None) -> torch.Tensor:
    """Type 2: y_m = Σ_j image_j · exp(−i ω_m·j), j = index − n//2 per axis.

    image: Tensor  # (…, *n) complex, d = omega.shape[1] trailing image dims
    omega: Tensor  # (M, d) real, radians per voxel; may require grad
    returns: Tensor  # (…, M) complex
    """
    image, omega = _prepare(image, omega, "nufft2")
    d = omega.shape[1]
    if image.dim() < d:
        raise ValueError(f"nufft2: image {tuple(image.shape)} has fewer than d = {d} dims")
    shape = tuple(image.shape[image.dim() - d :])
    batch = image.shape[: image.dim() - d]
    e = default_eps(image.dtype) if eps is None else eps
    out = _Type2.apply(image.reshape(-1, *shape), omega, e)
    return out.reshape(*batch, omega.shape[0])


def nufft1(
    values: torch.Tensor, omega: torch.Tensor, shape: Sequence[int], *, eps: float | None = None
) -> torch.Tensor:
    """Type 1 (the adjoint of ``nufft2``): image_j = Σ_m values_m · exp(+i ω_m·j).

    values: Tensor  # (…, M) complex
    omega: Tensor  # (M, d) real, radians per voxel; may require grad
    returns: Tensor  # (…, *shape) complex
    """
    values, omega = _prepare(values, omega, "nufft1")
    shape = tuple(int(n) for n in shape)
    if len(shape) != omega.shape[1] or values.shape[-1] != omega.shape[0]:
        raise ValueError(f"nufft1: values {tuple(values.shape)}, points {tuple(omega.shape)} and shape {shape} "
                         "disagree; expected values (…, M), points (M, d), d = len(shape)")
    batch = values.shape[:-1]
    e = default_eps(values.dtype) if eps is None else eps
    out = _Type1.apply(values.reshape(-1, values.shape[-1]), omega, shape, e)
    return out.reshape(*batch, *shape)
