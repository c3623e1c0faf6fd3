"""The ADC of the phase graph: the signal of transverse states at a readout's samples, chunked under a budget.

For the states of one readout (amplitude per voxel G_sv = PD·C·F·e^{−i(2πk_s·r_v + ω_v τ_s)}, see
:mod:`mrbridge.sim.graph`) and a chunk of samples j = a … e−1 (moment K_j, time T_j), on each side ± of the echo

    s_cj = Σ_s sinc_sj · use_sj · Σ_v W_cv G_sv e^{∓(τ_s + T_a) R2′_v} E_va · E_vj/E_va,
    E_vj = exp(−i(2πK_j·r_v + ω_v T_j) − T_j R2_v ∓ (T_j − T_a) R2′_v)

(use_sj: the sample is on that side of the state's echo). On a run of samples with constant steps (ΔK, ΔT),
E_vj/E_va = z_v^{j−a} with z_v = e^{λ_v}, λ_v = −i(2πΔK·r_v + ω_vΔT) − ΔT(R2_v ± R2′_v); writing j − a = b·p + r,
the sum over voxels is one matrix product (states·b × V)·(V × P) of G·z^r and z^{bp}: V·(b + P) exponentials
per chunk instead of V·J (b ≈ √(J / (coils·states)), P = J / b). Runs are detected on the values: a run is used
only where the samples deviate from the straight line by at most ``TOLERANCE`` radians of phase (and as much
relative decay) in every voxel, which bounds the error of every term by that; elsewhere (ramps, non-linear
trajectories) E is formed sample by sample (the exact path). When the moments or times of the readout need
gradients the exact path is used throughout, so that each sample's derivative is its own.

Memory: the samples are cut into chunks and the voxels into blocks so that one chunk's tensors stay within
the budget given to :func:`emit`; the chunk's time span is also bounded so that e^{±ΔT·R2′} stays finite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from mrbridge.sim.graph import _Tissue

#: runs shorter than this go through the exact path
MIN_RUN = 16
#: most samples in one chunk
MAX_CHUNK = 4096
#: largest growth exponent ΔT·R2′ across one chunk (e^{30} is far from overflow in float32)
MAX_DECAY_SPAN = 30.0
#: phase deviation (rad) below which samples count as a straight run, per real dtype
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def emit(tissue: _Tissue, F: torch.Tensor, q: torch.Tensor, time: torch.Tensor, moment: torch.Tensor,
         adc_phase: torch.Tensor, budget: int, *, recompute: bool = False,
         per_sample_gradients: bool = True) -> torch.Tensor:
    """Signal of states F (S, X) with keys q (S, 4) at one readout's samples (time (J,), moment (J, 3)).

    budget: bytes one chunk's tensors may use; recompute: checkpoint each chunk (its factors are recomputed in
    the backward pass instead of kept); per_sample_gradients: False keeps the factorised path on straight runs
    when moments or times need gradients, which then reach each run through its first two samples (exact when
    the whole run moves as one, as under a gradient delay on a flat top)
    Returns: Tensor  # (batch, coils, J) complex
    """
    B, C, V, S, J = tissue.batch, tissue.coils, tissue.V, F.shape[0], time.shape[0]
    if S == 0 or J == 0 or V == 0:
        return torch.zeros((B, C, J), dtype=tissue.cdtype, device=tissue.device)
    amp = (F if tissue.expand is None else F[:, tissue.expand]).reshape(S, B, V).transpose(0, 1)  # (B, S, V)
    exact = per_sample_gradients and (moment.requires_grad or time.requires_grad)
    pieces = []
    for a, e, straight in chunks(tissue, time, moment, S, budget):
        args = (tissue, amp, q, time[a:e], moment[a:e], straight and not exact, budget)
        pieces.append(checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args))
    return torch.cat(pieces, -1) * torch.complex(torch.cos(adc_phase), -torch.sin(adc_phase))


def chunks(tissue: _Tissue, time: torch.Tensor, moment: torch.Tensor, states: int,
           budget: int) -> list[tuple[int, int, bool]]:
    """Sample chunks (start, end, straight) of a readout: straight runs of constant step, the rest in between."""
    t = time.detach().to("cpu", torch.float64).numpy()
    k = moment.detach().to("cpu", torch.float64).numpy()
    J = t.shape[0]
    # bounds over voxels: |r| per axis, largest rate of phase (|ω|) and of decay (R2 + R2′)
    extent = tissue.pos.detach().abs().amax(0).to("cpu", torch.float64).numpy() if tissue.V else np.zeros(3)
    r2dash = float(tissue.r2dash.detach().abs().max()) if tissue.V else 0.0
    rate = float((2 * math.pi * tissue.b0.detach().abs()).max() + tissue.r2.detach().abs().max()) + r2dash
    tolerance = TOLERANCE.get(tissue.dtype, 1e-5)
    # samples per chunk: the output rows (batch·coils·states·samples, a few copies) within a quarter of the budget
    row = 8 * tissue.batch * tissue.coils * max(states, 1) * tissue.cdtype.itemsize
    longest = int(max(1, min(MAX_CHUNK, budget // 4 // row)))
    spans = []
    a = 0
    while a < J:
        dk, dt = (k[a + 1] - k[a], t[a + 1] - t[a]) if a + 1 < J else (0.0, 0.0)
        for window in (min(MIN_RUN, longest), longest):  # a short look first: on ramps most starts fail there
            n = np.arange(min(J - a, window))
            off_k = np.abs(k[a:a + n.size] - k[a] - n[:, None] * dk) @ extent * 2 * math.pi
            off_t = np.abs(t[a:a + n.size] - t[a] - n * dt) * rate
            bad = np.nonzero(off_k + off_t > tolerance)[0]
            e = a + (int(bad[0]) if bad.size else n.size)
            if bad.size:
                break
        if r2dash > 0 and dt > 0:
            e = min(e, a + max(2, int(MAX_DECAY_SPAN / (dt * r2dash))))
        spans.append((a, e, e - a >= MIN_RUN))
        a = e
    # consecutive short spans become exact chunks of up to ``longest`` samples within the decay span
    out: list[tuple[int, int, bool]] = []
    for a, e, straight in spans:
        if out and not straight and not out[-1][2] and e - out[-1][0] <= longest and (
                r2dash == 0 or (t[e - 1] - t[out[-1][0]]) * r2dash <= MAX_DECAY_SPAN):
            out[-1] = (out[-1][0], e, False)
        else:
            out.append((a, e, straight))
    return out


def _chunk(tissue: _Tissue, amp: torch.Tensor, q: torch.Tensor, time: torch.Tensor, moment: torch.Tensor,
           straight: bool, budget: int) -> torch.Tensor:
    """Signal (batch, coils, Jc) of states amp (B, S, V) with keys q (S, 4) at Jc samples (time (Jc,), moment
    (Jc, 3)); factorised as z^{bp+r} when ``straight``, else exact."""
    B, C, V, S, Jc = tissue.batch, tissue.coils, tissue.V, amp.shape[1], time.shape[0]
    cdtype, two_pi = tissue.cdtype, 2 * math.pi
    tau = q[:, 3:] + time[None]  # (S, Jc)
    shape = torch.sinc((q[:, None, :3] + moment[None]) * tissue.size).prod(-1)  # (S, Jc)
    # b·C·S + P per voxel is least at b = √(Jc / (C·S)) (the tables matter little when C·S is large)
    b = math.ceil(math.sqrt(Jc / (C * S))) if straight else 1
    P = math.ceil(Jc / b)
    # per voxel: key phase (S), A (C·S), A·z^r (C·S·b), tables (b + P) or E (Jc); a few temporaries each
    per_voxel = 3 * B * cdtype.itemsize * (2 * S + 2 * C * S + (C * S * b + b + P if straight else 2 * Jc))
    block = max(1, budget // per_voxel)
    total = torch.zeros((B, C, Jc), dtype=cdtype, device=tissue.device)
    for v0 in range(0, V, block):
        vs = slice(v0, v0 + block)
        pos, omega = tissue.pos[vs], two_pi * tissue.b0[:, vs]  # (v, 3), (B, v)
        r2, r2dash = tissue.r2[:, vs], tissue.r2dash[:, vs]
        # phase of each state's key and of the chunk's first sample, per voxel
        theta = -(two_pi * (q[:, :3] @ pos.T))[None] - omega[:, None, :] * q[None, :, 3:]  # (B, S, v)
        start = -(two_pi * (pos @ moment[0]))[None] - omega * time[0]  # (B, v)
        for sign, use in ((1.0, tau >= 0), (-1.0, tau < 0)):
            rows = use.any(1)
            if not bool(rows.any()):
                continue
            idx = torch.nonzero(rows).flatten()
            s = idx.numel()
            log_mag = -sign * (q[idx, 3] + time[0])[None, :, None] * r2dash[:, None, :] - (r2 * time[0])[:, None, :]
            a = amp[:, idx, vs] * _cexp(log_mag, theta[:, idx] + start[:, None, :])  # (B, s, v)
            a = (tissue.weight[:, :, None, vs] * a[:, None]).reshape(B, C * s, -1)  # (B, C·s, v)
            decay = -(r2 + sign * r2dash)  # (B, v) 1/s
            if straight:
                # z = e^{λ}: λ's real part (decay) and imaginary part (phase) per step
                lam_re = decay * (time[1] - time[0])  # (B, v)
                lam_im = -(two_pi * (pos @ (moment[1] - moment[0])))[None] - omega * (time[1] - time[0])
                steps = torch.arange(max(b, P), dtype=tissue.dtype, device=tissue.device)
                r, p = steps[:b, None], b * steps[:P]
                small = _cexp(lam_re[:, None, :] * r, lam_im[:, None, :] * r)  # (B, b, v): z^r
                large = _cexp(lam_re[:, :, None] * p, lam_im[:, :, None] * p)  # (B, v, P): z^{bp}
                ar = (a[:, :, None, :] * small[:, None]).reshape(B, C * s * b, -1)  # (B, C·s·b, v)
                m = torch.bmm(ar, large).reshape(B, C * s, b, P).transpose(2, 3).reshape(B, C * s, P * b)[..., :Jc]
            else:
                dt = time - time[0]  # (Jc,)
                phase = -(two_pi * (pos @ (moment - moment[0]).T))[None] - omega[..., None] * dt  # (B, v, Jc)
                e = _cexp(decay[..., None] * dt, phase)
                m = torch.bmm(a, e)  # (B, C·s, Jc)
            factor = (shape[idx] * use[idx]).to(cdtype)  # (s, Jc)
            total = total + (m.reshape(B, C, s, Jc) * factor).sum(2)
    return total


def _cexp(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """e^{re + i·im} (complex; a third of the time of torch.exp on a complex tensor)."""
    return torch.polar(torch.exp(re), im)


def chunk_floor(tissue: _Tissue) -> int:
    """Bytes of the smallest chunk (one sample, one voxel, one state): below this nothing can run."""
    return 64 * tissue.batch * tissue.coils * tissue.cdtype.itemsize
