"""Learned Cartesian sampling (LOUPE, Bahadir et al. 2019): which phase-encoding lines to acquire at a budget.

The task parameter ``sampling`` trains one logit per line outside the ACS centre of an accelerated protocol (its
``undersampling`` key sets the budget round(N/R), ACS included, and the ACS lines). The template is the protocol
fully sampled (every line, the ACS lines flagged); the line weights enter the recon's encoding
(EᴴWE x = EᴴW y, :meth:`mrbridge.recon.pipeline.Recon.forward`):

* in training a drawn mask: p = σ(slope·logit) rescaled to the budget's mean α (LOUPE), u ~ U(0, 1) drawn at
  every step, and the line kept where p > u; its gradient is that of the relaxed mask σ(sharpness·(p − u))
  (straight-through; ``estimator: relaxed`` trains on the relaxed mask itself, as LOUPE does), so the loss trains
  the logits with the recon, and the recon trains on binary masks like the one it will see;
* for validation and export the binary mask: the most probable lines that fill the budget, plus the ACS lines.

``init: pattern`` starts from the protocol's own lines (its ``undersampling`` pattern and seed); with
``train: false`` the mask stays there, so the same task trains the recon alone for that fixed mask (the baseline a
learned mask must beat).

The bundle's sequence acquires the chosen lines only, so ``export`` writes those lines, the ACS ones labelled
REF/IMA: the protocol with an ``explicit`` undersampling pattern when nothing else trains (the lines left out take
no time), else the learned sequence with the other lines' ADCs removed (:func:`select_lines`, every repetition
kept as trained).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mrbridge.sequence.model import Repetition, Sequence
from mrbridge.sequence.undersampling import Undersampling, acquired_lines, acs_range, budget

#: starting probabilities of ``init: pattern`` (before the rescaling): the protocol's lines, the others
PATTERN_P = (0.9, 0.05)


class SamplingParam(BaseModel):
    """The ``sampling`` task parameter: learned lines at the budget and ACS lines of the protocol's
    ``undersampling`` key."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Literal["sampling"]
    init: Literal["zero", "random", "pattern"] = Field(
        default="zero", description="zero: every line equally likely; random: probabilities uniform in (0, 1); "
        f"pattern: the protocol's own lines probability {PATTERN_P[0]}, the others {PATTERN_P[1]}")
    slope: float = Field(default=5.0, gt=0, description="line probability σ(slope·logit) before the rescaling")
    sharpness: float = Field(default=12.0, gt=0, description="relaxed mask σ(sharpness·(p − u)), u ~ U(0, 1)")
    estimator: Literal["straight_through", "relaxed"] = Field(
        default="straight_through", description="training mask: binary draws with the relaxed mask's gradient, "
        "or the relaxed mask")
    train: bool = Field(default=True, description="false: the mask keeps its start (the recon trains for it)")
    lr: float | None = Field(default=None, gt=0, description="learning rate (default: optimizer.lr)")


class LineSampling(nn.Module):
    """The line logits of one protocol and the masks they give.

    logits: (N − acs,) one per line outside the ACS centre (``outer``), N = ``lines``.

    >>> s = LineSampling(SamplingParam(name="sampling"), 16, Undersampling(acceleration=4, acs_lines=2))
    >>> lines = s.chosen()  # 16/4 = 4 lines: the ACS lines 7, 8 and two of the others
    >>> len(lines), {7, 8} <= set(lines)
    (4, True)
    >>> tuple(s.weights(binary=False).shape), float(s.probabilities().detach().mean())
    ((16,), 0.142857...)
    """

    outer: torch.Tensor  # (N − acs,) long, the lines outside the ACS centre

    def __init__(self, spec: SamplingParam, lines: int, undersampling: Undersampling, *, seed: int = 0) -> None:
        super().__init__()
        self.spec, self.lines = spec, lines
        self.acs = list(acs_range(lines, undersampling.acs_lines))
        self.register_buffer("outer", torch.tensor([i for i in range(lines) if i not in self.acs], dtype=torch.long))
        self.extra = budget(lines, undersampling) - len(self.acs)  # lines to choose outside the ACS centre
        self.logits = nn.Parameter(torch.zeros(lines - len(self.acs)))
        p = None
        if spec.init == "random":
            p = np.random.default_rng(seed).uniform(0.01, 0.99, size=lines - len(self.acs))
        elif spec.init == "pattern":
            own = set(acquired_lines(lines, undersampling)[0])
            p = np.array([PATTERN_P[0] if int(i) in own else PATTERN_P[1] for i in self.outer])
        if p is not None:
            with torch.no_grad():
                self.logits.copy_(torch.from_numpy(np.log(p) - np.log1p(-p)) / spec.slope)
        self.logits.requires_grad_(spec.train)

    def probabilities(self) -> torch.Tensor:
        """(N − acs,) line probabilities with mean extra/(N − acs) (LOUPE's rescaling)."""
        p = torch.sigmoid(self.spec.slope * self.logits)
        alpha = self.extra / len(p)
        mean = p.mean()
        return torch.where(mean > alpha, p * alpha / mean, 1 - (1 - p) * (1 - alpha) / (1 - mean))

    def chosen(self) -> list[int]:
        """The binary mask's lines, sorted: the ``extra`` most probable outer lines and the ACS lines."""
        top = torch.topk(self.logits.detach(), self.extra).indices
        return sorted(self.acs + [int(i) for i in self.outer[top].cpu()])

    def weights(self, *, binary: bool, seed: int = 0) -> torch.Tensor:
        """(N,) weight of each line: 1 on the ACS lines; outside them the binary mask (also in training when the
        mask does not train), or the training mask with u drawn from ``seed``: drawn lines (p > u) with the
        gradient of the relaxed mask, or the relaxed mask (differentiable w.r.t. the logits)."""
        if binary or not self.spec.train:
            out = torch.zeros(self.lines, device=self.logits.device)
            out[self.chosen()] = 1.0
            return out
        p = self.probabilities()
        u = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype).to(p.device)
        mask = torch.sigmoid(self.spec.sharpness * (p - u))
        if self.spec.estimator == "straight_through":
            mask = (p > u).to(p.dtype) + (mask - mask.detach())
        return torch.ones(self.lines, dtype=p.dtype, device=p.device).index_put((self.outer,), mask)


def select_lines(seq: Sequence, lines: list[int]) -> Sequence:
    """``seq`` with only the readouts of phase-encoding ``lines`` (``kspace_encode_step_1``) recorded: the ADC of
    every other readout is removed (its events, gradients and timing stay), so the magnetisation evolves as in
    ``seq``."""
    keep = set(lines)
    reps = []
    for rep in seq:
        adc = rep.adc_usage.clone()
        labels = []
        for (start, end), label in zip(rep.readout_spans(), rep.readouts, strict=True):
            if label.kspace_encode_step_1 in keep:
                labels.append(label)
            else:
                adc[start:end] = False
        reps.append(Repetition(pulse=rep.pulse, event_time=rep.event_time, gradm=rep.gradm, adc_usage=adc,
                               adc_phase=rep.adc_phase, readouts=labels))
    return Sequence(reps, seq.info.model_copy(deep=True))
