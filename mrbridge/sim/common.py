"""From a simulated signal to RawData: readout shape, noise (SPIN's convention), labels, flags, trajectory."""

from __future__ import annotations

import ismrmrd
import torch

from mrbridge.raw.rawdata import LABELS, RawData, RawHeader
from mrbridge.sequence.model import Sequence
from mrbridge.system import GAMMA_HZ_PER_T

#: noise-only samples per coil in RawData.noise when noise is on
NOISE_SAMPLES = 256

#: label whose first/last readout gets the flag -> (ISMRMRD first bit, last bit, labels that enclose it)
_FLAG_GROUPS = {
    "kspace_encode_step_1": (ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1, ismrmrd.ACQ_LAST_IN_ENCODE_STEP1,
                             ("repetition", "slice", "contrast")),
    "contrast": (ismrmrd.ACQ_FIRST_IN_CONTRAST, ismrmrd.ACQ_LAST_IN_CONTRAST, ("repetition", "slice", "contrast")),
    "slice": (ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_LAST_IN_SLICE, ("repetition", "slice")),
    "repetition": (ismrmrd.ACQ_FIRST_IN_REPETITION, ismrmrd.ACQ_LAST_IN_REPETITION, ("repetition",)),
}


def complex_noise(shape: tuple[int, ...], sigma: float, gen: torch.Generator, *, like: torch.Tensor) -> torch.Tensor:
    """Complex Gaussian noise of σ on each of the real and imaginary parts, drawn on the CPU from ``gen`` (identical
    on every device), with the dtype and device of ``like``."""
    pair = torch.randn((*shape, 2), generator=gen, dtype=like.real.dtype) * sigma
    return torch.complex(pair[..., 0], pair[..., 1]).to(like.device)


def to_rawdata(seq: Sequence, signal: torch.Tensor, *, noise: float = 0.0, seed: int = 0,
               field_strength_t: float = 3.0) -> RawData:
    """Package a simulated signal as RawData, optionally with seeded complex Gaussian noise.

    Parameters
    ----------
    seq: the simulated sequence (readouts, labels, trajectory, timing, header)
    signal: Tensor  # (coils, adc_samples) complex, as returned by a simulator
    noise: σ of the noise on each of the real and imaginary parts, relative to max |signal| (SPIN: 0.025)
    seed: seed of the noise (drawn on the CPU, so identical on every device)
    field_strength_t: B0 written to the header

    Returns
    -------
    RawData with kdata (coils, readouts, samples) (differentiable w.r.t. signal), traj (readouts, samples, 3)
    1/m, labels and ISMRMRD flags per readout, sample_time, and a noise scan (coils, 256) when noise > 0.
    """
    if noise < 0:
        raise ValueError(f"noise = {noise}, expected >= 0")
    readouts = seq.readouts()
    samples = seq.samples_per_readout()
    coils = signal.shape[0]
    kdata = signal.reshape(coils, len(readouts), samples)
    noise_scan = None
    if noise > 0:
        sigma = noise * float(signal.detach().abs().max())
        gen = torch.Generator().manual_seed(seed)
        kdata = kdata + complex_noise(tuple(kdata.shape), sigma, gen, like=signal)
        noise_scan = complex_noise((coils, NOISE_SAMPLES), sigma, gen, like=signal)

    labels = {name: torch.tensor([getattr(lab, name) for *_, lab in readouts], dtype=torch.int64) for name in LABELS}
    first_rep, start, end, _ = readouts[0]
    dwell = float(seq[first_rep].event_time[start:end].detach().mean())
    traj = seq.kspace().reshape(len(readouts), samples, 3)
    info = seq.info
    header = RawHeader(
        sequence_name=info.name, trajectory=info.trajectory, encoded_fov=info.fov, encoded_matrix=info.matrix,
        recon_fov=info.fov, recon_matrix=info.matrix, field_strength_t=field_strength_t,
        larmor_hz=field_strength_t * GAMMA_HZ_PER_T, te=[info.te], tr=[info.tr],
        flip_angle_deg=[info.flip_angle_deg], coils=coils,
    )
    return RawData(
        kdata=kdata, header=header, traj=traj, labels=labels,
        flags=acquisition_flags(labels) | torch.tensor([lab.flags for *_, lab in readouts], dtype=torch.int64),
        sample_time=seq.adc_times().reshape(len(readouts), samples), noise=noise_scan, dwell=dwell,
        center_sample=center_sample(traj[0].detach()),
        provenance={"noise": repr(noise), "seed": str(seed)},
    )


def acquisition_flags(labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """ISMRMRD first/last flags (encode step 1, contrast, slice, repetition) from the readouts' labels.

    A readout is first (last) in, e.g., its slice when no earlier (later) readout of the same repetition has the
    same slice. labels: each (readouts,) int64. Returns: Tensor  # (readouts,) int64 bit mask.
    """
    n = len(next(iter(labels.values())))
    flags = [0] * n
    for first_bit, last_bit, keys in _FLAG_GROUPS.values():
        groups = list(zip(*(labels[k].tolist() for k in keys), strict=True))
        first: dict[tuple[int, ...], int] = {}
        last: dict[tuple[int, ...], int] = {}
        for i, g in enumerate(groups):
            first.setdefault(g, i)
            last[g] = i
        for i in first.values():
            flags[i] |= 1 << (first_bit - 1)
        for i in last.values():
            flags[i] |= 1 << (last_bit - 1)
    return torch.tensor(flags, dtype=torch.int64)


def center_sample(traj: torch.Tensor) -> int:
    """Index of the sample nearest k = 0 along a readout. traj: (samples, 3) 1/m."""
    direction = traj[-1] - traj[0]
    norm = torch.linalg.vector_norm(direction)
    if norm == 0:
        return 0
    return int(torch.argmin((traj @ (direction / norm)).abs()))
