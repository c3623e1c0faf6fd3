"""Hand-made Sequences for the export tests (independent of the builders)."""

from __future__ import annotations

import math

import torch

from mrbridge.sequence.model import Pulse, PulseUsage, ReadoutLabels, Repetition, Sequence, SequenceInfo


def gre(n: int = 16, *, fov: float = 0.2, dwell: float = 20e-6, tr: float = 10e-3, flip_deg: float = 15.0,
        prephase_time: float = 2e-3, rf_spoiling_deg: float = 117.0) -> Sequence:
    """Cartesian spoiled GRE: excitation, prephaser event, n ADC events, spoiler event (RF spoiled)."""
    dk = 1 / fov
    reps = []
    for line in range(n):
        ky = (line - n // 2) * dk
        phase = math.radians(0.5 * rf_spoiling_deg * (line**2 + line + 2)) % (2 * math.pi)
        times = [prephase_time] + [dwell] * n + [tr - prephase_time - n * dwell]
        moments = ([[-(n // 2 + 1) * dk, ky, 0.0]] + [[dk, 0.0, 0.0]] * n
                   + [[(n // 2 + 1) * dk, -ky, 4 * n * dk]])
        adc = [False] + [True] * n + [False]
        reps.append(Repetition(
            pulse=Pulse(torch.tensor(math.radians(flip_deg)), torch.tensor(phase)),
            event_time=torch.tensor(times), gradm=torch.tensor(moments), adc_usage=torch.tensor(adc),
            adc_phase=torch.full((len(times),), phase), readouts=[ReadoutLabels(kspace_encode_step_1=line)]))
    return Sequence(reps, SequenceInfo(name="handmade-gre", fov=(fov, fov, 0.005), matrix=(n, n, 1),
                                       te=prephase_time + (n // 2 + 1) * dwell, tr=tr, flip_angle_deg=flip_deg))


def spin_echo_fid(n: int = 8, *, gap: float = 5e-3, dwell: float = 40e-6) -> Sequence:
    """Excitation then refocusing (second repetition starts with the 180°), readout after it; 1 line."""
    dk = 1 / 0.2
    exc = Repetition(
        pulse=Pulse(torch.tensor(math.pi / 2), torch.tensor(math.pi / 2)),
        event_time=torch.tensor([gap]), gradm=torch.tensor([[(n // 2 + 1) * dk, 0.0, 0.0]]),
        adc_usage=torch.tensor([False]), adc_phase=torch.zeros(1))
    times = [gap - (n // 2 + 1) * dwell] + [dwell] * n + [gap]
    moments = [[0.0, 0.0, 0.0]] + [[dk, 0.0, 0.0]] * n + [[0.0, 0.0, 0.0]]
    ref = Repetition(
        pulse=Pulse(torch.tensor(math.pi), torch.tensor(0.0), PulseUsage.REFOCUSING),
        event_time=torch.tensor(times), gradm=torch.tensor(moments),
        adc_usage=torch.tensor([False] + [True] * n + [False]), adc_phase=torch.zeros(n + 2))
    return Sequence([exc, ref], SequenceInfo(name="se", fov=(0.2, 0.2, 0.005), matrix=(n, 1, 1)))
