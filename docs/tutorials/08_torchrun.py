"""Tutorial 8: scale an optimization out over processes (CPU cores or GPUs) with torchrun.

``mrbridge optimize`` runs unchanged under torchrun: every process holds the whole model and simulates its share
of each batch of twins; gradients are summed over processes after each backward pass (gloo on CPU, nccl on
CUDA), so N processes take the very step one process takes on the whole batch. This script runs one tiny SPIN
task with 1 and with 2 processes and shows that they agree.

    .venv/bin/python docs/tutorials/08_torchrun.py [--processes 2] [--out out/tutorial8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

# --8<-- [start:task]
SE = {"kind": "se", "matrix": 16, "fov_mm": 64, "dwell_us": 100, "te_ms": 40, "tr_ms": 10000}
TASK = {  # SPIN's task (protocols/spin_flip_angle.yaml), tiny: 4 phantoms per batch, a few steps
    "kind": "task", "name": "spin-torchrun",
    "sequence": {"protocol": SE, "set": {"flip_angle_deg": 30}},
    "parameters": [{"name": "flip_angle", "shared": True, "bounds_deg": [1, 179], "parametrization": "sigmoid",
                    "lr": 0.3}],
    "target": {"kind": "reference", "protocol": SE},
    "losses": [{"kind": "mse"}],
    "recon": {"config": {"method": "fft", "network": "cnn", "network_features": 4, "network_depth": 2,
                         "prewhiten": False}},
    "data": {"kind": "spin_random", "train": 8, "validation": 2, "noise": 0.025, "noise_of": "reference_image"},
    "sim": {"engine": "bloch", "spins": 1},
    "optimizer": {"mode": "alternating", "batch": 4, "recon_lr": 0.003, "checkpoint_every": 5,
                  "alternating": {"pretrain_steps": 2, "rounds": 1, "sequence_steps": 3, "recon_steps": 1}},
}
# --8<-- [end:task]


# --8<-- [start:torchrun]
def torchrun(processes: int, task: Path, out: Path) -> dict[str, object]:
    """``torchrun --nproc_per_node N -m mrbridge optimize TASK -o OUT``; returns the run's summary.json."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29400 + os.getpid() % 500 + processes),
               "-m", "mrbridge", "--quiet", "optimize", str(task), "-o", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the processes are the parallelism
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]
# --8<-- [end:torchrun]


def main(processes: int = 2, out: Path = Path("out/tutorial8")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    task = out / "task.yaml"
    task.write_text(yaml.safe_dump(TASK, sort_keys=False))

    # --8<-- [start:compare]
    one = torchrun(1, task, out / "one")
    many = torchrun(processes, task, out / f"p{processes}")
    angle_one = one["parameters"]["flip_angle"][0]  # type: ignore[index]
    angle_many = many["parameters"]["flip_angle"][0]  # type: ignore[index]
    print(f"1 process:  world {one['world']}, excitation 30° → {angle_one:.4f}°")
    print(f"{processes} processes: world {many['world']}, excitation 30° → {angle_many:.4f}°")
    # --8<-- [end:compare]
    return {"angle_one": angle_one, "angle_many": angle_many, "world": float(many["world"])}  # type: ignore[arg-type]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial8"))
    args = parser.parse_args()
    main(args.processes, args.out)
