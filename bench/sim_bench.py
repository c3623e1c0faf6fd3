"""Bloch simulator benchmark: forward and forward+backward time and peak memory, and the spin convergence study.

    .venv/bin/python bench/sim_bench.py [--device cpu|cuda] [--sizes 32 64 128] [--spins N]
    .venv/bin/python bench/sim_bench.py --convergence [--matrix 64] [--spins-list 512 1024 2048 4096 8192]

Timing (wall and process CPU seconds; threads as torch / OMP_NUM_THREADS set them) runs the GRE protocol
(protocols/gre.yaml) on the builtin ``brain`` twin, each size and mode in its own subprocess so that the peak
RSS (``resource.ru_maxrss``) and the CUDA peak belong to that run alone. The backward pass differentiates
|signal|² w.r.t. every flip angle, gradient moment and the T1 map. The convergence study prints, for the GRE
and TSE protocols, the NRMSE between the signal with S and with 2S
spins per voxel (the table in :mod:`mrbridge.sim.bloch`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.bloch import DEFAULT_SPINS, simulate_bloch
from mrbridge.twin.phantoms import builtin

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"


def one_run(matrix: int, spins: int, device: str, backward: bool) -> dict[str, float]:
    """Simulate the GRE once in this process; return seconds and peak memory."""
    seq = build(load_protocol(PROTOCOLS / "gre.yaml"), matrix=matrix).to(device)
    twin = builtin("brain", matrix=matrix).to(device)
    if backward:
        for rep in seq:
            rep.pulse.angle.requires_grad_(True)
            rep.gradm.requires_grad_(True)
        twin.t1.requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu = time.perf_counter(), time.process_time()
    with torch.set_grad_enabled(backward):
        signal = simulate_bloch(seq, twin, spins=spins)
        if backward:
            signal.abs().square().sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0,
        "voxels": int((twin.pd > 0).sum()),
    }


def timing(sizes: list[int], spins: int, device: str) -> None:
    print(f"GRE (protocols/gre.yaml) on builtin:brain, {spins} spins/voxel, device {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'matrix':>7} {'voxels':>7} {'fwd s':>8} {'(cpu s)':>8} {'fwd RSS MB':>11} {'f+b s':>8} {'(cpu s)':>8} "
          f"{'f+b RSS MB':>11}"
          + (f" {'fwd CUDA MB':>12} {'f+b CUDA MB':>12}" if device == "cuda" else ""))
    for n in sizes:
        rows = []
        for backward in (False, True):
            cmd = [sys.executable, __file__, "--one", str(n), "--spins", str(spins), "--device", device]
            if backward:
                cmd.append("--backward")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        fwd, both = rows
        line = (f"{n:>7} {fwd['voxels']:>7} {fwd['seconds']:>8.2f} {fwd['cpu_seconds']:>8.2f} {fwd['rss_mb']:>11.0f} "
                f"{both['seconds']:>8.2f} {both['cpu_seconds']:>8.2f} {both['rss_mb']:>11.0f}")
        if device == "cuda":
            line += f" {fwd['cuda_mb']:>12.0f} {both['cuda_mb']:>12.0f}"
        print(line, flush=True)


def convergence(matrix: int, spins_list: list[int], device: str) -> None:
    twin = builtin("brain", matrix=matrix).to(device)
    print(f"builtin:brain {matrix}², NRMSE(signal(S), signal(2S))")
    print(f"{'spins S':>8} " + " ".join(f"{name:>10}" for name in ("gre", "tse")))
    results: dict[str, dict[int, torch.Tensor]] = {"gre": {}, "tse": {}}
    for name in results:
        seq = build(load_protocol(PROTOCOLS / f"{name}.yaml"), matrix=matrix).to(device)
        with torch.no_grad():
            for s in sorted({*spins_list, *(2 * s for s in spins_list)}):
                results[name][s] = simulate_bloch(seq, twin, spins=s)
    for s in spins_list:
        errors = []
        for name in results:
            a, b = results[name][s], results[name][2 * s]
            errors.append(float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)))
        print(f"{s:>8} " + " ".join(f"{100 * e:>9.2f}%" for e in errors), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--spins", type=int, default=DEFAULT_SPINS)
    parser.add_argument("--convergence", action="store_true")
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--spins-list", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.spins, args.device, args.backward)))
    elif args.convergence:
        convergence(args.matrix, args.spins_list, args.device)
    else:
        timing(args.sizes, args.spins, args.device)


if __name__ == "__main__":
    main()
