"""Training and test data of the unrolled-recon benchmark: randomised twins, simulated once fully sampled,
undersampled retrospectively.

Twins (64², 8 simulated coils): SPIN random phantoms (``spin-random``, seed i) and the brain twin with perturbed
maps (PD, T1, T2 multiplied by smooth random fields, then flipped / transposed at random), and, from index
:data:`BOTTLES` on, water bottles with vials (test objects without a skull, as scanners' phantoms are), each spanning
the protocol's field of view, as a head roughly spans a head scan's (the SPIN phantoms are drawn on 64 mm, the brain
on 220 mm: at the protocol's 200 mm as they are, a SPIN phantom would be a third of the image wide). Each twin is
simulated ONCE with the fully sampled GRE of ``protocols/gre.yaml`` (graph engine, noise-free, cached on disk).
An accelerated acquisition is then the RawData of the lines an ``Undersampling`` pattern picks, with its ACS
lines flagged as the builder flags them, plus complex Gaussian noise of σ relative to the largest |k| of the
twin's data: the Recon sees exactly what a prospectively accelerated scan of the same twin gives (the lines of a
spoiled GRE do depend slightly on their position in the train; retrospective undersampling ignores that).
The target is the coil-combined image of the noise-free, fully sampled data (CG-SENSE with sensitivities from all
lines, which equals the sensitivity-weighted combination there).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mrbridge.raw.rawdata import RawData
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sequence.undersampling import ACS_FLAGS, Undersampling, acquired_lines
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.coils import simulated_coils
from mrbridge.twin.ellipses import Ellipse, paint
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = REPO / "protocols" / "gre.yaml"
FOV_MM = load_protocol(PROTOCOL).fov_mm
MATRIX, COILS = 64, 8
BOTTLES = 1000  # twin indices from here on are water bottles


def _smooth_field(rng: np.random.Generator, n: int, strength: float) -> torch.Tensor:
    """(n, n) exp(strength·f), f a smooth random field of unit-order amplitude (4×4 noise, bicubic)."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, 4, 4))).float()
    f = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=True)[0, 0]
    return torch.exp(strength * f)


def perturbed_brain(seed: int) -> Twin:
    """The brain twin with PD, T1, T2 scaled by smooth random fields and a random flip / transpose."""
    rng = np.random.default_rng(seed)
    twin = builtin("brain", matrix=MATRIX, coils=COILS)
    pd = twin.pd * _smooth_field(rng, MATRIX, 0.25)
    t1 = twin.t1 * _smooth_field(rng, MATRIX, 0.2)
    t2 = torch.minimum(twin.t2 * _smooth_field(rng, MATRIX, 0.2), t1)
    maps = [pd, t1, t2, twin.t2dash, twin.b0, twin.b1]
    if rng.random() < 0.5:
        maps = [m.flip(-1) for m in maps]
    if rng.random() < 0.5:
        maps = [m.flip(-2) for m in maps]
    if rng.random() < 0.5:
        maps = [m.transpose(-1, -2) for m in maps]
    return replace(twin, pd=maps[0].contiguous(), t1=maps[1].contiguous(), t2=maps[2].contiguous(),
                   t2dash=maps[3].contiguous(), b0=maps[4].contiguous(), b1=maps[5].contiguous(), labels=None)


def water_bottle(seed: int) -> Twin:
    """A test-object phantom without a skull: an elliptical bottle (half-axes 0.5–0.9 of the half field of view,
    off centre by up to 0.1) of doped water (PD 0.7–1 times a smooth field, T1 0.1–2 s, T2 0.03–0.6 s ≤ T1,
    T2' 0.05–0.3 s) holding 0–6 vials (half-axes 0.04–0.2) of other water (or, one in five, of no signal: an
    air bubble, a plastic insert)."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 0.9, 2)
    bottle = Ellipse(*rng.uniform(-0.1, 0.1, 2), a, b, rng.uniform(0, 180))
    shapes, pds, t1s, t2s = [bottle], [rng.uniform(0.7, 1.0)], [rng.uniform(0.1, 2.0)], [rng.uniform(0.03, 0.6)]
    for _ in range(int(rng.integers(7))):
        r, angle = rng.uniform(0.2, 0.8) * min(a, b), rng.uniform(0, 2 * np.pi)
        vial = Ellipse(bottle.x + r * np.cos(angle), bottle.y + r * np.sin(angle), *rng.uniform(0.04, 0.2, 2),
                       rng.uniform(0, 180))
        shapes.append(vial)
        pds.append(0.0 if rng.random() < 0.2 else rng.uniform(0.3, 1.0))
        t1s.append(rng.uniform(0.1, 2.0))
        t2s.append(rng.uniform(0.03, 0.6))
    inside = torch.from_numpy(paint([bottle], [1.0], MATRIX, 0.0)).float()  # vials end at the bottle's wall
    pd = torch.from_numpy(paint(shapes, pds, MATRIX, 0.0)).float() * inside * _smooth_field(rng, MATRIX, 0.15)
    t1 = torch.from_numpy(paint(shapes, t1s, MATRIX, 1.0)).float()
    t2 = torch.minimum(torch.from_numpy(paint(shapes, t2s, MATRIX, 1.0)).float(), t1)
    t2dash = torch.full_like(pd, rng.uniform(0.05, 0.3))
    return Twin.from_maps(pd, t1, t2, (FOV_MM * 1e-3, FOV_MM * 1e-3, 5e-3), t2dash=t2dash,
                          provenance={"bench": "water bottle", "seed": seed})


def twin(index: int) -> Twin:
    """Twin ``index``: below :data:`BOTTLES` even ones SPIN random phantoms, odd ones perturbed brains; from there
    on water bottles; on the protocol's field of view (with coils simulated for it)."""
    if index >= BOTTLES:
        made = water_bottle(index)
    elif index % 2 == 0:
        made = builtin("spin-random", matrix=MATRIX, coils=COILS, seed=index)
    else:
        made = perturbed_brain(index)
    fov = (FOV_MM * 1e-3, FOV_MM * 1e-3, made.fov[2])
    return replace(made, fov=fov, coil_sens=simulated_coils(made.shape, fov, COILS))


def full_raw(indices: list[int], cache: Path, *, batch: int = 8) -> list[RawData]:
    """Noise-free fully sampled GRE RawData of the twins (signals simulated in batches of twins, which share
    the field of view and coil sensitivities, and cached in ``cache`` as ``twinNNN_fov200mm.pt``: the name says the
    field of view, so that signals of twins a third of the image wide, as sessions 7–11 cached them as
    ``twinNNN.pt``, are not taken for these)."""
    seq = build(load_protocol(PROTOCOL))
    cache.mkdir(parents=True, exist_ok=True)

    def file(i: int) -> Path:
        return cache / f"twin{i:03d}_fov{FOV_MM:g}mm.pt"

    missing = [i for i in indices if not file(i).is_file()]
    for start in range(0, len(missing), batch):
        group = missing[start:start + batch]
        twins = [twin(i) for i in group]
        maps = {m: torch.stack([getattr(t, m) for t in twins]) for m in ("pd", "t1", "t2", "t2dash", "b0", "b1")}
        stacked = replace(twins[0], pd=maps["pd"], t1=maps["t1"], t2=maps["t2"], t2dash=maps["t2dash"],
                          b0=maps["b0"], b1=maps["b1"])
        with torch.no_grad():
            signals = simulate_graph(seq, stacked)
        for i, signal in zip(group, signals.unbind(0), strict=True):
            torch.save(signal.clone(), file(i))
    return [to_rawdata(seq, torch.load(file(i), weights_only=True)) for i in indices]


def target(raw: RawData) -> torch.Tensor:
    """(y, x) complex: the sensitivity-weighted image of fully sampled noise-free data (all lines calibrate)."""
    flags = torch.full((raw.readouts,), ACS_FLAGS, dtype=torch.int64)
    with torch.no_grad():
        return Recon(ReconConfig(method="sense", iterations=30))(replace(raw, flags=flags)).data[0, 0, 0]


def undersample(raw: RawData, spec: Undersampling, noise: float, seed: int) -> RawData:
    """The RawData an accelerated scan of ``spec`` gives: its lines, ACS flagged, noise σ = noise·max|k| (and a
    noise scan of 256 samples per coil with that σ)."""
    lines, acs = acquired_lines(MATRIX, spec)
    step = raw.labels["kspace_encode_step_1"]
    rows = torch.tensor([int((step == line).nonzero()[0, 0]) for line in lines])
    gen = torch.Generator().manual_seed(seed)
    k = raw.kdata[:, rows]
    sigma = noise * float(raw.kdata.abs().max())
    k = k + sigma * torch.randn(k.shape, dtype=k.dtype, generator=gen)
    flags = torch.tensor([ACS_FLAGS if line in acs else 0 for line in lines], dtype=torch.int64)
    labels = {name: value[rows] for name, value in raw.labels.items()}
    scan = sigma * torch.randn((raw.coils, 256), dtype=k.dtype, generator=gen)  # the noise scan
    return replace(raw, kdata=k, labels=labels, flags=flags, traj=None if raw.traj is None else raw.traj[rows],
                   sample_time=None if raw.sample_time is None else raw.sample_time[rows], noise=scan)
