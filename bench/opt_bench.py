"""Optimization benchmarks: the SPIN and MRzero reproductions, and steps per second graph vs Bloch engine.

Run by hand (never part of pass/fail), e.g. on the 2-core CPU::

    OMP_NUM_THREADS=2 .venv/bin/python bench/opt_bench.py spin gre0 speed t1 --out runs/bench

``spin``  protocols/spin_flip_angle.yaml (64×64 SE, 1000 training phantoms): wall time, the excitation angle,
          validation PSNR/SSIM after pretraining (30°, network trained on 90° data) and at the end, against
          SPIN's 30° → 87.9°, 28.3 → 29.2 dB, 0.932 → 0.945.
``gre0``  protocols/mrzero_gre_from_zero.yaml (32×32): wall time and the first validation with NRMSE < 0.1.
``sar``   protocols/mrzero_gre_sar.yaml: mean flip angle and SAR proxy before/after, image NRMSE.
``t1``    protocols/mrzero_t1_mapping.yaml: learned TIs and the validation T1 error.
``speed`` sequence steps per second of the GRE-from-zero and SPIN tasks with each engine (Bloch: the
          task's spins, else 64).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from mrbridge.optimize.task import parse_task
from mrbridge.optimize.trainer import Trainer, optimize

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = REPO / "protocols"


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _run(name: str, out: Path) -> tuple[dict[str, object], list[dict[str, str]], float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = optimize(PROTOCOLS / name, out, progress=None)
    wall = time.perf_counter() - start
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    return summary, rows, wall


def _validations(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r.get("val_loss")]


def spin(out: Path) -> None:
    summary, rows, wall = _run("spin_flip_angle.yaml", out / "spin")
    val = _validations(rows)
    before, after = val[0], val[-1]  # after pretraining (30°, 90°-trained network), and the end
    angle = summary["parameters"]["flip_angle"][0]  # type: ignore[index]
    print(f"spin: {wall / 60:.1f} min ({_load()}); flip angle 30° → {angle:.1f}° (SPIN 87.9°)")
    print(f"  PSNR {float(before['val_psnr']):.1f} → {float(after['val_psnr']):.1f} dB (SPIN 28.3 → 29.2); "
          f"SSIM {float(before['val_ssim']):.3f} → {float(after['val_ssim']):.3f} (SPIN 0.932 → 0.945)")
    for r in val:
        print(f"    step {r['step']:>5} angle {float(r['flip_angle_mean']):6.1f}°  PSNR {float(r['val_psnr']):5.2f}"
              f"  SSIM {float(r['val_ssim']):.3f}  NRMSE {float(r['val_nrmse']):.3f}")


def gre0(out: Path) -> None:
    summary, rows, wall = _run("mrzero_gre_from_zero.yaml", out / "gre0")
    val = _validations(rows)
    reached = next((r for r in val if float(r["val_nrmse"]) < 0.1), None)
    print(f"gre0: {wall / 60:.1f} min for {summary['steps']} steps ({_load()}); NRMSE "
          f"{summary['initial']['val_nrmse']:.3f} → {summary['final']['val_nrmse']:.3f}; "  # type: ignore[index]
          f"< 0.1 first at step {reached['step'] if reached else 'never'}")


def sar(out: Path) -> None:
    summary, rows, wall = _run("mrzero_gre_sar.yaml", out / "sar")
    first, last = rows[0], rows[-1]
    print(f"sar: {wall / 60:.1f} min; mean flip {float(first['flip_angle_mean']):.2f}° → "
          f"{float(last['flip_angle_mean']):.2f}°, Σα²/s {float(first['sar_flip2']):.3f} → "
          f"{float(last['sar_flip2']):.3f}; NRMSE {summary['final']['val_nrmse']:.3f}")  # type: ignore[index]


def t1(out: Path) -> None:
    summary, _, wall = _run("mrzero_t1_mapping.yaml", out / "t1")
    tis = [f"{v:.0f}" for v in summary["parameters"]["ti"]]  # type: ignore[index]
    final = summary["final"]
    print(f"t1: {wall / 60:.1f} min; TI (ms) {', '.join(tis)}; T1 relative error "
          f"{summary['initial']['val_t1_rel_err']:.3f} → {final['val_t1_rel_err']:.3f}, "  # type: ignore[index]
          f"MAE {final['val_t1_mae_s']:.3f} s")  # type: ignore[index]


def speed(out: Path, steps: int = 5, spins: int = 64) -> None:
    """Sequence steps per second with each engine; the Bloch engine with the task's spins, else ``spins``."""
    for name in ("mrzero_gre_from_zero.yaml", "spin_flip_angle.yaml"):
        data = yaml.safe_load((PROTOCOLS / name).read_text())
        rates, count = {}, data["sim"].get("spins") or spins
        for engine in ("bloch", "graph"):
            data["sim"] = {"engine": engine, **({"spins": count} if engine == "bloch" else {})}
            task = parse_task(data, name, PROTOCOLS)
            folder = out / f"speed-{engine}"
            shutil.rmtree(folder, ignore_errors=True)
            trainer = Trainer(task, folder, progress=False)
            first = next(i for i, p in enumerate(trainer.phases) if p.kind in ("sequence", "joint"))
            trainer.step = sum(p.steps for p in trainer.phases[:first])
            trainer._one_step()  # warm-up (plans, caches, targets)
            start = time.perf_counter()
            for _ in range(steps):
                trainer._one_step()
            rates[engine] = steps / (time.perf_counter() - start)
        print(f"speed {name}: bloch ({count} spins) {rates['bloch']:.3f} steps/s, graph {rates['graph']:.3f} steps/s, "
              f"graph/bloch {rates['graph'] / rates['bloch']:.2f} ({_load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="+", choices=["spin", "gre0", "sar", "t1", "speed"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for name in args.which:
        globals()[name](args.out)
        print(json.dumps({"done": name}), flush=True)


if __name__ == "__main__":
    main()
