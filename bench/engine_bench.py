"""mrbridge's phase-graph engine against MRzero-Core (black box), side by side on the same events and twin.

    .venv/bin/python bench/engine_bench.py [--sizes 64 128] [--accuracy 1e-3] [--threads 2]
        [--reference graph|bloch] [--spins 4096] [--min-emitted 0.01] [--min-latent 0.01]

Case: the RF-spoiled GRE of protocols/gre.yaml (117°, 100 dummies) at N×N on the builtin ``brain`` twin
(T2′ and B0 maps). Each engine, size and mode (forward; forward+backward of Σ|signal|² w.r.t. every flip
angle and gradient moment) runs in its own subprocess, so its peak RSS (ru_maxrss) is its own. Time is wall
time of the simulation call only (no import, no phantom building).

MRzero-Core (AGPL-3.0) is installed on first use into ``bench/.mrzero-venv`` (pip, reusing the pinned CPU
torch through ``-c constraints.txt``) and only ever run there, as a subprocess of bench/mrzero_driver.py,
through its public API; mrbridge never imports it. The driver rebuilds our exact events (moments in 1/m,
durations, RF angle/phase, ADC phase) with MRzero's Sequence API and our maps with its VoxelGridPhantom on
the same voxel grid with box-shaped voxels (our voxel model).

Error: NRMSE of each engine's signal against the reference: ``graph`` (default) is mrbridge's graph at
accuracy 1e-7 (the exact graph of the model, itself checked against the converged Bloch engine in
tests/sim/test_graph.py); ``bloch`` is the Bloch engine with ``--spins`` (slow; converges as 1/√spins on
spoiled sequences). The load average is printed with the table: timings on a shared machine are inflated.
MRzero-Core runs under a memory limit of 80 % of the memory available at its start (a failure is reported,
e.g. its 128² forward+backward, which needs about 20 GB).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.bloch import simulate_bloch
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".mrzero-venv"
DRIVER = ROOT / "bench" / "mrzero_driver.py"


def case(matrix: int) -> tuple[Sequence, Twin]:
    return build(load_protocol(ROOT / "protocols" / "gre.yaml"), matrix=matrix), builtin("brain", matrix=matrix)


def mrzero_python() -> Path:
    """The venv's python, creating the venv and installing mrzerocore on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "mrzerocore", "-c", str(ROOT / "constraints.txt")],
                       check=True)
    return python


def write_case(seq: Sequence, twin: Twin, path: Path) -> None:
    np.savez(path, sequence=json.dumps(seq.to_dict()), fov=np.asarray(twin.fov),
             coil_sens=twin.coil_sens.numpy(),
             **{name: getattr(twin, name).numpy() for name in ("pd", "t1", "t2", "t2dash", "b0", "b1")})


def one_graph(matrix: int, accuracy: float, backward: bool, threads: int) -> dict[str, float]:
    """Run the graph engine once in this process; the signal goes to a temporary .npy named in the result."""
    torch.set_num_threads(threads)
    importlib.import_module("torch._dynamo")  # imported by the first torch.utils.checkpoint call: not simulation

    seq, twin = case(matrix)
    if backward:
        for rep in seq:
            rep.pulse.angle.requires_grad_(True)
            rep.gradm.requires_grad_(True)
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        signal = simulate_graph(seq, twin, accuracy=accuracy)
        if backward:
            signal.abs().square().sum().backward()
    seconds = time.perf_counter() - start
    out = tempfile.NamedTemporaryFile(suffix=".npy", delete=False).name
    np.save(out, signal.detach().numpy().astype(np.complex128))
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "signal": out}


def run_graph(matrix: int, accuracy: float, backward: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(matrix), "--accuracy", str(accuracy), "--threads", str(threads)]
    out = subprocess.run([*cmd, *(["--backward"] if backward else [])], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["signal"] = np.load(result["signal"])
    return result


def memory_limit() -> int:
    """Bytes a peer process may map: 80 % of the memory available now (the machine is shared)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(0.8 * int(line.split()[1]) * 1024)
    return 2**40


def run_mrzero(matrix: int, backward: bool, args: argparse.Namespace) -> dict | None:
    """MRzero-Core in its own process under a memory limit; None when it fails (out of memory)."""
    seq, twin = case(matrix)
    limit = memory_limit()

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "case.npz", Path(tmp) / "out.npz"
        write_case(seq, twin, path)
        cmd = [str(mrzero_python()), str(DRIVER), str(path), str(out), "--threads", str(args.threads),
               "--min-emitted", str(args.min_emitted), "--min-latent", str(args.min_latent)]
        done = subprocess.run([*cmd, *(["--backward"] if backward else [])], capture_output=True, text=True,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, preexec_fn=cap)
        if done.returncode != 0:
            print(f"  mrzero {matrix} {'f+b' if backward else 'fwd'} failed under a {limit / 2**30:.1f} GiB "
                  f"memory limit: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            return None
        result = np.load(out)
        return {"seconds": float(result["seconds"]), "rss_mb": float(result["rss_mb"]), "signal": result["signal"]}


def reference(matrix: int, kind: str, spins: int) -> np.ndarray:
    seq, twin = case(matrix)
    with torch.no_grad():
        signal = simulate_graph(seq, twin, accuracy=1e-7) if kind == "graph" else simulate_bloch(seq, twin, spins=spins)
    return signal.numpy().astype(np.complex128)


def nrmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reference", choices=("graph", "bloch"), default="graph")
    parser.add_argument("--spins", type=int, default=4096)
    parser.add_argument("--min-emitted", type=float, default=0.01)
    parser.add_argument("--min-latent", type=float, default=0.01)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_graph(args.one, args.accuracy, args.backward, args.threads)))
        return
    print(f"RF-spoiled GRE (protocols/gre.yaml) on builtin:brain, {args.threads} threads, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; reference: {args.reference}; graph accuracy "
          f"{args.accuracy:g}; MRzero min_emitted {args.min_emitted:g}, min_latent {args.min_latent:g}")
    print(f"{'engine':>8} {'N':>4} {'mode':>5} {'time s':>8} {'ratio':>6} {'RSS MB':>8} {'ratio':>6} {'NRMSE':>8}")
    for n in args.sizes:
        ref = reference(n, args.reference, args.spins)
        for backward in (False, True):
            mode = "f+b" if backward else "fwd"
            peer = run_mrzero(n, backward, args)
            ours = run_graph(n, args.accuracy, backward, args.threads)
            for name, r in (("mrzero", peer), ("graph", ours)):
                if r is None:
                    print(f"{name:>8} {n:>4} {mode:>5} {'failed (memory)':>33}", flush=True)
                    continue
                t_ratio = f"{r['seconds'] / peer['seconds']:>6.2f}" if peer else f"{'-':>6}"
                m_ratio = f"{r['rss_mb'] / peer['rss_mb']:>6.2f}" if peer else f"{'-':>6}"
                print(f"{name:>8} {n:>4} {mode:>5} {r['seconds']:>8.2f} {t_ratio} {r['rss_mb']:>8.0f} {m_ratio} "
                      f"{nrmse(r['signal'], ref):>8.4f}", flush=True)
        print(f"{'':>8} load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
