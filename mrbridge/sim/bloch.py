"""Isochromat Bloch simulation: the reference simulator.

Every voxel with PD > 0 holds ``spins`` isochromats at deterministic (not random) places, a product of
position cells and off-resonance levels (:func:`spin_grid`, :func:`spin_pattern`):

* sub-voxel offsets (x, y, z) on a product of regular grids (z: the slice thickness in 2D): an axis the
  sequence never dephases gets one cell, an axis dephased by at most one cycle per voxel (rewound phase
  encoding) ``FRACTIONAL_SPINS``, spoiled axes the rest. A dephasing of m cycles per voxel along an axis of n
  cells then cancels exactly unless n divides m, so spoiled coherences vanish as they should up to order n
  (a low-discrepancy set that couples the axes, such as a rank-1 lattice, leaks them at O(1/S));
* off-resonance Δf = B0 + c / (2π T2′) with the nodes c and weights of a quadrature of the standard Lorentzian
  (:func:`lorentzian_levels`; T2′ = ∞ everywhere: one level), every cell carrying every level with the same
  weight, so that the cancellation over a spoiled axis is exact level by level. (Dealing one level to each
  spin instead made Σ_j e^{−i2πm x_j} e^{−i2πΔf_j τ} ≠ 0 and left the RF-spoiled GRE unconverged at 4096
  spins.) Split of the budget: with a spoiled axis ``OFFRES_LEVELS`` = 8 levels — every echo of a sequence
  of identical spoiled TRs has dephased for τ = TE ± the readout, τ/T2′ ≲ 0.05 for brain tissue, where 8
  levels give e^{−|τ|/T2′} within 1.1 % (7 % up to τ = 0.3 T2′) — and the cells the rest: spoiled coherences
  reach (spoiler cycles per voxel) × (repetitions) cycles and cancel only over more cells than that (small
  budgets spend on cells first: with a spoiled and a phase-encoded axis, below 1024 spins T2′ has no levels
  and no effect); without a spoiled axis (an FID, a balanced sequence) the levels take the whole budget
  left by the cells.

Physics per repetition (the time model of :mod:`mrbridge.sequence.model`): an instantaneous RF rotation of
angle α·B1+ and phase φ, then free evolution. Between two pulses nothing but the events' durations and moments
acts, so the transverse magnetisation after the events up to e is M+ · exp(−T_e/T2 − i2πΔf·T_e − i2πK_e·r),
with T_e and K_e the cumulative duration and moment since the pulse; Mz relaxes towards PD with T1. Every ADC
sample of a repetition is therefore computed at once from (T_e, K_e) at the ADC events (exact, no stepping):
s_c = Σ_spins PD·w_s·C_c·M+ · exp(…) · e^{−iφ_adc} (w_s: the spin's weight), in chunks of samples.
Magnetisation is simulated normalised (M0 = 1) and PD enters as the weight of each voxel's spins, which is
exact because the Bloch equations are linear in M0.

Speed: a readout whose events after the first share one duration and moment (every Cartesian readout) is
computed by powers of the per-spin factor z of one event, s_j = Σ a·e₀·z^j, as matrix products with a
block of powers: no exponential per sample and spin. Its values equal the direct formula (to rounding) and
its first derivatives w.r.t. every single event are exact (see :func:`_uniform_readout`); other readouts use
the direct exponentials.

Memory: √n checkpointing (:func:`torch.utils.checkpoint.checkpoint`): the n repetitions run in segments of
⌊√n⌋, each segment checkpointed and each repetition (and each chunk of directly computed samples)
checkpointed inside it, so the backward pass does not keep every event's state. Measured peak RSS of
forward+backward is still several kB per spin (``bench/sim_bench.py``), more than the ~2√n states alone;
about half of it is freed memory that glibc's heap keeps: with ``MALLOC_MMAP_THRESHOLD_=131072`` in the
environment the 64² GRE at 64 spins peaks at 481 MB instead of 1078 MB (at twice the CPU time).

Convergence (``DEFAULT_SPINS``): NRMSE between the signals with S and with 2S spins per voxel, builtin
``brain`` twin (B0, B1, T2′ 0.26–0.29 s; CSF T2 ≈ 0.5 s) at 32×32, protocols/gre.yaml (100 dummies, 117° RF
spoiling, 2 cycles/voxel x spoiler) and protocols/tse.yaml (``bench/sim_bench.py --convergence --matrix 32``;
layout of the GRE as (x cells, y cells, levels))::

    spins S    gre layout      gre (S → 2S)   tse (S → 2S)
        512    (128, 4, 1)       18.4 %          0.01 %
       1024    (64, 4, 4)        18.6 %          0.00 %
       2048    (128, 4, 4)        0.50 %         0.03 %
       4096    (128, 4, 8)        5.9 %          0.01 %
       8192    (256, 4, 8)        0.57 %         0.11 %
      16384    (512, 4, 8)        0.01 %            –     (32768 run for the GRE only)

A doubling adds either levels (2048 → 4096: 4 → 8, 0.5 %) or cells. TSE converges from 512 spins. The spoiled
GRE needs more x cells than the cycles its spoiled coherences reach, 2 × 132 repetitions = 264 here (2 × 164
at 64², 2 × 228 at 128²): from 16384 spins (512 cells) the spoiling is exact, so ``DEFAULT_SPINS`` = 16384,
the first count whose doubling changes both signals by < 0.5 %. This is the reference engine: it is slow by
design (forward pass with 8192 spins, one CPU thread: GRE 32² 37 s, 64² over 6 min; 16384 doubles that). The
8 levels leave a bias of ≈ 1 % of the signal at τ/T2′ ≈ 0.02 that doubling S does not show (see
:func:`lorentzian_levels`). For speed use the graph engine (``mrbridge.sim.graph``, the default of
``simulate``), or pass fewer spins (memory and time scale with voxels × spins).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from mrbridge.sequence.model import Pulse, Repetition, Sequence
from mrbridge.sim.slice_profile import cayley_klein, rotate
from mrbridge.twin.twin import Twin

#: isochromats per voxel, from the convergence study above
DEFAULT_SPINS = 16384

#: complex elements of one chunk of (samples × spins) phase factors
CHUNK_ELEMENTS = 1 << 22

#: spins along an axis that the sequence dephases by at most one cycle per voxel
FRACTIONAL_SPINS = 4

#: off-resonance levels (T2′ finite) per cell of the spoiled axes
OFFRES_LEVELS = 8

#: readouts with at least this many samples of repeated events are computed by powers
MIN_POWER_RUN = 4

#: samples per matrix product in a readout computed by powers
POWER_CHUNK = 16

#: z cells per voxel at least, with slice_profile
PROFILE_Z_CELLS = 4


class SpinLayout(NamedTuple):
    """How the isochromats of one voxel are laid out (:func:`spin_grid`, :func:`spin_pattern`)."""

    #: cells per axis (x, y, z) of the sub-voxel grid
    grid: tuple[int, int, int]
    #: off-resonance levels (1: no T2′ spread)
    levels: int


def spin_grid(seq: Sequence, voxel_size: tuple[float, float, float], spins: int, *,
              dephasing: bool = False) -> SpinLayout:
    """Cells per axis and off-resonance levels of at most ``spins`` isochromats per voxel.

    An axis the sequence never dephases gets 1 cell; an axis dephased by at most one cycle per voxel
    (cumulative moment × voxel size, e.g. phase encoding that is rewound) ``FRACTIONAL_SPINS``; the spoiled
    axes (dephased by more) share the rest evenly. ``dephasing`` (T2′ finite somewhere): with a spoiled axis,
    ``OFFRES_LEVELS`` levels in every cell, fewer for small budgets (a power of two, the spoiled cells keep
    at least 16 per level; fewer than 4 levels: none, 1); without one, the levels take the whole budget left
    by the cells.
    """
    moments = torch.cat([rep.gradm.detach().to("cpu", torch.float64) for rep in seq.repetitions])
    cycles = (torch.cumsum(moments, dim=0).abs().amax(dim=0) * torch.tensor(voxel_size)).tolist()
    grid = [1 if c == 0 else FRACTIONAL_SPINS if c <= 1 else 0 for c in cycles]
    while math.prod(g for g in grid if g) > spins:  # small budgets: shrink the fractional axes
        grid = [max(1, g // 2) if g > 1 else g for g in grid]
    wide = [d for d in range(3) if grid[d] == 0]
    fractional = math.prod(g for g in grid if g)
    levels = 1
    if dephasing and wide:  # spoiling first: at least 16 spoiled cells per level, no fewer than 4 levels
        levels = 1 << (max(1, min(OFFRES_LEVELS, math.isqrt(spins // fractional) // 4)).bit_length() - 1)
        levels = levels if levels >= 4 else 1
    elif dephasing:
        levels = max(1, spins // fractional)
    if wide:
        share = int((spins // (fractional * levels)) ** (1 / len(wide)) + 1e-9)
        for d in wide:
            grid[d] = max(1, share)
    return SpinLayout((grid[0], grid[1], grid[2]), levels)


def lorentzian_levels(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature of the standard Cauchy distribution: nodes and weights with Σ w·e^{−i c t} ≈ e^{−|t|}.

    The line is cut into ``levels`` bins uniform in asinh(c) on (−U, U), U = ln(levels) + 2.5, the outer bins
    open to ±∞: fine bins in the core and logarithmic ones in the tails (which carry the decay at small t, the
    echo times that matter, t = τ/T2′ ≪ 1). Each bin gives its probability mass as weight and the quantile
    midpoint of that mass as node. Maximum error of Σ w cos(c t) against e^{−t} (``levels``: t ≤ 0.05,
    t ≤ 0.3, t ≤ 1): 8: 1.1 %, 7.0 %, 16 %; 16: 1.0 %, 2.3 %, 6.6 %; 64: 0.2 %, 0.6 %, 1.5 %; 1024: < 0.05 %
    (equal-weight midpoint quantiles (k + ½)/L are 3 to 10 times worse: their tails stop at c ≈ 2L/π).

    Returns
    -------
    nodes: Tensor   # (levels,) float64, symmetric about 0
    weights: Tensor # (levels,) float64, summing to 1
    """
    if levels == 1:
        return torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    bound = math.log(levels) + 2.5
    edges = torch.sinh(torch.linspace(-bound, bound, levels + 1, dtype=torch.float64))
    cdf = 0.5 + torch.atan(edges) / math.pi
    cdf[0], cdf[-1] = 0.0, 1.0
    nodes = torch.tan(math.pi * ((cdf[:-1] + cdf[1:]) / 2 - 0.5))
    return (nodes - nodes.flip(0)) / 2, torch.diff(cdf)


def spin_pattern(layout: SpinLayout, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic sub-voxel offsets, Lorentzian off-resonance nodes and weights of the isochromats.

    The spins are a product of the cells (regular grids of cell midpoints along x, y, z) and the levels
    (:func:`lorentzian_levels`): every cell carries every level with the same weight, so that a dephasing of
    m cycles per voxel along an axis of n cells cancels exactly, level by level, unless n divides m.
    (Dealing the levels over the cells instead, one per spin, leaks spoiled coherences: Σ_j e^{−i2πm x_j}
    e^{−iω_j τ} ≠ 0.)

    Returns
    -------
    offsets: Tensor   # (S, 3) in units of the voxel size, in (−½, ½), axes (x, y, z), averaging to zero
    quantiles: Tensor # (S,) standard Cauchy nodes (ω·T2′ with ω = 2πΔf in rad/s), weighted sum zero
    weights: Tensor   # (S,) share of the voxel's magnetisation of each spin, summing to 1
    """
    cells = _cells(list(layout.grid))
    nodes, weights = lorentzian_levels(layout.levels)
    count = cells.shape[0]
    return (cells.repeat_interleave(layout.levels, dim=0).to(dtype=dtype, device=device),
            nodes.repeat(count).to(dtype=dtype, device=device),
            (weights.repeat(count) / count).to(dtype=dtype, device=device))


def _cells(counts: list[int]) -> torch.Tensor:
    """Midpoints of the product of regular grids with ``counts`` cells along (x, y, z). Returns (N, 3)."""
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5 for n in counts]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def simulate_bloch(seq: Sequence, twin: Twin, *, spins: int = DEFAULT_SPINS,
                   slice_profile: bool = False) -> torch.Tensor:
    """Noise-free signal of every coil at every ADC sample.

    Runs on the twin's device, in float64 when any sequence tensor or tissue map is float64 (else float32).
    Differentiable w.r.t. every sequence tensor (angle, phase, event_time, gradm, adc_phase) and every twin
    map (pd, t1, t2, t2dash, b0, b1, coil_sens).

    Parameters
    ----------
    seq: the sequence (its tensors are moved to the twin's device)
    twin: the object; only voxels with pd > 0 are simulated
    spins: isochromats per voxel
    slice_profile: apply pulses with a waveform as their per-z rotation (module docstring)

    Returns
    -------
    Tensor  # (coils, adc_samples) complex64 (complex128 in float64), in acquisition order
    """
    if spins < 1:
        raise ValueError(f"spins = {spins}, expected at least 1")
    device = twin.pd.device
    dtype = torch.float32
    tensors = [twin.pd, twin.t1, twin.t2, twin.t2dash, twin.b0, twin.b1]
    for rep in seq.repetitions:
        tensors += [rep.pulse.angle, rep.event_time, rep.gradm]
    if any(t.dtype == torch.float64 for t in tensors):
        dtype = torch.float64
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    voxel = twin.voxel_size.tolist()
    dephasing = bool(torch.isfinite(twin.t2dash.detach()[twin.pd.detach() > 0]).any())
    layout = spin_grid(seq, (voxel[0], voxel[1], voxel[2]), spins, dephasing=dephasing)
    if slice_profile and layout.grid[2] < PROFILE_Z_CELLS:  # more z cells, the other axes share the rest
        budget = max(1, spins * layout.grid[2] // PROFILE_Z_CELLS)
        layout = spin_grid(seq, (voxel[0], voxel[1], voxel[2]), budget, dephasing=dephasing)
        layout = SpinLayout((layout.grid[0], layout.grid[1], PROFILE_Z_CELLS), layout.levels)
    tissue = _Tissue(twin, layout, dtype, cdtype)
    mp = torch.zeros(tissue.spins_shape, dtype=cdtype, device=device)
    mz = torch.ones(tissue.spins_shape, dtype=dtype, device=device)
    # per repetition: angle, phase, event_time, gradm, adc_phase and, with slice_profile, the pulse's rotation
    params: list[tuple[Any, ...]] = [tuple(t.to(device=device, dtype=dtype) for t in
                                           (rep.pulse.angle, rep.pulse.phase, rep.event_time, rep.gradm,
                                            rep.adc_phase))
                                     for rep in seq.repetitions]
    plans = [_readout_plan(rep) for rep in seq.repetitions]
    if slice_profile:
        operators = _Operators(tissue)
        params = [(*args, operators(rep.pulse)) for args, rep in zip(params, seq.repetitions, strict=True)]
    # √n checkpointing: segments of ~√n repetitions, each repetition checkpointed inside its segment
    size = max(1, math.isqrt(len(params)))
    signals = []
    for start in range(0, len(params), size):
        mp, mz, sig = _maybe_checkpoint(_segment, tissue, plans[start:start + size], params[start:start + size],
                                        mp, mz)
        signals.append(sig)
    return torch.cat(signals, dim=1)


def _segment(tissue: _Tissue, plans: list[list[tuple[int, int, bool]]], params: list[tuple[Any, ...]],
             mp: torch.Tensor, mz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Consecutive repetitions; returns the final (mp, mz) and their signals (C, adc)."""
    signals = []
    for plan, args in zip(plans, params, strict=True):
        mp, mz, sig = _maybe_checkpoint(_repetition, tissue, plan, mp, mz, *args)
        signals.append(sig)
    return mp, mz, torch.cat(signals, dim=1)


class _Operators:
    """Per-spin Cayley–Klein rotation (α, β) (V, S) of each pulse waveform turned to phase 0 (the phase of its
    integral) and scaled to the pulse's angle, or None without waveform; computed once per distinct
    (normalised shape, slice gradient, angle) and per distinct (z, B1+) of the spins."""

    def __init__(self, tissue: _Tissue) -> None:
        z = tissue.r[:, 2].detach().to(torch.float64)
        b1 = tissue.b1.detach().to(torch.float64).expand(tissue.spins_shape).reshape(-1)
        self.points, self.inverse = torch.unique(torch.stack([z, b1], dim=1), dim=0, return_inverse=True)
        self.shape, self.cdtype = tissue.spins_shape, tissue.rate_t.dtype
        self.cache: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pulse: Pulse) -> tuple[torch.Tensor, torch.Tensor] | None:
        wave = pulse.waveform
        if wave is None:
            return None
        b1 = wave.b1.detach().to("cpu", torch.complex128)
        area = complex(b1.sum()) * wave.dt
        if area == 0:
            return None
        ref = math.atan2(area.imag, area.real)
        shape = (b1 * complex(math.cos(ref), -math.sin(ref)) / b1.abs().max()).numpy().round(4) + 0.0
        gz = wave.gz.detach().to("cpu", torch.float64).numpy().round(3) + 0.0
        angle = float(pulse.angle.detach())
        key = (wave.dt, wave.centre, angle, shape.tobytes(), gz.tobytes())
        if key not in self.cache:
            rotated = type(wave)(wave.dt, b1 * complex(math.cos(ref), -math.sin(ref)), wave.gz, wave.centre)
            scale = angle / (2 * math.pi * abs(area)) * self.points[:, 1]
            alpha, beta = cayley_klein(rotated, self.points[:, 0], scale)
            self.cache[key] = tuple(x[self.inverse].reshape(self.shape).to(self.cdtype)  # type: ignore[assignment]
                                    for x in (alpha, beta))
        return self.cache[key]


def _readout_plan(rep: Repetition) -> list[tuple[int, int, bool]]:
    """(first event, end event, uniform) of each readout; uniform: at least ``MIN_POWER_RUN`` samples whose
    events after the first share one duration and one moment (exactly)."""
    plan = []
    times, moments = rep.event_time.detach(), rep.gradm.detach()
    for start, end in rep.readout_spans():
        steps_t, steps_k = times[start + 1:end], moments[start + 1:end]
        uniform = end - start >= MIN_POWER_RUN and bool(
            (steps_t == steps_t[0]).all() and (steps_k == steps_k[0]).all())
        plan.append((start, end, uniform))
    return plan


class _Tissue:
    """Per-voxel (V, 1) and per-spin (V, S) quantities of the simulated voxels."""

    def __init__(self, twin: Twin, layout: SpinLayout, dtype: torch.dtype, cdtype: torch.dtype) -> None:
        device = twin.pd.device
        mask = (twin.pd > 0).flatten()

        def voxels(m: torch.Tensor) -> torch.Tensor:
            return m.to(dtype=dtype).flatten()[mask][:, None]

        self.t1, self.t2, self.b1 = voxels(twin.t1), voxels(twin.t2), voxels(twin.b1)
        size = twin.voxel_size.to(dtype=dtype, device=device)
        pos = twin.positions().to(dtype=dtype, device=device).reshape(-1, 3)[mask]  # (V, 3) m
        offsets, quantiles, share = spin_pattern(layout, dtype, device)
        spins = offsets.shape[0]
        self.spins_shape = (int(mask.sum()), spins)
        r = pos[:, None, :] + (offsets * size)[None]  # (V, S, 3) m
        # ω = 2π·Δf (rad/s) per spin: B0 plus the Lorentzian quantile of half width 1/(2πT2')
        omega = 2 * math.pi * voxels(twin.b0) + quantiles[None, :] / voxels(twin.t2dash)  # (V, S)
        # phase accrued by spin s over time t and moment k: −[t, k]·rate[s]
        self.rate = torch.cat([omega[..., None], 2 * math.pi * r], dim=-1).reshape(-1, 4)  # (V·S, 4)
        coil = twin.coil_sens.to(device=device, dtype=cdtype).reshape(twin.coils, -1)[:, mask]
        self.weight = (coil * voxels(twin.pd)[:, 0])[:, :, None]  # (C, V, 1)
        self.share = share  # (S,) weight of each spin within its voxel
        # d/dt and d/dk of the exponent per spin: (1/T2 + iω) and i2π·r, for exact gradients of fast readouts
        r2 = (1 / self.t2).expand(self.spins_shape).reshape(-1)
        self.rate_t = torch.complex(r2, omega.reshape(-1))  # (V·S,)
        self.r = r.reshape(-1, 3)  # (V·S, 3) m

    def evolve(self, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
        """Transverse factor exp(−t/T2 − i2πΔf·t − i2π k·r) for times (J,) s and moments (J, 3) 1/m.

        Returns: Tensor  # (J, V, S) complex
        """
        decay = torch.exp(-time[:, None, None] / self.t2)  # (J, V, 1)
        angle = -(torch.cat([time[:, None], moment], dim=1) @ self.rate.T).reshape(-1, *self.spins_shape)
        return torch.polar(decay.expand_as(angle), angle)


def _repetition(tissue: _Tissue, plan: list[tuple[int, int, bool]], mp: torch.Tensor, mz: torch.Tensor,
                angle: torch.Tensor, phase: torch.Tensor, event_time: torch.Tensor, gradm: torch.Tensor,
                adc_phase: torch.Tensor, profile: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One repetition: RF rotation, ADC samples, free evolution to its end.

    mp: (V, S) complex transverse, mz: (V, S) longitudinal (M0 = 1); profile: the pulse's per-spin rotation
    (α, β) (V, S) at phase 0, which replaces the instantaneous one. Returns (mp, mz, signal (C, adc)).
    """
    if profile is None:
        mp, mz = _rf(mp, mz, angle * tissue.b1, phase)
    else:  # the RF phase φ turns β into β·e^{iφ}
        mp, mz = rotate(profile[0], profile[1] * torch.polar(torch.ones_like(phase), phase), mp, mz)
    coils = tissue.weight.shape[0]
    if event_time.shape[0] == 0:
        return mp, mz, mp.new_zeros((coils, 0))
    time = torch.cumsum(event_time, dim=0)
    moment = torch.cumsum(gradm, dim=0)
    signal = mp.new_zeros((coils, 0))
    if plan:
        a = (tissue.weight * (mp * tissue.share)).reshape(coils, -1)  # (C, V·S)
        parts = []
        for start, end, uniform in plan:
            if uniform:
                parts.append(_uniform_readout(tissue, a, time, moment, event_time, gradm, start, end))
            else:
                parts.append(_direct_readout(tissue, a, time[start:end], moment[start:end]))
        phases = torch.cat([adc_phase[start:end] for start, end, _ in plan])
        signal = torch.cat(parts, dim=1) * torch.polar(torch.ones_like(phases), -phases)
    mp = mp * tissue.evolve(time[-1:], moment[-1:])[0]
    e1 = torch.exp(-time[-1] / tissue.t1)
    mz = mz * e1 + (1 - e1)
    return mp, mz, signal


def _maybe_checkpoint(fn: Callable[..., Any], *args: Any) -> Any:
    if torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _direct_readout(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """Σ_spins a·exp(−T_j/T2 − iω T_j − i2π K_j·r) at every sample: a (C, V·S), time (N,), moment (N, 3).

    Returns: Tensor  # (C, N)
    """
    chunk = max(1, CHUNK_ELEMENTS // max(1, a.shape[1]))
    return torch.cat([_maybe_checkpoint(_samples, tissue, a, time[i:i + chunk], moment[i:i + chunk])
                      for i in range(0, time.shape[0], chunk)], dim=1)


def _samples(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    factors = tissue.evolve(time, moment).reshape(time.shape[0], -1)  # (J, V·S)
    return a @ factors.T


def _uniform_readout(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor,
                     event_time: torch.Tensor, gradm: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The samples of a readout whose events after the first repeat: s_j = Σ a·e₀·z^j, j = 0 … N−1.

    e₀ is the exact factor at the first sample, z the factor of one repeated event; z^0 … z^J are computed
    once (J = ``POWER_CHUNK``) and each block of J samples is one matrix product with them, the block's
    base z^(mJ) a running product: no exponential per sample and spin. The cumulative times and moments
    differ from j·step by D_j and ΔK_j, which are exactly zero in value but carry the gradient w.r.t. each
    event: the first-order term
    −D_j·Σ a e₀ z^j (1/T2 + iω) − i2πΔK_j·Σ a e₀ z^j r adds it (exact first derivatives; value unchanged).
    Returns: Tensor  # (C, N)
    """
    coils, n = a.shape[0], end - start
    b = a * tissue.evolve(time[start:start + 1], moment[start:start + 1]).reshape(1, -1)  # (C, V·S)
    step_t, step_k = event_time[start + 1], gradm[start + 1]
    chunk = min(n, POWER_CHUNK, max(1, CHUNK_ELEMENTS // max(1, a.shape[1])))
    j = torch.arange(chunk + 1, dtype=step_t.dtype, device=step_t.device)
    powers = tissue.evolve(j * step_t, j[:, None] * step_k).reshape(chunk + 1, -1)  # z^0 … z^chunk
    track = torch.is_grad_enabled() and (event_time.requires_grad or gradm.requires_grad)
    rows = torch.cat([b, b * tissue.rate_t, *(b * tissue.r[:, d] for d in range(3))]) if track else b
    base = None
    parts = []
    for first in range(0, n, chunk):
        block = rows if base is None else rows * base
        parts.append(block @ powers[:min(chunk, n - first)].T)
        base = powers[chunk] if base is None else base * powers[chunk]
    sums = torch.cat(parts, dim=1)  # (rows, N)
    if not track:
        return sums
    sums = sums.reshape(5, coils, n)
    zero = event_time.new_zeros(1)
    d_t = torch.cumsum(torch.cat([zero, event_time[start + 1:end] - step_t]), dim=0)  # (N,), zero in value
    d_k = torch.cumsum(torch.cat([zero[None].expand(1, 3), gradm[start + 1:end] - step_k]), dim=0)  # (N, 3)
    return sums[0] - d_t * sums[1] - 2j * math.pi * sum(d_k[:, d] * sums[2 + d] for d in range(3))


def _rf(mp: torch.Tensor, mz: torch.Tensor, angle: torch.Tensor,
        phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-handed rotation by ``angle`` (V, 1) about (cos φ, sin φ, 0): Mz = 1 → M+ = −i·e^{iφ}·sin α."""
    e = torch.polar(torch.ones_like(phase), phase)
    half = torch.sin(angle / 2) ** 2
    sin, cos = torch.sin(angle), torch.cos(angle)
    new_mp = (1 - half) * mp + half * e * e * mp.conj() - 1j * e * sin * mz
    new_mz = sin * (mp * e.conj()).imag + cos * mz
    return new_mp, new_mz
