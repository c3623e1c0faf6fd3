"""Physics-informed unrolled reconstruction: regularised-SENSE steps alternating with learned priors.

Start from the prior z₀ = 0; for n = 1 … N

    xₙ = argmin_x ‖E x − y‖² + λₙ‖x − zₙ₋₁‖²,  i.e.  (EᴴE + λₙ I) xₙ = Eᴴy + λₙ zₙ₋₁  (conjugate gradients),
    zₙ = Pₙ(xₙ)  (a U-Net or CNN prior; one shared network or one per iteration),

and return z_N. The λₙ are positive, stored as log λₙ (so Adam's steps are relative changes); trained or fixed.
λₙ → 0 makes the step plain SENSE (the least-squares solution CG reaches), λₙ → ∞ returns the prior zₙ₋₁.
Early λ large leans on the prior, late λ small on the data (Nickel's trained pattern 7.05 … 0.91).

The operator is given only through its normal map x ↦ EᴴE x and the right-hand side Eᴴy, so the same module
serves Cartesian sampling and NUFFT encodings, with or without coil sensitivities. The data-consistency
residual ‖E x − y‖ follows from them and ‖y‖² without E: ‖E x − y‖² = ⟨x, EᴴE x⟩ − 2 Re⟨x, Eᴴy⟩ + ‖y‖².
Images are scaled by the largest |Eᴴy| (detached) before the priors and back after, so the whole recon is
equivariant to the data's scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mrbridge.recon.networks import build_network
from mrbridge.recon.phase import PhaseNormalised
from mrbridge.recon.solvers import conjugate_gradient

Normal = Callable[[torch.Tensor], torch.Tensor]


class UnrolledConfig(BaseModel):
    """The unrolled network of a ReconConfig with ``network: unrolled``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    iterations: int = Field(default=6, ge=1, le=50, description="unrolled steps N (regularised SENSE + prior)")
    prior: Literal["unet", "cnn"] = Field(default="unet", description="the network giving the next prior")
    lambdas: Literal["trained", "fixed"] = Field(default="trained", description="train the λₙ or keep them")
    lambda_init: list[float] | float = Field(
        default=1.0, description="starting λₙ: one value for all, or one per iteration (each > 0)"
    )
    shared_weights: bool = Field(default=False, description="one prior network for every iteration")
    cg_iterations: int = Field(default=6, ge=1, description="CG iterations of each regularised-SENSE step")

    @model_validator(mode="after")
    def _one_lambda_per_iteration(self) -> UnrolledConfig:
        values = self.initial_lambdas()
        if len(values) != self.iterations or min(values) <= 0:
            raise ValueError(f"lambda_init = {self.lambda_init}: expected one value > 0 or {self.iterations} "
                             "values > 0 (one per iteration)")
        return self

    def initial_lambdas(self) -> list[float]:
        """λₙ to start from, one per iteration."""
        values = [self.lambda_init] * self.iterations if isinstance(self.lambda_init, float) else self.lambda_init
        return [float(v) for v in values]


@dataclass
class Trace:
    """What each step did: data-consistency residuals ‖E x − y‖/‖y‖ of xₙ (after the SENSE step) and of zₙ
    (after the prior), and the λₙ used."""

    step_residual: list[float] = field(default_factory=list)
    prior_residual: list[float] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)


def dc_residual(x: torch.Tensor, normal: Normal, rhs: torch.Tensor, y_norm2: float) -> float:
    """‖E x − y‖/‖y‖ from EᴴE (``normal``), Eᴴy (``rhs``) and ‖y‖² (see the module docstring).

    x, rhs: (…) complex, the image's shape
    """
    with torch.no_grad():
        value = torch.sum(x.conj() * normal(x)).real - 2 * torch.sum(x.conj() * rhs).real + y_norm2
    return math.sqrt(max(float(value), 0.0) / max(y_norm2, 1e-30))


class UnrolledSense(nn.Module):
    """N regularised-SENSE steps, each followed by a learned prior (see the module docstring); with
    ``phase_normalised`` the priors see the images without their smooth phase (:mod:`mrbridge.recon.phase`)."""

    def __init__(self, config: UnrolledConfig, *, features: int, depth: int, phase_normalised: bool = False,
                 last_std: float = 0.0) -> None:
        super().__init__()
        self.config = config
        n_nets = 1 if config.shared_weights else config.iterations
        nets = [build_network(config.prior, features=features, depth=depth, last_std=last_std)
                for _ in range(n_nets)]
        self.priors = nn.ModuleList([PhaseNormalised(n) if phase_normalised else n for n in nets if n is not None])
        log = torch.tensor([math.log(v) for v in config.initial_lambdas()])
        if config.lambdas == "trained":
            self.log_lambdas = nn.Parameter(log)
        else:
            self.register_buffer("log_lambdas", log)

    def lambdas(self) -> torch.Tensor:
        """(N,) the λₙ, positive."""
        return self.log_lambdas.exp()

    def prior(self, n: int) -> nn.Module:
        """The network of step ``n`` (0-based)."""
        return self.priors[0 if self.config.shared_weights else n]

    def forward(self, normal: Normal, rhs: torch.Tensor, *, y_norm2: float | None = None,
                trace: Trace | None = None) -> torch.Tensor:
        """Reconstruct from EᴴE and Eᴴy.

        normal : x (…) → EᴴE x, the data term's normal operator (no regularisation in it)
        rhs : Tensor  # (…, y, x) complex, Eᴴy
        y_norm2 : ‖y‖², needed only to fill ``trace``
        trace : filled with each step's residuals and λ when given

        Returns z_N: Tensor  # (…, y, x) complex, rhs' shape
        """
        scale = rhs.detach().abs().amax().clamp_min(torch.finfo(rhs.real.dtype).tiny)
        b = rhs / scale
        z = torch.zeros_like(b)
        lambdas = self.lambdas().to(b.real.dtype)
        for n in range(self.config.iterations):
            lam = lambdas[n]

            def regularised(v: torch.Tensor, lam: torch.Tensor = lam) -> torch.Tensor:
                return normal(v) + lam * v

            x = conjugate_gradient(regularised, b + lam * z, iterations=self.config.cg_iterations)
            z = self.prior(n)(x).to(b.dtype)
            if trace is not None and y_norm2 is not None:
                trace.lambdas.append(float(lam.detach()))
                trace.step_residual.append(dc_residual(x * scale, normal, rhs, y_norm2))
                trace.prior_residual.append(dc_residual(z * scale, normal, rhs, y_norm2))
        return z * scale
