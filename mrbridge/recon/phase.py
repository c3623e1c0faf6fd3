"""Image-domain networks that see images without their smooth background phase.

Scanner images carry a slowly varying phase (receive-coil reference, B0, RF) that simulations need not share; a
network trained on (real, imaginary) channels of one phase convention fails on another (a constant phase of π/2
costs the simulation-trained unrolled recon 17 dB). ``PhaseNormalised(net)(x) = e^{iφ}·net(e^{−iφ}·x)`` with φ the
phase of a low-pass copy of x (a Gaussian window on the centred k-space, detached): the network works on images
whose smooth phase is ~0, and the output gets the phase back. A network that is the identity stays the identity.
"""

from __future__ import annotations

import torch
from torch import nn

#: σ of the Gaussian k-space window, as a fraction of the matrix (≈ 1/(2π·0.08) ≈ 2 voxels of image blur)
WINDOW = 0.08


def smooth_phase(image: torch.Tensor) -> torch.Tensor:
    """exp(iφ) of the low-pass copy of ``image`` (…, y, x) complex (in its background: the image's mean phase;
    1 for an image of zeros). Detached."""
    x = image.detach()
    ny, nx = x.shape[-2:]
    ky = torch.fft.fftfreq(ny, device=x.device)
    kx = torch.fft.fftfreq(nx, device=x.device)
    window = torch.exp(-(ky[:, None] ** 2 + kx[None, :] ** 2) / (2 * WINDOW**2))
    low = torch.fft.ifft2(torch.fft.fft2(x) * window.to(x.real.dtype))
    tiny = torch.finfo(x.real.dtype).tiny
    # where the low-pass copy is ~0 (background) its phase is rounding noise: blend in the image's mean phase,
    # which turns with the image, so a global phase still passes through exactly
    total = low.sum((-2, -1), keepdim=True)
    mean_phase = torch.where(total.abs() > tiny, total / total.abs().clamp_min(tiny), torch.ones_like(total))
    low = low + 1e-3 * low.abs().amax((-2, -1), keepdim=True) * mean_phase
    magnitude = low.abs()
    return torch.where(magnitude > tiny, low / magnitude.clamp_min(tiny), torch.ones_like(low))


class PhaseNormalised(nn.Module):
    """``net`` applied to the image without its smooth phase, the phase restored after (see the module docstring).

    net: maps (…, z, y, x) complex → the same shape
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (…, z, y, x) complex or real → (…, z, y, x) complex."""
        x = image if image.is_complex() else image.to(torch.complex64)
        phase = smooth_phase(x)
        return phase * self.net(x * phase.conj())
