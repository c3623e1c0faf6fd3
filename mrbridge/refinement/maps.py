"""The twin as fitted parameters: bounded, well-scaled unknowns inside the object mask, and their smoothness.

Every fitted map is an unconstrained tensor mapped to its physical range, scaled so that one unit of the unknown
is a typical change (Adam then needs one step size for all):

* PD = e^p (positive; no regularisation), 0 outside the mask;
* B0 = 50 Hz · p;  B1+ = e^p;  T1, T2 = e^p (s), each clamped to a plausible range;
* R2′ = 1/T2′ = 20 s⁻¹ · |p|: linear, since a log would give a near-zero R2′ (e.g. a long T2′ at the start) a
  near-zero gradient, and that R2′ could never grow to the fast decay near an air bubble;
* coil sensitivities c / ‖c‖ over coils (complex; one coil: its phase only, the magnitude being PD's);
* per scan a receive phase (rad) and, with ``free_scale``, a log intensity scale; one gradient delay per axis.

Maps that are not fitted stay as in the start twin.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from mrbridge.twin.twin import Twin

#: Hz per unit of the B0 unknown;  1/s per unit of the R2′ unknown;  s per unit of the gradient-delay unknown
B0_UNIT = 50.0
R2DASH_UNIT = 20.0
DELAY_UNIT = 1e-6
#: physical ranges the fitted maps are clamped to
RANGES = {"b1": (0.2, 3.0), "r2dash": (1e-3, 2000.0), "t1": (0.01, 10.0), "t2": (0.001, 3.0)}
#: typical change of each smooth map, normalising its smoothness penalty
SMOOTH_SCALE = {"b0": 10.0, "b1": 0.1, "coils": 0.1}


class TwinParameters(nn.Module):
    """The unknowns of a refinement, starting at ``start`` (a one-slice twin); ``mask`` (z, y, x) bool: the object."""

    mask: torch.Tensor

    def __init__(self, start: Twin, fit: list[str], mask: torch.Tensor, scans: int, *,
                 free_scale: bool = False) -> None:
        super().__init__()
        self.start, self.fit, self.free_scale = start, list(fit), free_scale
        self.register_buffer("mask", mask.clone())
        pd = start.pd.to(torch.float64)
        floor = float(pd[mask].max()) * 1e-3 if mask.any() else 1.0
        unknowns = {
            "pd": torch.log(pd.clamp_min(floor)),
            "b0": start.b0.to(torch.float64) / B0_UNIT,
            "b1": torch.log(start.b1.to(torch.float64).clamp(*RANGES["b1"])),
            "t2dash": 1 / start.t2dash.to(torch.float64) / R2DASH_UNIT,
            "t1": torch.log(start.t1.to(torch.float64)),
            "t2": torch.log(start.t2.to(torch.float64)),
        }
        self.unknown = nn.ParameterDict({n: nn.Parameter(v.clone()) for n, v in unknowns.items() if n in self.fit})
        if "coils" in self.fit:
            c = start.coil_sens.to(torch.complex128)
            self.unknown["coils_re"] = nn.Parameter(c.real.clone())
            self.unknown["coils_im"] = nn.Parameter(c.imag.clone())
        self.phase = nn.Parameter(torch.zeros(scans, dtype=torch.float64))
        self.log_scale = nn.Parameter(torch.zeros(scans, dtype=torch.float64), requires_grad=free_scale)
        self.delay = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    # ---- the physical maps ---------------------------------------------------------------------------------
    def maps(self) -> dict[str, torch.Tensor]:
        """Physical maps, each (z, y, x) float64 (coils: (coils, z, y, x) complex128); fitted ones differentiable."""
        s, u, mask = self.start, self.unknown, self.mask
        out = {
            "pd": torch.exp(u["pd"]) * mask if "pd" in u else s.pd.to(torch.float64),
            "b0": u["b0"] * B0_UNIT if "b0" in u else s.b0.to(torch.float64),
            "b1": torch.exp(u["b1"]).clamp(*RANGES["b1"]) if "b1" in u else s.b1.to(torch.float64),
            "t2dash": 1 / (u["t2dash"].abs() * R2DASH_UNIT).clamp(*RANGES["r2dash"]) if "t2dash" in u
            else s.t2dash.to(torch.float64),
            "t1": torch.exp(u["t1"]).clamp(*RANGES["t1"]) if "t1" in u else s.t1.to(torch.float64),
            "t2": torch.exp(u["t2"]).clamp(*RANGES["t2"]) if "t2" in u else s.t2.to(torch.float64),
        }
        if "coils" in self.fit:
            c = torch.complex(u["coils_re"], u["coils_im"])
            out["coils"] = c / c.abs().square().sum(0, keepdim=True).sqrt().clamp_min(1e-12)
        else:
            out["coils"] = s.coil_sens.to(torch.complex128)
        return out

    def twin(self) -> Twin:
        """The current twin (float64 maps, differentiable w.r.t. the fitted unknowns)."""
        m = self.maps()
        return replace(self.start, pd=m["pd"], b0=m["b0"], b1=m["b1"], t2dash=m["t2dash"], t1=m["t1"], t2=m["t2"],
                       coil_sens=m["coils"], labels=None)

    def receive(self, scan: int) -> torch.Tensor:
        """() complex128: the receive factor of scan ``scan`` (its phase, and scale when free)."""
        return torch.exp(self.log_scale[scan] + 1j * self.phase[scan])

    def delays(self) -> torch.Tensor:
        """(2,) s: gradient delays of x and y."""
        return self.delay * DELAY_UNIT

    def smoothness(self) -> torch.Tensor:
        """() mean squared neighbour difference of the fitted smooth maps (B0, B1+, coils) in their typical units."""
        m, total = self.maps(), torch.zeros((), dtype=torch.float64)
        pair_y = self.mask[..., 1:, :] & self.mask[..., :-1, :]
        pair_x = self.mask[..., :, 1:] & self.mask[..., :, :-1]
        for name in ("b0", "b1", "coils"):
            if name not in self.fit:
                continue
            v = m[name] / SMOOTH_SCALE[name]
            dy = (v[..., 1:, :] - v[..., :-1, :]).abs().square()[..., pair_y]
            dx = (v[..., :, 1:] - v[..., :, :-1]).abs().square()[..., pair_x]
            total = total + (dy.sum() + dx.sum()) / max(1, int(pair_y.sum() + pair_x.sum()))
        return total

    def scale_pd(self, factor: float) -> None:
        """Multiply PD by ``factor`` > 0 (the closed-form intensity of the first iteration)."""
        with torch.no_grad():
            if "pd" in self.unknown:
                self.unknown["pd"] += math.log(factor)
            else:
                self.start = replace(self.start, pd=self.start.pd * factor)
