"""Run MRzero-Core (AGPL) as a black box on a case written by bench/engine_bench.py.

Runs ONLY inside bench/.mrzero-venv, in its own process, through MRzero-Core's public API (Sequence,
VoxelGridPhantom, compute_graph, execute_graph); mrbridge never imports this file nor MRzero-Core.

    bench/.mrzero-venv/bin/python bench/mrzero_driver.py CASE.npz OUT.npz [--backward]
        [--min-emitted 0.01] [--min-latent 0.01] [--max-states 200] [--min-state-mag 1e-4] [--threads N]

CASE.npz holds the sequence as mrbridge's JSON (key ``sequence``: to_dict() as a JSON string) and the twin maps
(pd, t1, t2, t2dash, b0, b1 as (z, y, x); coil_sens (coils, z, y, x) complex; fov (3,) m (x, y, z)). OUT.npz
gets the signal (coils, samples) complex128 and the seconds and peak RSS (MB) of the simulation.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import MRzeroCore as mr0
import numpy as np
import torch

USAGE = {"excitation": "EXCIT", "refocusing": "REFOC", "inversion": "UNDEF", "other": "UNDEF"}


def sequence(data: dict, grad: bool) -> tuple[mr0.Sequence, list[torch.Tensor]]:
    """The identical events as an MRzero sequence (moments in 1/m, so normalized_grads=False; ADC phase negated
    to MRzero's receiver convention)."""
    seq = mr0.Sequence(normalized_grads=False)
    leaves = []
    for r in data["repetitions"]:
        n = len(r["event_time"])
        rep = seq.new_rep(n)
        usage = USAGE[r["pulse"]["usage"]]
        rep.pulse.usage = getattr(mr0.PulseUsage, usage) if hasattr(mr0.PulseUsage, usage) else mr0.PulseUsage.UNDEF
        rep.pulse.angle = torch.tensor(r["pulse"]["angle"], dtype=torch.float32)
        rep.pulse.phase = torch.tensor(r["pulse"]["phase"], dtype=torch.float32)
        rep.event_time[:] = torch.tensor(r["event_time"], dtype=torch.float32)
        gradm = torch.tensor(r["gradm"], dtype=torch.float32).reshape(n, 3)
        if grad:
            rep.pulse.angle.requires_grad_(True)
            gradm.requires_grad_(True)
            leaves += [rep.pulse.angle, gradm]
        rep.gradm = gradm
        rep.adc_usage[:] = torch.tensor(r["adc_usage"], dtype=torch.int32)
        # MRzero-Core demodulates by e^{+iφ_adc}, mrbridge by e^{−iφ_adc} (checked on a one-voxel FID)
        rep.adc_phase[:] = -torch.tensor(r["adc_phase"], dtype=torch.float32)
    return seq, leaves


def phantom(case: np.lib.npyio.NpzFile) -> mr0.SimData:
    """The twin on the same grid: arrays (z, y, x) → (x, y, z); voxel centres (i − n//2)·Δ via the affine (mm)."""

    def xyz(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, (-3, -2, -1), (-1, -2, -3))))

    pd = xyz(case["pd"]).float()
    nx, ny, nz = pd.shape
    size_mm = np.asarray(case["fov"], float) * 1e3 / np.array([nx, ny, nz])
    affine = torch.eye(4)
    for axis, (n, step) in enumerate(zip((nx, ny, nz), size_mm, strict=True)):
        affine[axis, axis] = float(step)
        affine[axis, 3] = -float(n // 2) * float(step)
    t2dash = xyz(case["t2dash"]).float().clamp(max=1e6)
    vox = mr0.VoxelGridPhantom(
        pd, xyz(case["t1"]).float(), xyz(case["t2"]).float(), t2dash, torch.zeros_like(pd),
        xyz(case["b0"]).float(), xyz(case["b1"]).float()[None], xyz(case["coil_sens"]).to(torch.complex64), affine,
    )
    return vox.build(voxel_shape="box")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("out")
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--min-emitted", type=float, default=0.01)
    parser.add_argument("--min-latent", type=float, default=0.01)
    parser.add_argument("--max-states", type=int, default=200)
    parser.add_argument("--min-state-mag", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    case = np.load(args.case)
    seq, leaves = sequence(json.loads(str(case["sequence"])), args.backward)
    data = phantom(case)
    start = time.perf_counter()
    with torch.set_grad_enabled(args.backward):
        graph = mr0.compute_graph(seq, data, args.max_states, args.min_state_mag)
        signal = mr0.execute_graph(graph, seq, data, args.min_emitted, args.min_latent, print_progress=False)
        if args.backward:
            signal.abs().square().sum().backward()
    seconds = time.perf_counter() - start
    signal = signal.detach().reshape(-1, signal.shape[-1]).T if signal.dim() == 2 else signal.detach()[None]
    np.savez(args.out, signal=signal.numpy().astype(np.complex128), seconds=seconds,
             rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             grad_norm=float(sum(float(leaf.grad.norm()) for leaf in leaves if leaf.grad is not None)))


if __name__ == "__main__":
    main()
