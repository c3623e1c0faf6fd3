"""The hardware penalty's IEC dB/dt (PNS) term: zero for gentle gradients, the hand-computed value when exceeded."""

from __future__ import annotations

import pytest
import torch

from mrbridge.optimize import losses
from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Pulse, Repetition, Sequence
from mrbridge.sequence.protocol import GreProtocol
from mrbridge.system import System


def _one_lobe(amplitude_t_per_m: float, time: float, system: System, dtype: torch.dtype) -> Sequence:
    """One repetition: an event of ``time`` at the amplitude on x (reached from 0 over time/2), then 1 s empty."""
    gradm = torch.zeros(2, 3, dtype=dtype)
    gradm[0, 0] = amplitude_t_per_m * system.gamma_hz_per_t * time
    rep = Repetition(pulse=Pulse(torch.tensor(0.1, dtype=dtype), torch.tensor(0.0, dtype=dtype)),
                     event_time=torch.tensor([time, 1.0], dtype=dtype), gradm=gradm,
                     adc_usage=torch.zeros(2, dtype=torch.bool), adc_phase=torch.zeros(2, dtype=dtype))
    return Sequence([rep])


def test_gentle_sequence_has_no_penalty() -> None:
    prisma = System.load("prisma")
    assert float(losses.hardware_penalty(build(GreProtocol(matrix=16, dummies=0)), prisma)) == 0.0
    # 40 mT/m in 0.2 ms (200 T/m/s): dB/dt 40 T/s under the 16·(1 + 0.36/0.2) = 44.8 T/s limit
    assert float(losses.hardware_penalty(_one_lobe(0.040, 0.4e-3, prisma, torch.float64), prisma)) == 0.0


def test_pns_beyond_the_iec_limit_is_penalised() -> None:
    prisma = System.load("prisma")
    # 70 mT/m (< 80) in 0.4 ms: slew 175 T/m/s (< 200) but dB/dt = 35 T/s > 16·(1 + 0.36/0.4) = 30.4 T/s
    seq = _one_lobe(0.070, 0.8e-3, prisma, torch.float64)
    ratio = 175 * 0.2 / (0.8 * 20 * (1 + 0.36 / 0.4))
    assert float(losses.hardware_penalty(seq, prisma)) == pytest.approx((ratio - 1) ** 2, rel=1e-9)
    # a system without the PNS term's bite (huge rheobase) sees nothing: amplitude and slew fit
    lenient = prisma.model_copy(update={"iec": prisma.iec.model_copy(update={"dbdt_rheobase_t_per_s": 1e6})})
    assert float(losses.hardware_penalty(seq, lenient)) == 0.0


def test_pns_penalty_gradcheck() -> None:
    prisma = System.load("prisma")
    seq = _one_lobe(0.070, 0.8e-3, prisma, torch.float64)
    rep = seq[0]
    gradm = rep.gradm.clone().requires_grad_(True)
    times = rep.event_time.clone().requires_grad_(True)

    def penalty(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        one = Repetition(rep.pulse, t, g, rep.adc_usage, rep.adc_phase)
        return losses.hardware_penalty(Sequence([one]), prisma)

    assert float(penalty(gradm, times).detach()) > 0  # the PNS term is active
    assert torch.autograd.gradcheck(penalty, (gradm, times))
