"""Fit a twin to measured raw data through the differentiable simulation (the return path scanner → twin).

Each scan's ``.seq`` (windowed to the twin's k-space, :mod:`mrbridge.refinement.scans`) is simulated on the current
twin by the graph engine and compared sample by sample with the measurement:

    loss = Σ_scans ‖c_s·A_s(θ) − y_s‖² / ‖y_s‖²  +  λ·smoothness(B0, B1+, coils)

with c_s the scan's receive factor (phase; scale when free) and θ the maps of :class:`TwinParameters`. L-BFGS with a
strong-Wolfe line search (or Adam with a cosine step size); the first iteration sets PD's intensity and each scan's
phase in closed form. The folder holds
``start.h5``, ``checkpoint.pt`` (written atomically every ``checkpoint_every`` steps: a killed run resumes where
it stopped) and ``history.csv``.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from mrbridge.atomic import atomic_path, atomic_write_text
from mrbridge.errors import InputError
from mrbridge.progress import StepProgress
from mrbridge.refinement.maps import TwinParameters
from mrbridge.refinement.scans import Scan
from mrbridge.sequence.model import Repetition, Sequence
from mrbridge.sim.graph import plan_graph, simulate_graph
from mrbridge.twin.twin import Twin

CHECKPOINT = "checkpoint.pt"
#: the maps that decide which graph states matter: while none of them is fitted, each scan's graph is planned once
PLANNED_MAPS = {"t1", "t2", "b1"}


class RefineConfig(BaseModel):
    """How to fit (``mrbridge refine`` options)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fit: list[str]
    iterations: int = Field(default=200, ge=1, le=1_000_000, description="simulations (with their gradient)")
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = Field(default=0.05, gt=0, le=10, description="Adam's step size (L-BFGS uses 1 with a line search)")
    smoothness: float = Field(default=1e-4, ge=0, description="weight λ of the B0/B1+/coil smoothness")
    free_scale: bool = Field(default=False, description="one intensity scale per scan (receiver gains differ)")
    delays: bool = Field(default=True, description="fit one gradient delay per in-plane axis")
    checkpoint_every: int = Field(default=25, ge=1)


@dataclass
class RefineResult:
    """The refined twin, where it started, and the fit's course: one history row per step."""

    twin: Twin
    start: Twin
    history: list[dict[str, float]]
    residuals: dict[str, float]  # scan name → final ‖c·A(θ) − y‖/‖y‖
    simulated: list[torch.Tensor] = field(default_factory=list)  # per scan (coils, K), the final simulation


def delayed(seq: Sequence, delay: torch.Tensor) -> Sequence:
    """``seq`` whose ADC samples see the in-plane gradients ``delay`` (2,) s late: k(t − τ) ≈ k(t) − τ·G(t) at each
    sample (G the gradient of the event ending there); the moments outside the ADC are unchanged."""
    reps = []
    for rep in seq:
        if not bool(rep.adc_usage.any()):
            reps.append(rep)
            continue
        rate = rep.gradm[:, :2] / rep.event_time.clamp_min(1e-12)[:, None]  # (events, 2) 1/m/s
        shift = torch.where(rep.adc_usage[:, None], -rate * delay.to(rate.dtype), torch.zeros_like(rate))
        step = torch.diff(shift, dim=0, prepend=torch.zeros_like(shift[:1]))
        gradm = rep.gradm + torch.cat([step, torch.zeros_like(step[:, :1])], dim=1)
        reps.append(Repetition(rep.pulse, rep.event_time, gradm, rep.adc_usage, rep.adc_phase, rep.readouts))
    return Sequence(reps, seq.info)


class Refinement:
    """One fit of ``start`` to ``scans`` into ``folder`` (see the module docstring)."""

    def __init__(self, scans: list[Scan], start: Twin, config: RefineConfig, folder: Path, *,
                 progress: bool | None = None) -> None:
        self.scans, self.config, self.folder = scans, config, folder
        self.params = TwinParameters(start, config.fit, start.pd > 0, len(scans), free_scale=config.free_scale)
        self.params.delay.requires_grad_(config.delays)
        self.plans = None
        if not PLANNED_MAPS & set(config.fit):  # planned for the slowest T2′ decay: every state that can matter
            planned = replace(start, t2dash=torch.full_like(start.t2dash, 1e6)).to(dtype=torch.float32)
            self.plans = [plan_graph(s.sequence, planned) for s in scans]
        self.targets = [s.kdata.to(torch.complex128) for s in scans]
        self.norms = [float(y.abs().square().sum()) for y in self.targets]
        trainable = [p for p in self.params.parameters() if p.requires_grad]
        self.optimizer: torch.optim.Optimizer
        if config.optimizer == "lbfgs":
            self.optimizer = torch.optim.LBFGS(trainable, lr=1.0, max_iter=config.iterations, history_size=20,
                                               line_search_fn="strong_wolfe", tolerance_grad=0.0,
                                               tolerance_change=0.0)
        else:
            self.optimizer = torch.optim.Adam(trainable, lr=config.lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, config.iterations,
                                                                   eta_min=config.lr / 10)
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.show = progress is None or progress
        self.plain = progress is None and not sys.stderr.isatty()

    # ---- the model ----------------------------------------------------------------------------------------
    def simulate(self, index: int) -> torch.Tensor:
        """(coils, K) complex128: scan ``index`` simulated on the current twin, times its receive factor."""
        twin = self.params.twin().to(dtype=torch.float32)
        seq = delayed(self.scans[index].sequence, self.params.delays())
        # the delays move each straight readout run as a whole: its factorised path keeps their gradient exact
        signal = simulate_graph(seq, twin, per_sample_gradients=False,
                                plan=None if self.plans is None else self.plans[index])
        return signal.to(torch.complex128) * self.params.receive(index)

    def residuals(self, simulated: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per scan ‖sim − y‖²/‖y‖² (differentiable)."""
        return [(s - y).abs().square().sum() / n for s, y, n in zip(simulated, self.targets, self.norms, strict=True)]

    def set_intensity(self) -> None:
        """Closed-form start: PD's scale (shared by the scans) and each scan's phase, from one simulation."""
        with torch.no_grad():
            sims = [self.simulate(i) for i in range(len(self.scans))]
            inner = [torch.vdot(s.flatten(), y.flatten()) for s, y in zip(sims, self.targets, strict=True)]
            power = sum(float(s.abs().square().sum()) for s in sims)
            if power <= 0:
                raise InputError("refine: the start twin gives no signal in these scans (PD 0 in the object?)")
            self.params.scale_pd(max(sum(abs(float(i.abs())) for i in inner) / power, 1e-30))
            self.params.phase.copy_(torch.stack([torch.angle(i) for i in inner]))

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> RefineResult:
        """Fit for the configured iterations (continuing a loaded checkpoint) and return the result.

        One iteration is one simulation of every scan with its gradient: one Adam step, or one evaluation of
        L-BFGS (its line search may take several per step).
        """
        if self.step == 0:
            self.set_intensity()
        total = self.config.iterations
        progress = StepProgress("refine", total, self.show, self.step, plain=self.plain)

        def closure() -> float:
            loss, row = self._evaluate()
            self.history.append(row)
            self.step += 1
            progress.update("residual " + " ".join(f"{v:.4f}" for k, v in row.items() if k.startswith("res_")))
            if self.step % self.config.checkpoint_every == 0:
                self.save()
            return loss

        try:
            while self.step < total:
                if isinstance(self.optimizer, torch.optim.LBFGS):  # at most the evaluations left
                    self.optimizer.param_groups[0]["max_eval"] = total - self.step
                    self.optimizer.param_groups[0]["max_iter"] = total - self.step
                self.optimizer.step(closure)
                if not isinstance(self.optimizer, torch.optim.LBFGS):
                    self.schedule.step()
        finally:
            progress.close()
        self.save()
        with torch.no_grad():
            sims = [self.simulate(i) for i in range(len(self.scans))]
            res = [math.sqrt(float(r)) for r in self.residuals(sims)]
        twin = self.params.twin().to(dtype=torch.float32)
        return RefineResult(twin=_detached(twin), start=self.params.start, history=self.history,
                            residuals={s.name: r for s, r in zip(self.scans, res, strict=True)}, simulated=sims)

    def _evaluate(self) -> tuple[float, dict[str, float]]:
        """The loss at the current unknowns, its gradient accumulated into them, and the history row."""
        started = time.monotonic()
        self.optimizer.zero_grad()
        residuals = self.residuals([self.simulate(i) for i in range(len(self.scans))])
        smooth = self.params.smoothness()
        loss = torch.stack(residuals).sum() + self.config.smoothness * smooth
        loss.backward()
        delay = self.params.delays().detach() * 1e6
        row = {"step": float(self.step + 1), "loss": float(loss.detach()), "smoothness": float(smooth.detach()),
               "delay_x_us": float(delay[0]), "delay_y_us": float(delay[1]),
               "seconds": time.monotonic() - started}
        row.update({f"res_{i}": math.sqrt(float(r.detach())) for i, r in enumerate(residuals)})
        return float(loss.detach()), row

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``checkpoint.pt`` and ``history.csv`` atomically."""
        state = {"step": self.step, "params": self.params.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "history": self.history,
                 "config": self.config.model_dump(), "scans": [s.name for s in self.scans]}
        with atomic_path(self.folder / CHECKPOINT) as tmp:
            torch.save(state, tmp)
        atomic_write_text(self.folder / "history.csv", history_csv(self.history))

    def load(self, path: Path) -> None:
        """Continue from a checkpoint of the same scans and fit (InputError otherwise)."""
        state = torch.load(path, weights_only=False)
        mine = {"config": self.config.model_dump(), "scans": [s.name for s in self.scans]}
        for key, value in mine.items():
            if state.get(key) != value:
                raise InputError(f"{path}: a checkpoint of another refinement ({key} {state.get(key)!r}, now "
                                 f"{value!r}); use another -o folder, or the same options to resume")
        self.params.load_state_dict(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.history, self.step = list(state["history"]), int(state["step"])


def history_csv(history: list[dict[str, float]]) -> str:
    """The history rows as CSV text (header from the first row)."""
    if not history:
        return ""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()


def _detached(twin: Twin) -> Twin:
    fields: dict[str, Any] = {}
    for name in ("pd", "t1", "t2", "t2dash", "b0", "b1", "coil_sens"):
        fields[name] = getattr(twin, name).detach().clone()
    return Twin(fov=twin.fov, label_names=dict(twin.label_names), provenance=dict(twin.provenance), **fields)
