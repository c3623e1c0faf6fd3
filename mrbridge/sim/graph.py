"""Phase-graph simulation: a fast, differentiable state engine (extended phase graphs with arbitrary moments).

Physics (Weigel, JMRI 2015; Endres et al., "Phase distribution graphs", MRM 2024). Within a voxel the
magnetisation is a sum of *states*, each a phase pattern exp(−i(2π k·r + ω τ)) over the voxel's spins (position
r, off-resonance ω = 2πΔf) times an amplitude per voxel. A state's key q = (k, τ) is its gradient moment k (1/m,
3-vector) and its dephasing time τ (s, the time during which B0 and T2′ act on it):

* transverse state (q, F): contributes F·e^{−i(2πk·r + ωτ)} to M+ (and its conjugate, key −q, to M−);
* longitudinal state (q, Z): contributes Re(Z·e^{−i(2πk·r + ωτ)}) to Mz; q and −q are one state (Z ↔ Z*), so
  keys are kept in a canonical half space; the state q = 0 is the one that recovers towards M0.

An instantaneous RF pulse (angle α·B1+, phase φ, right-handed about (cos φ, sin φ, 0), see
:mod:`mrbridge.sequence.model`) mixes the triple (F+, F−, Z) of a key:

    F+' = cos²(α/2) F+ + e^{2iφ} sin²(α/2) F− − i e^{iφ} sin α Z
    Z'  = −(i/2) e^{−iφ} sin α F+ + (i/2) e^{iφ} sin α F− + cos α Z

so a transverse state (q, F) yields (q, cos²(α/2)·F), (−q, e^{2iφ}sin²(α/2)·F*) and (q, −i e^{−iφ} sin α·F)
longitudinal; a longitudinal (q, Z) yields (±q, −(i/2) e^{iφ} sin α·Z^{(*)}) transverse and (q, cos α·Z).
Between pulses a transverse state moves to q + (Σ moments, Σ durations) and decays by e^{−t/T2}; a
longitudinal state keeps its key and decays by e^{−t/T1}, and (1 − e^{−t/T1}) flows into q = 0. States that
land on the same key (to 10⁻³ cycles per FOV and 0.1 µs) merge.

ADC. Averaged over a voxel of uniform spin density (a box of the voxel size, like the Bloch engine's spins)
and over a Lorentzian spread of off-resonance of half width 1/(2πT2′) about B0, a transverse state sampled
at time T and moment K after the pulse gives, per coil c,

    s_c = e^{−iφ_adc} Σ_voxels PD·C_c·F·e^{−T/T2}·e^{−i2π(k+K)·r}·e^{−i2πΔf(τ+T)}·e^{−|τ+T|/T2′}
          · Π_axes sinc((k+K)_a Δ_a)

(r the voxel centre, Δ the voxel size; the sinc is exact for the box). Since e^{−|τ+T|/T2′} factors as
e^{∓(τ+T_a)/T2′}·e^{∓(T−T_a)/T2′} on each side of the echo (T_a a chunk's first sample), every chunk of a readout
is two matrix products (states × voxels)·(voxels × samples), one per side; the sinc depends only on
(state, sample) because the voxel size is uniform. On samples with constant gradient and time steps the
(voxels × samples) factor is a geometric progression and is never formed (:mod:`mrbridge.sim.readout`: exact up
to rounding; the 256² GRE .seq on the 256² brain: 5.4 s CPU on one core instead of > 240 s).

Accuracy knob. A pre-pass runs the same graph on a few representative tissues (quantiles of T1, T2, B1+ of
the twin) in float64 and drops every state whose largest amplitude is below ``accuracy``·M0 (its whole
future), and leaves out of the ADC every state whose largest possible signal (amplitude · largest sinc ·
T2′ decay at the closest approach to the echo) is below ``accuracy``·M0/10. The main pass replays the kept
graph on every voxel (and every twin of a batch). Amplitudes do not depend on B0, T2′, PD or coils, so the
pre-pass is exact in them. Signal NRMSE against the exact graph (accuracy 1e-7), builtin brain, 32×32:
GRE 4.5 % / 0.22 % / 0.03 % at accuracy 1e-2 / 1e-3 / 1e-4; SE, TSE, bSSFP, IR-GRE ≤ 0.3 % at 1e-3.

Tensor work. Per repetition the states are (states × columns) complex tensors: columns are voxels, or, when
t1, t2 and b1 need no gradient, the distinct (T1, T2, B1+) triples of the twin (amplitudes depend on nothing
else; 7273 voxels of the 128² brain are 1395 columns). The pulse, merging and relaxation of a repetition are
one gather per kind of parent (each state has at most one parent of each kind) times per-column factors; the
ADC is the matrix product above. Python loops run over repetitions, readouts and their chunks only.

Gradients. Everything is differentiable w.r.t. the sequence (angles, phases, durations, moments, ADC phases)
and the twin maps (pd, t1, t2, t2dash, b0, b1, coil_sens). Where two histories merge into one state, the
state's key (and so its derivative w.r.t. moments and durations) is taken from the first history: the
gradient w.r.t. moments and durations is that of the sequence family in which merged states stay merged
(exact when no two histories coincide, e.g. when every repetition's moments differ). Memory: the states are
propagated in checkpointed segments of repetitions (the backward pass keeps the states at segment starts and
the emitting states of each readout) unless every step's states fit in a quarter of the budget; each readout
chunk's factors are recomputed in the backward pass unless all of them fit in 512 MiB (and in the budget).
Under a budget (``memory_gb``, :mod:`mrbridge.sim.memory`) the readouts are simulated in chunks of samples and
blocks of voxels; what must stay resident (signal, emitting states) is checked against it before the
propagation starts.

What it cannot represent (use the Bloch engine): diffusion (``twin.diffusion`` is ignored; no b-value
attenuation of states); sub-voxel structure other than a uniform box (the sinc) and off-resonance spreads
other than a Lorentzian of width 1/T2′ (the e^{−|τ|/T2′}); RF pulses that are not instantaneous or act
differently across the voxel (slice profiles); motion and flow; gradients that vary in space other than
linearly (k is one vector per state). Dropped states bias the signal by about ``accuracy`` per state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from mrbridge.sequence.model import Repetition, Sequence
from mrbridge.sim.memory import fit_budget
from mrbridge.sim.readout import emit
from mrbridge.twin.twin import Twin

#: default accuracy: smallest state amplitude (relative to M0) that is kept
DEFAULT_ACCURACY = 1e-3

#: key quantisation: moments in 10⁻³ cycles per FOV, dephasing times in 0.1 µs
_K_QUANTUM = 1e-3
_TAU_QUANTUM = 1e-7
#: repetitions per checkpointed segment of the state propagation
_SEGMENT = 16
#: the readouts' (voxels × samples) factors are kept for the backward pass up to this size, else recomputed
_KEEP_BYTES = 512 * 2**20
#: complex (states × columns) tensors the backward pass keeps per state of the propagation (3.2 measured when
#: B1+ needs gradients)
_PROPAGATION_COPIES = 4
#: odd 64-bit multipliers hashing a quantised key (4 integers) to one integer
_HASH = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5],
                 dtype=np.uint64).view(np.int64)


def simulate_graph(seq: Sequence, twin: Twin, *, accuracy: float = DEFAULT_ACCURACY,
                   memory_gb: float | None = None, per_sample_gradients: bool = True,
                   plan: GraphPlan | None = None) -> torch.Tensor:
    """Noise-free signal of every coil at every ADC sample.

    Runs on the twin's device, in float64 when any sequence tensor or tissue map is float64 (else float32).
    The maps may carry a leading batch dimension (a batch of twins on one grid, e.g. for training): pd, t1,
    t2, t2dash, b0, b1 (batch, z, y, x); coil_sens (coils, z, y, x) shared or (batch, coils, z, y, x).

    Parameters
    ----------
    seq: the sequence (its tensors are moved to the twin's device)
    twin: the object; only voxels with pd > 0 (in any twin of a batch) are simulated
    accuracy: states below ``accuracy``·M0 are dropped (smaller: slower, closer to the exact graph)
    memory_gb: memory budget (GB) of the simulation; None: :func:`mrbridge.sim.memory.default_budget_gb`. The
        readouts are simulated in chunks within it; a problem whose states and signal alone exceed it raises
        an InputError before the propagation starts
    per_sample_gradients: each ADC sample's moment and time get their own gradient (trajectory learning); False:
        straight runs of samples keep the fast factorised readout and their gradient is that of the run moved as
        one (exact for a gradient delay on a flat top, :func:`mrbridge.sim.readout.emit`)
    plan: the kept graph from :func:`plan_graph` (else planned here, at ``accuracy``)

    Returns
    -------
    Tensor  # (coils, adc_samples) complex64 (complex128 in float64), in acquisition order;
            # (batch, coils, adc_samples) for a batch of twins
    """
    batched = twin.pd.dim() == 4
    tissue, reps = _prepare(seq, twin)
    if plan is not None and len(plan.steps) != len(reps):
        raise ValueError(f"plan of {len(plan.steps)} repetitions for a sequence of {len(reps)}")
    steps = _plan(reps, tissue, accuracy) if plan is None else plan.steps
    budget = fit_budget(memory_gb, tissue, reps, steps)

    # states carry a trailing row of zeros (the source of absent parents); F is kept as right after the pulse
    # (what the ADC sees), Z as after the repetition's relaxation
    F = torch.zeros((1, tissue.columns), dtype=tissue.cdtype, device=tissue.device)
    Z = torch.zeros((2, tissue.columns), dtype=tissue.cdtype, device=tissue.device)
    Z[0] = 1
    qT = torch.zeros((0, 4), dtype=tissue.dtype, device=tissue.device)
    qL = torch.zeros((1, 4), dtype=tissue.dtype, device=tissue.device)
    before = torch.zeros(4, dtype=tissue.dtype, device=tissue.device)  # (moment, duration) of the previous repetition
    emitted: list[tuple[torch.Tensor, torch.Tensor]] = []
    # the backward pass of the propagation: every step's states kept when they fit, else recomputed per segment
    segments = propagation_bytes(steps, tissue) > budget.chunk // 4
    for start in range(0, len(reps), _SEGMENT):
        segment = list(range(start, min(start + _SEGMENT, len(reps))))
        flat = [t for r in segment for t in reps[r].differentiable()]
        run = _Segment([reps[r] for r in segment], [steps[r] for r in segment])
        args = (tissue.t1, tissue.t2, tissue.b1, F, Z, qT, qL, before, *flat)
        if segments and torch.is_grad_enabled() and any(t.requires_grad for t in args):
            out = checkpoint(run, *args, use_reentrant=False)
        else:
            out = run(*args)
        F, Z, qT, qL, before = out[:5]
        emitted += [(out[i], out[i + 1]) for i in range(5, len(out), 2)]

    signals = []
    emitters = iter(emitted)
    # the backward pass of a readout chunk needs its factors: kept when they all fit, else recomputed chunk by chunk
    factors = sum(idx.numel() for rep in reps for idx in rep.readouts) * tissue.batch * tissue.V
    recompute = torch.is_grad_enabled() and factors * 2 * tissue.cdtype.itemsize > min(_KEEP_BYTES, budget.chunk)
    for rep in reps:
        if not rep.adc.numel():
            continue
        Fe, qe = next(emitters)
        for idx in rep.readouts:
            signals.append(emit(tissue, Fe, qe, rep.time[idx], rep.moment[idx], rep.adc_phase[idx], budget.chunk,
                                recompute=recompute, per_sample_gradients=per_sample_gradients))
    signal = torch.cat(signals, dim=-1) if signals else torch.zeros(
        (tissue.batch, tissue.coils, 0), dtype=tissue.cdtype, device=tissue.device)
    return signal if batched else signal[0]


@dataclass(frozen=True)
class GraphPlan:
    """The kept graph of a sequence on a twin (:func:`plan_graph`): which states each repetition keeps and where
    they come from. It stays valid while the sequence's RF events and durations, the twin's voxels (PD > 0), their
    T1, T2 and B1+ and the smallest R2′ stay as planned; B0, T2′ above that, PD within those voxels, coils and the
    moments inside the ADC may change."""

    steps: list[_Step]


def plan_graph(seq: Sequence, twin: Twin, *, accuracy: float = DEFAULT_ACCURACY) -> GraphPlan:
    """The pre-pass of :func:`simulate_graph` alone, to reuse over many simulations (a fit of B0, PD, coils)."""
    tissue, reps = _prepare(seq, twin)
    return GraphPlan(_plan(reps, tissue, accuracy))


def _prepare(seq: Sequence, twin: Twin) -> tuple[_Tissue, list[_RepTensors]]:
    """The twin's columns and the repetitions' tensors, in float64 when any of them is float64 (else float32)."""
    tensors = [twin.pd, twin.t1, twin.t2, twin.t2dash, twin.b0, twin.b1]
    for r in seq.repetitions:
        tensors += [r.pulse.angle, r.event_time, r.gradm]
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    tissue = _Tissue(twin, dtype)
    return tissue, [_RepTensors.of(rep, tissue.device, dtype) for rep in seq.repetitions]


def propagation_bytes(steps: list[_Step], tissue: _Tissue) -> int:
    """Bytes the backward pass keeps of an uncheckpointed propagation: a few complex (states × columns) tensors
    per repetition (the parents gathered, their factors, the new states)."""
    states = sum(step.t_index.shape[1] + step.l_index.shape[1] for step in steps)
    return _PROPAGATION_COPIES * states * tissue.columns * tissue.cdtype.itemsize


# ---- sequence and tissue ---------------------------------------------------------------------------------
@dataclass
class _RepTensors:
    """One repetition on the simulation device: pulse, per-event cumulative time/moment, ADC sample indices."""

    angle: torch.Tensor  # ()
    phase: torch.Tensor  # ()
    time: torch.Tensor  # (events,) s since the pulse, at each event's end
    moment: torch.Tensor  # (events, 3) 1/m since the pulse
    adc_phase: torch.Tensor  # (events,)
    adc: torch.Tensor  # (samples,) long, ADC event indices
    readouts: list[torch.Tensor]  # per readout, its event indices (long)

    @classmethod
    def of(cls, rep: Repetition, device: torch.device, dtype: torch.dtype) -> _RepTensors:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        n = rep.event_count
        time = torch.cumsum(move(rep.event_time), 0) if n else move(rep.event_time).new_zeros(1)
        moment = torch.cumsum(move(rep.gradm), 0) if n else move(rep.gradm).new_zeros((1, 3))
        spans = rep.readout_spans()
        readouts = [torch.arange(a, b, device=device) for a, b in spans]
        adc = torch.cat(readouts) if readouts else torch.zeros(0, dtype=torch.long, device=device)
        return cls(move(rep.pulse.angle), move(rep.pulse.phase), time, moment, move(rep.adc_phase), adc, readouts)

    def differentiable(self) -> list[torch.Tensor]:
        return [self.angle, self.phase, self.time, self.moment, self.adc_phase]

    def replaced(self, angle: torch.Tensor, phase: torch.Tensor, time: torch.Tensor, moment: torch.Tensor,
                 adc_phase: torch.Tensor) -> _RepTensors:
        return _RepTensors(angle, phase, time, moment, adc_phase, self.adc, self.readouts)

    @property
    def shift(self) -> torch.Tensor:
        """(4,) key shift of a transverse state over the whole repetition: (moment, duration)."""
        return torch.cat([self.moment[-1], self.time[-1:]])


class _Tissue:
    """Per-voxel quantities of the simulated voxels, flattened over (batch, voxels) = X.

    t1, t2, b1: (columns,), per voxel or per class of equal (T1, T2, B1+) (voxel → class: expand (X,));
    weight: (batch, coils, V) complex PD·coil; b0, r2dash: (batch, V); pos: (V, 3) m.
    """

    def __init__(self, twin: Twin, dtype: torch.dtype) -> None:
        self.device = twin.pd.device
        self.dtype = dtype
        self.cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        batched = twin.pd.dim() == 4

        def maps(m: torch.Tensor) -> torch.Tensor:
            m = m.to(dtype=dtype)
            return (m if batched else m[None]).flatten(1)

        pd = maps(twin.pd)
        self.batch = pd.shape[0]
        mask = (pd > 0).any(0)
        self.mask = mask
        self.V = int(mask.sum())

        def voxels(m: torch.Tensor) -> torch.Tensor:
            return maps(m).expand(self.batch, -1)[:, mask]  # (batch, V)

        relax = torch.stack([voxels(m).reshape(-1) for m in (twin.t1, twin.t2, twin.b1)])  # (3, X)
        self.r2 = 1 / relax[1].reshape(self.batch, self.V)
        # voxels of equal (T1, T2, B1+) share their states (exact); not when those maps need gradients
        self.expand: torch.Tensor | None = None
        if not relax.requires_grad:
            relax, self.expand = torch.unique(relax, dim=1, return_inverse=True)
        self.t1, self.t2, self.b1 = relax
        self.columns = relax.shape[1]
        self.b0 = voxels(twin.b0)
        self.r2dash = 1 / voxels(twin.t2dash)
        nz, ny, nx = twin.pd.shape[-3:]
        fov = torch.tensor(twin.fov, dtype=torch.float64)
        self.fov = fov
        size = fov / torch.tensor([nx, ny, nz], dtype=torch.float64)
        self.size = size.to(dtype=dtype, device=self.device)

        def centres(n: int, step: float) -> torch.Tensor:
            return (torch.arange(n, dtype=dtype, device=self.device) - n // 2) * step

        z, y, x = torch.meshgrid(centres(nz, float(size[2])), centres(ny, float(size[1])),
                                 centres(nx, float(size[0])), indexing="ij")
        self.pos = torch.stack([x, y, z], dim=-1).reshape(-1, 3)[mask]  # (V, 3)
        coil = twin.coil_sens.to(device=self.device, dtype=self.cdtype)
        coil = coil if coil.dim() == 5 else coil[None]
        coil = coil.flatten(2)[:, :, mask]  # (1 or batch, C, V)
        self.coils = coil.shape[1]
        self.weight = coil * voxels(twin.pd)[:, None, :]  # (batch, C, V)

    def representatives(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A few tissues spanning T1, T2, B1+ (quantiles), float64 on the CPU: (t1, t2, b1), each (P,)."""
        maps = torch.stack([self.t1, self.t2, self.b1]).detach().to("cpu", torch.float64)
        picks = set()
        for row in maps:
            order = torch.argsort(row)
            picks.update(order[torch.linspace(0, len(order) - 1, 9).round().long()].tolist())
        chosen = maps[:, sorted(picks)]
        return chosen[0], chosen[1], chosen[2]


# ---- the graph ----------------------------------------------------------------------------------------
@dataclass
class _Step:
    """The kept graph of one repetition (from the pre-pass): where each new state takes its parents from.

    A new transverse state i is  cos²(α/2)·F[t_index[0, i]] + e^{2iφ} sin²(α/2)·F*[t_index[1, i]]
    − (i/2) e^{iφ} sin α·(Z[t_index[2, i]] + Z*[t_index[3, i]]), a new longitudinal one
    u·F[l_index[0, i]] + u*·F*[l_index[1, i]] + cos α·Z[l_index[2, i]] with u = −i e^{−iφ} sin α (F relaxed
    over the previous repetition first); an absent parent is the trailing row of zeros. Every state has at most
    one parent of each kind because keys are unique. The first ``emit`` transverse states reach the ADC.
    """

    t_index: torch.Tensor  # (4, nT' + 1) long
    l_index: torch.Tensor  # (3, nL' + 1) long
    t_key: torch.Tensor  # (nT',) candidate key of each new transverse state, in [qT, −qT, qL, −qL]
    l_key: torch.Tensor  # (nL',) candidate key of each new longitudinal state, in [qT, qL]
    l_key_sign: torch.Tensor  # (nL',) ±1: into the canonical half space
    zero: torch.Tensor  # (1,) long: the q = 0 longitudinal state
    emit: int


def _rf(F: np.ndarray, Z: np.ndarray, angle: np.ndarray, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """Pre-pass candidates (transverse [cos² F, e^{2iφ} sin² F*, −(i/2) e^{iφ} sin α Z, same Z*], longitudinal
    [−i e^{−iφ} sin α F, cos α Z]) of an RF pulse on states (n, P) with angles (P,)."""
    e = np.exp(1j * phase)
    c2, s2, sin = np.cos(angle / 2) ** 2, np.sin(angle / 2) ** 2, np.sin(angle)
    h = -0.5j * e * sin
    trans = np.concatenate([c2 * F, (e * e * s2) * F.conj(), h * Z, h * Z.conj()])
    longi = np.concatenate([(-1j * np.conj(e) * sin) * F, np.cos(angle) * Z])
    return trans, longi


class _Segment:
    """Propagate the states through a run of repetitions (a checkpointable function of tensors)."""

    def __init__(self, reps: list[_RepTensors], steps: list[_Step]) -> None:
        self.reps, self.steps = reps, steps

    def __call__(self, t1: torch.Tensor, t2: torch.Tensor, b1: torch.Tensor, F: torch.Tensor, Z: torch.Tensor,
                 qT: torch.Tensor, qL: torch.Tensor, before: torch.Tensor,
                 *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cdtype = F.dtype
        outputs: list[torch.Tensor] = []
        for i, (rep0, step) in enumerate(zip(self.reps, self.steps, strict=True)):
            rep = rep0.replaced(*flat[5 * i:5 * i + 5])
            # per-column coefficients (relaxation of F over the previous repetition folded in)
            e2 = torch.exp(-before[3] / t2)
            angle = rep.angle * b1
            e = torch.complex(torch.cos(rep.phase), torch.sin(rep.phase))
            sin = torch.sin(angle)
            c2 = (torch.cos(angle / 2) ** 2 * e2).to(cdtype)
            s2 = (e * e) * (torch.sin(angle / 2) ** 2 * e2).to(cdtype)
            h = (-0.5j * e) * sin.to(cdtype)
            u = (-1j * e.conj()) * (sin * e2).to(cdtype)
            e1 = torch.exp(-rep.time[-1] / t1)
            t, ell = step.t_index, step.l_index
            # index_select, not F[t[0]]: same values, and its backward (index_add) is several times faster
            F_new = c2 * F.index_select(0, t[0]) + s2 * F.index_select(0, t[1]).conj() + h * (
                Z.index_select(0, t[2]) + Z.index_select(0, t[3]).conj())
            Z_new = (e1 * torch.cos(angle)).to(cdtype) * Z.index_select(0, ell[2]) + e1.to(cdtype) * (
                u * F.index_select(0, ell[0]) + u.conj() * F.index_select(0, ell[1]).conj())
            Z = Z_new.index_add(0, step.zero, (1 - e1).to(cdtype)[None])  # recovery into q = 0
            shifted = qT + before
            qT, qL = (torch.cat([shifted, -shifted, qL, -qL]).index_select(0, step.t_key),
                      torch.cat([shifted, qL]).index_select(0, step.l_key) * step.l_key_sign[:, None])
            F = F_new
            if rep.adc.numel():  # copies: a view would keep the repetition's every state alive until the ADC
                outputs += [F[:step.emit].clone(), qT[:step.emit].clone()]
            before = rep.shift
        return (F, Z, qT, qL, before, *outputs)


def _plan(reps: list[_RepTensors], tissue: _Tissue, accuracy: float) -> list[_Step]:
    """The pre-pass: run the full graph on representative tissues, merge equal keys, drop small states.

    Keys are followed as floats (for the bounds) and as integers in quanta (their identity, so that merging is
    exact and each state has at most one parent of each kind).
    """
    if not accuracy > 0:
        raise ValueError(f"accuracy = {accuracy}, expected > 0")
    t1, t2, b1 = (m.numpy() for m in tissue.representatives())
    r2dash = float(tissue.r2dash.detach().clamp(min=0).min()) if tissue.V else 0.0
    size = tissue.size.detach().to("cpu", torch.float64).numpy()
    quantum = np.array([*(_K_QUANTUM / tissue.fov.numpy()), _TAU_QUANTUM])
    device = tissue.device

    def index(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long, device=device)

    def numbers(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float64).numpy()

    F = np.zeros((0, t1.shape[0]), complex)
    Z = np.ones((1, t1.shape[0]), complex)
    qT, qL = np.zeros((0, 4)), np.zeros((1, 4))
    iT, iL = np.zeros((0, 4), np.int64), np.zeros((1, 4), np.int64)
    steps = []
    for rep in reps:
        nT, nL = qT.shape[0], qL.shape[0]
        trans, longi = _rf(F, Z, float(numbers(rep.angle)) * b1, float(numbers(rep.phase)))
        # transverse: merge equal keys, keep the large, the emitting ones first
        cand, cand_i = np.concatenate([qT, -qT, qL, -qL]), np.concatenate([iT, -iT, iL, -iL])
        inv, first, F_new = _merge(cand_i, trans)
        bound = np.abs(F_new).max(1, initial=0.0)
        keep = bound >= accuracy
        emit = np.zeros(keep.shape, bool)
        if rep.adc.numel():
            adc = rep.adc.cpu().numpy()
            time, moment = numbers(rep.time)[adc], numbers(rep.moment)[adc]
            live = np.nonzero(keep)[0]
            q = cand[first[live]]
            shape = np.abs(np.sinc((q[:, None, :3] + moment[None]) * size)).prod(-1).max(1)
            decay = np.exp(-np.abs(q[:, 3:] + time[None]).min(1) * r2dash)
            emit[live] = bound[live] * shape * decay >= accuracy / 10
        order = np.concatenate([np.nonzero(keep & emit)[0], np.nonzero(keep & ~emit)[0]])
        t_index = _parents(inv, order, [nT, nT, nL, nL], [nT, nT, nL, nL])
        t_key = first[order]
        # longitudinal: canonical half space (first non-zero quantised component positive)
        cand_l, cand_li = np.concatenate([qT, qL]), np.concatenate([iT, iL])
        nonzero = cand_li != 0
        lead = np.take_along_axis(cand_li, np.argmax(nonzero, axis=1)[:, None], 1)[:, 0]
        sign = np.where(lead < 0, -1, 1)
        flip = sign < 0
        longi[flip] = longi[flip].conj()
        inv_l, first_l, Z_new = _merge(cand_li * sign[:, None], longi)
        zero_cand = int(np.nonzero(~nonzero.any(1))[0][0])
        keep = np.abs(Z_new).max(1, initial=0.0) >= accuracy
        keep[inv_l[zero_cand]] = True
        order_l = np.nonzero(keep)[0]
        # kinds of longitudinal parents: transverse as is, transverse conjugated, longitudinal
        kind_of = np.where(np.arange(nT + nL) < nT, np.where(flip, 1, 0), 2)
        l_index = _parents(inv_l, order_l, [nT, nT, nL], [nT, nT, nL], kind_of)
        l_key = first_l[order_l]
        zero = int(np.nonzero(order_l == inv_l[zero_cand])[0][0])
        steps.append(_Step(index(t_index), index(l_index), index(t_key), index(l_key),
                           torch.as_tensor(sign[l_key], dtype=tissue.dtype, device=device), index(np.array([zero])),
                           int(np.count_nonzero(emit[order]))))
        # advance the representative states and the keys (as the main pass does)
        F, Z = F_new[order], Z_new[order_l]
        qT, iT = cand[t_key], cand_i[t_key]
        qL, iL = cand_l[l_key] * sign[l_key, None], cand_li[l_key] * sign[l_key, None]
        shift = numbers(rep.shift)
        e1 = np.exp(-shift[3] / t1)
        F, Z = F * np.exp(-shift[3] / t2), Z * e1
        Z[zero] += 1 - e1
        qT, iT = qT + shift, iT + np.rint(shift / quantum).astype(np.int64)
    return steps


def _parents(inv: np.ndarray, order: np.ndarray, sizes: list[int], pads: list[int],
             kind_of: np.ndarray | None = None) -> np.ndarray:
    """Parent table (kinds, states + 1) of the kept merged states ``order``: candidate c (of kind k, the c-th
    after the kinds before it) merged into ``inv[c]``; absent parents point at the pad row ``pads[k]``."""
    new = np.full(inv.max(initial=-1) + 1, -1)
    new[order] = np.arange(order.shape[0])
    table = np.repeat(np.asarray(pads)[:, None], order.shape[0] + 1, axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cand = np.arange(inv.shape[0])
    if kind_of is None:
        kind = np.searchsorted(np.cumsum(sizes), cand, side="right")
        source = cand - starts[kind]
    else:
        kind = kind_of
        source = np.where(cand < sizes[0], cand, cand - sizes[0])
    kept = new[inv] >= 0
    table[kind[kept], new[inv[kept]]] = source[kept]
    return table


def _merge(keys: np.ndarray, amplitudes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge candidates with equal integer keys (n, 4): (candidate → state, first candidate of each state,
    summed amplitudes (states, P))."""
    hashed = (keys * _HASH).sum(1)
    _, first, inv = np.unique(hashed, return_index=True, return_inverse=True)
    # the sums of np.add.at (in candidate order, so bit for bit), as two bincounts: several times faster
    states, columns = first.shape[0], amplitudes.shape[1]
    bins = (inv[:, None] * columns + np.arange(columns)).reshape(-1)
    merged = np.empty((states, columns), complex)
    merged.real = np.bincount(bins, amplitudes.real.reshape(-1), states * columns).reshape(states, columns)
    merged.imag = np.bincount(bins, amplitudes.imag.reshape(-1), states * columns).reshape(states, columns)
    return inv, first, merged
