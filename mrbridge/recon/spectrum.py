"""Acquisitions without spatial encoding (FIDs, spectroscopy): each readout's spectrum is its image.

With the signal convention s(t) = Σ m·e^{−i2πΔf·t} (DESIGN.md), the spectrum S(f) = Σ_t s(t)·e^{+i2πf·t} is the
*inverse* DFT over the samples, as the image is the inverse DFT of k-space: a spin Δf off resonance peaks at
+Δf. Sample i of the centred spectrum lies at f = (i − n//2)/(n·dwell).
"""

from __future__ import annotations

import torch

from mrbridge.raw.rawdata import RawData

#: a readout whose every sample has |k| below this (1/m: one cycle per km) carries no spatial encoding
UNENCODED_K = 1e-3


def is_unencoded(raw: RawData) -> bool:
    """True for an acquisition without spatial encoding (an FID): its header encodes a 1×1×1 matrix and no
    sample of its trajectory leaves k = 0. (A sequence whose gradients merely *start* at zero, as one learned
    from zero does, keeps its image matrix and is reconstructed as an image.)"""
    return (tuple(raw.header.encoded_matrix) == (1, 1, 1) and raw.traj is not None
            and bool(raw.traj.abs().max() < UNENCODED_K))


def spectra(kdata: torch.Tensor) -> torch.Tensor:
    """Centred spectra of every readout: (…, samples) complex → (…, samples), unitary like the image FFT."""
    return torch.fft.fftshift(torch.fft.ifft(kdata, dim=-1, norm="ortho"), dim=-1)


def frequencies(samples: int, dwell: float) -> torch.Tensor:
    """(samples,) Hz of the centred spectrum's samples: (i − n//2)/(n·dwell)."""
    return (torch.arange(samples) - samples // 2) / (samples * dwell)
