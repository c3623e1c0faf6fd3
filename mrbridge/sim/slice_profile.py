"""Slice profiles: the rotation a played RF waveform applies at each z, as Cayley–Klein parameters.

A rotation U = [[α, −β*], [β, α*]] ∈ SU(2) acts on the magnetisation (Pauly et al., IEEE TMI 10:53, 1991) as

    M+′ = 2 α* β Mz + α*² M+ − β² M+*,        Mz′ = (|α|² − |β|²) Mz − 2 Re(α* β* M+).

A right-handed rotation by θ about the unit axis n is α = cos(θ/2) − i n_z sin(θ/2), β = (n_y − i n_x) sin(θ/2),
so that an RF of angle θ and phase φ (n = (cos φ, sin φ, 0)) turns Mz = 1 into M+ = −i·e^{iφ}·sin θ, the
model's convention. In the hard-pulse approximation every RF sample i is such a rotation by the vector
2π·dt·(Re b1_i, Im b1_i, −gz_i·z) (b1 in Hz, gz in Hz/m; the z component is negative because a moment k turns
M+ into M+·e^{−i2πkz}, a left-handed precession).

The model plays a pulse instantaneously at its centre while the neighbouring events already apply the gradient
moments k_before (pulse start → centre) and k_after (centre → end) of the slice-select lobe played during the
pulse. The operator that replaces the instantaneous rotation is therefore referenced to the centre:
R_eff(z) = P(−k_after)·R_pulse(z)·P(−k_before), with P(k) the free precession by the moment k.
"""

from __future__ import annotations

import math

import torch

from mrbridge.sequence.model import PulseWaveform


def _compose(a2: torch.Tensor, b2: torch.Tensor, a1: torch.Tensor,
             b1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cayley–Klein parameters of U2·U1 (U1 first)."""
    return a2 * a1 - b2.conj() * b1, b2 * a1 + a2.conj() * b1


def cayley_klein(waveform: PulseWaveform, z: torch.Tensor,
                 scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator of ``waveform`` at each z, referenced to the pulse centre (module docstring).

    Parameters
    ----------
    waveform: the played RF and slice gradient
    z: Tensor      # (P,) m, positions
    scale: Tensor  # (P,) or scalar, factor on b1 (relative B1+, flip angle scaling)

    Returns
    -------
    alpha: Tensor  # (P,) complex128
    beta: Tensor   # (P,) complex128
    """
    z = z.detach().to(torch.float64)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=z.device).detach().expand_as(z)
    b1 = waveform.b1.detach().to(device=z.device, dtype=torch.complex128)
    gz = waveform.gz.detach().to(device=z.device, dtype=torch.float64)
    step = 2 * math.pi * waveform.dt
    a = torch.ones_like(z, dtype=torch.complex128)
    b = torch.zeros_like(a)
    for i in range(b1.shape[0]):
        wx, wy = step * scale * b1[i].real, step * scale * b1[i].imag  # (P,)
        wz = (-step * gz[i]) * z
        theta = torch.sqrt(wx * wx + wy * wy + wz * wz)
        half = torch.sin(theta / 2) / torch.where(theta > 0, theta, 1.0)  # sin(θ/2)/θ: n·sin(θ/2) = w·half
        ai = torch.complex(torch.cos(theta / 2), -wz * half)
        bi = torch.complex(wy * half, -wx * half)
        a, b = _compose(ai, bi, a, b)
    k_before, k_after = lobe_moments(waveform)
    # P(−k) is the right-handed z rotation by 2π·k·z: α = e^{−iπkz}, β = 0
    before = torch.polar(torch.ones_like(z), -math.pi * k_before * z)
    after = torch.polar(torch.ones_like(z), -math.pi * k_after * z)
    return after * a * before, after.conj() * b * before


def lobe_moments(waveform: PulseWaveform) -> tuple[float, float]:
    """Moments (1/m) of the z gradient from the pulse start to its centre and from the centre to its end."""
    gz = waveform.gz.detach().to("cpu", torch.float64)
    edges = torch.arange(gz.shape[0] + 1, dtype=torch.float64) * waveform.dt
    covered = (torch.clamp(edges[1:], max=waveform.centre) - torch.clamp(edges[:-1], max=waveform.centre))
    before = float((gz * covered).sum())
    return before, float(gz.sum()) * waveform.dt - before


def rotate(alpha: torch.Tensor, beta: torch.Tensor, mp: torch.Tensor,
           mz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the rotation (α, β) to transverse ``mp`` (complex) and longitudinal ``mz`` (real), elementwise."""
    ac = alpha.conj()
    new_mp = 2 * ac * beta * mz + ac * ac * mp - beta * beta * mp.conj()
    new_mz = (alpha.abs() ** 2 - beta.abs() ** 2) * mz - 2 * (ac * beta.conj() * mp).real
    return new_mp, new_mz


def profile(waveform: PulseWaveform, z: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Transverse magnetisation M+(z) the pulse leaves from Mz = 1, referenced to its centre.

    Returns: Tensor  # (P,) complex128
    """
    alpha, beta = cayley_klein(waveform, z, scale)
    return 2 * alpha.conj() * beta
