"""A scanner's .seq file on a scanner-size twin: mrbridge's graph engine against MRzero-Core (black box).

    .venv/bin/python bench/seq_sim_bench.py [--seq FILE.seq] [--matrix 256] [--error-matrix N]
        [--accuracy 1e-3] [--threads 1] [--min-emitted 0.01] [--min-latent 0.01] [--skip-mrzero]

Case: by default the 256×256 GRE of the Pulseq tutorials (../shared/data/pulseq-tutorials/
11_from_GRE_to_EPI__01_GRE.seq; the script says so and stops when ../shared/data is absent) on the builtin
``brain`` twin at ``--matrix``. Each engine reads the .seq with its own importer and runs in its own subprocess,
so its peak RSS (ru_maxrss) is its own; time is that of the import and of the simulation (wall and CPU
user+sys), without Python imports or phantom building.

MRzero-Core (AGPL-3.0) runs only in ``bench/.mrzero-venv`` (made by bench/engine_bench.py on first use), as a
subprocess running this file's ``--mrzero`` mode: ``mr0.Sequence.import_file`` on the same .seq, the twin through
bench/mrzero_driver.py's ``phantom`` (same grid, box voxels), ``compute_graph`` and ``execute_graph``. mrbridge
never imports it.

Error: NRMSE of each engine's signal against mrbridge's graph at accuracy 1e-7 (the exact graph of the model,
checked against the converged Bloch engine in tests/sim/test_graph.py) on the same .seq and twin, after one global
complex factor fitted per engine (MRzero-Core's signal is that of mrbridge times about −i: a convention of the
excitation phase). ``--error-matrix`` (default: ``--matrix``) computes it on a smaller twin instead, each engine
run again there; on a twin coarser than the sequence's matrix the voxel-shape model (the attenuation of dephased
states within a voxel) weighs more, and there the engines differ (the 256² GRE: MRzero-Core 19 %, 14 %, 8 %,
1.6 % at 32², 64², 128², 256²; the single-shot EPI 11_…_05_EPI.seq, one state: 7e-6 at 64²).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEQ = ROOT.parent / "shared" / "data" / "pulseq-tutorials" / "11_from_GRE_to_EPI__01_GRE.seq"


def clocks() -> tuple[float, float]:
    """(wall, CPU user+sys) seconds now."""
    t = os.times()
    return time.perf_counter(), t.user + t.system


def one_graph(seq_path: str, matrix: int, accuracy: float, threads: int, out: str) -> dict[str, float]:
    """mrbridge in this process: import the .seq, simulate on the builtin brain; the signal goes to ``out``."""
    import torch

    from mrbridge.sequence.import_seq import import_seq
    from mrbridge.sim.graph import simulate_graph
    from mrbridge.twin.phantoms import builtin

    torch.set_num_threads(threads)
    twin = builtin("brain", matrix=matrix)
    wall0 = time.perf_counter()
    seq = import_seq(seq_path)
    wall1, cpu1 = clocks()
    with torch.no_grad():
        signal = simulate_graph(seq, twin, accuracy=accuracy)
    wall2, cpu2 = clocks()
    np.save(out, signal.numpy().astype(np.complex128))
    return {"import_s": wall1 - wall0, "seconds": wall2 - wall1, "cpu_s": cpu2 - cpu1,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def one_mrzero(seq_path: str, case: str, args: argparse.Namespace, out: str) -> dict[str, float]:
    """MRzero-Core in this process (only inside bench/.mrzero-venv): its own .seq import, the twin of ``case``."""
    import MRzeroCore as mr0
    import torch
    from mrzero_driver import phantom

    torch.set_num_threads(args.threads)
    data = phantom(np.load(case))
    wall0 = time.perf_counter()
    seq = mr0.Sequence.import_file(seq_path)
    wall1, cpu1 = clocks()
    with torch.no_grad():
        graph = mr0.compute_graph(seq, data, 200, 1e-4)
        signal = mr0.execute_graph(graph, seq, data, args.min_emitted, args.min_latent, print_progress=False)
    wall2, cpu2 = clocks()
    signal = signal.reshape(-1, signal.shape[-1]).T  # (coils, samples)
    np.save(out, signal.numpy().astype(np.complex128))
    return {"import_s": wall1 - wall0, "seconds": wall2 - wall1, "cpu_s": cpu2 - cpu1,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(cmd: list[str], env: dict[str, str] | None = None) -> dict | None:
    """One engine in a subprocess; its JSON line, with the signal loaded, or None (its error printed)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["signal"] = np.load(result["signal"])
    return result


def graph(args: argparse.Namespace, matrix: int, accuracy: float, tmp: Path) -> dict | None:
    out = str(tmp / f"graph-{matrix}-{accuracy:g}.npy")
    return run([sys.executable, __file__, "--one-graph", str(matrix), "--accuracy", str(accuracy), "--threads",
                str(args.threads), "--seq", str(args.seq), "--out", out])


def mrzero(args: argparse.Namespace, matrix: int, tmp: Path) -> dict | None:
    from engine_bench import mrzero_python

    from mrbridge.twin.phantoms import builtin

    twin = builtin("brain", matrix=matrix)
    case = tmp / f"twin-{matrix}.npz"
    np.savez(case, fov=np.asarray(twin.fov), coil_sens=twin.coil_sens.numpy(),
             **{name: getattr(twin, name).numpy() for name in ("pd", "t1", "t2", "t2dash", "b0", "b1")})
    out = str(tmp / f"mrzero-{matrix}.npy")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return run([str(mrzero_python()), __file__, "--mrzero", str(case), "--threads", str(args.threads),
                "--min-emitted", str(args.min_emitted), "--min-latent", str(args.min_latent), "--seq",
                str(args.seq), "--out", out], env=env)


def fitted_nrmse(a: np.ndarray, b: np.ndarray) -> float:
    """‖c·a − b‖ / ‖b‖ with the complex c that minimises it (one global factor: the engines' phase conventions)."""
    c = np.vdot(a, b) / np.vdot(a, a)
    return float(np.linalg.norm(c * a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=Path, default=DEFAULT_SEQ)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--error-matrix", type=int)
    parser.add_argument("--accuracy", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-emitted", type=float, default=0.01)
    parser.add_argument("--min-latent", type=float, default=0.01)
    parser.add_argument("--skip-mrzero", action="store_true")
    parser.add_argument("--one-graph", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mrzero", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_graph:
        result = one_graph(str(args.seq), args.one_graph, args.accuracy, args.threads, args.out)
        print(json.dumps({**result, "signal": args.out}))
        return
    if args.mrzero:
        result = one_mrzero(str(args.seq), args.mrzero, args, args.out)
        print(json.dumps({**result, "signal": args.out}))
        return
    if not args.seq.exists():
        print(f"skipped: {args.seq} is absent (the shared data of ../shared/data are not here)")
        return
    sys.path.insert(0, str(ROOT / "bench"))
    small = args.error_matrix or args.matrix
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.seq.name} on builtin:brain {args.matrix}², {args.threads} thread(s), load average {load}; graph "
          f"accuracy {args.accuracy:g}; MRzero min_emitted {args.min_emitted:g}, min_latent {args.min_latent:g}; "
          f"error: NRMSE at {small}² against mrbridge graph at accuracy 1e-7 (one global factor fitted)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        reference = graph(args, small, 1e-7, tmp)
        ours = graph(args, args.matrix, args.accuracy, tmp)
        rows = {"graph": (ours, ours if small == args.matrix else graph(args, small, args.accuracy, tmp))}
        if not args.skip_mrzero:
            peer = mrzero(args, args.matrix, tmp)
            rows["mrzero"] = (peer, peer if small == args.matrix else mrzero(args, small, tmp))
    peer = rows.get("mrzero", (None, None))[0]
    print(f"{'engine':>8} {'import s':>9} {'sim s':>8} {'CPU s':>8} {'ratio':>6} {'RSS MB':>8} {'ratio':>6} "
          f"{'NRMSE':>8}")
    for engine, (big, low) in rows.items():
        if big is None:
            print(f"{engine:>8} failed")
            continue
        ratio = f"{big['seconds'] / peer['seconds']:>6.2f}" if peer else f"{'-':>6}"
        m_ratio = f"{big['rss_mb'] / peer['rss_mb']:>6.2f}" if peer else f"{'-':>6}"
        error = f"{fitted_nrmse(low['signal'], reference['signal']):>8.4f}" if low and reference else f"{'-':>8}"
        print(f"{engine:>8} {big['import_s']:>9.2f} {big['seconds']:>8.2f} {big['cpu_s']:>8.2f} {ratio} "
              f"{big['rss_mb']:>8.0f} {m_ratio} {error}")
    if peer and ours:
        print(f"NRMSE between the engines at {args.matrix}² (one global factor fitted): "
              f"{fitted_nrmse(peer['signal'], ours['signal']):.4f}")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
