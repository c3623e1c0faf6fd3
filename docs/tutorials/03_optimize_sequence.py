"""Tutorial 3: optimize a sequence through the simulator — SPIN's flip angle with a learned recon, and MRzero's
GRE learned from nothing.

Both start from the shipped task files (``protocols/spin_flip_angle.yaml``, ``protocols/mrzero_gre_from_zero.yaml``)
and shrink them (matrix, data, steps) so that the tutorial runs in about a minute; ``--full`` runs them as shipped
(hours on a CPU, minutes on a GPU), which is what ``mrbridge optimize protocols/X.yaml -o runs/X`` does.

    .venv/bin/python docs/tutorials/03_optimize_sequence.py [--matrix 16] [--out out/tutorial3] [--full]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

import mrbridge as mb
from mrbridge.optimize.trainer import optimize

REPO = Path(__file__).resolve().parents[2]
PROTOCOLS = REPO / "protocols"


def inline(task: dict[str, Any], matrix: int | None) -> dict[str, Any]:
    """The task with its protocol files written in (so that it can live anywhere), at ``matrix`` if given."""
    for part in ("sequence", "target"):
        protocol = task.get(part, {}).get("protocol")
        if isinstance(protocol, str):
            protocol = yaml.safe_load((PROTOCOLS / protocol).read_text())
        if isinstance(protocol, dict):
            task[part]["protocol"] = {**protocol, **({"matrix": matrix} if matrix else {})}
    return task


# --8<-- [start:spin]
def spin(out: Path, matrix: int, full: bool) -> dict[str, Any]:
    """SPIN (Lyu et al. 2018): the excitation angle of a spin echo from 30°, learned with a CNN after the FFT."""
    task = yaml.safe_load((PROTOCOLS / "spin_flip_angle.yaml").read_text())
    if not full:  # a smaller phantom set, network and schedule; the same loop
        task = inline(task, matrix)
        task["data"].update(train=8, validation=2)
        task["recon"]["config"].update(network_features=4, network_depth=2)
        task["optimizer"].update(batch=2, checkpoint_every=5)
        task["optimizer"]["alternating"].update(pretrain_steps=10, rounds=3, sequence_steps=4, recon_steps=2)
    else:
        task = inline(task, None)
    (out / "spin.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    summary = optimize(out / "spin.yaml", out / "spin", progress=False)
    angle = summary["parameters"]["flip_angle"][0]
    print(f"SPIN: excitation 30° → {angle:.1f}°, validation loss {summary['initial']['val_loss']:.4g} → "
          f"{summary['final']['val_loss']:.4g}")
    return summary
# --8<-- [end:spin]


# --8<-- [start:mrzero]
def mrzero(out: Path, matrix: int, full: bool) -> dict[str, Any]:
    """MRzero (Loktyushin et al. 2021): every gradient moment from 0 and every flip angle from 1°, to a FLASH."""
    task = inline(yaml.safe_load((PROTOCOLS / "mrzero_gre_from_zero.yaml").read_text()), None if full else matrix)
    if not full:
        task["optimizer"].update(iterations=15, checkpoint_every=5, validate_every=5)
    (out / "gre0.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    summary = optimize(out / "gre0.yaml", out / "gre0", progress=False)
    print(f"MRzero: validation NRMSE {summary['initial']['val_nrmse']:.3f} → {summary['final']['val_nrmse']:.3f}")
    return summary
# --8<-- [end:mrzero]


def main(matrix: int = 16, out: Path = Path("out/tutorial3"), full: bool = False) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    spin_summary = spin(out, matrix, full)
    gre_summary = mrzero(out, max(8, matrix // 2), full)

    # --8<-- [start:bundle]
    bundle = out / "gre0"  # a run bundle: sequence.json, recon.json (+ weights), task.yaml, history.csv, plots/
    learned = mb.Sequence.from_file(bundle / "sequence.json")
    recon = mb.Recon.load(bundle)
    image = recon(mb.simulate(learned, mb.Twin.builtin("brain", matrix=learned.info.matrix[0])))
    print(f"learned sequence: {len(learned)} repetitions; its image {tuple(image.data.shape)}; plots in "
          f"{bundle / 'plots'}: " + ", ".join(sorted(p.name for p in (bundle / "plots").iterdir())))
    print(json.dumps({k: round(v, 4) for k, v in gre_summary["final"].items()}))
    # --8<-- [end:bundle]
    return {"spin_angle": spin_summary["parameters"]["flip_angle"][0],
            "spin_val_before": spin_summary["initial"]["val_loss"], "spin_val_after": spin_summary["final"]["val_loss"],
            "gre_nrmse_before": gre_summary["initial"]["val_nrmse"],
            "gre_nrmse_after": gre_summary["final"]["val_nrmse"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial3"))
    parser.add_argument("--full", action="store_true", help="the shipped tasks, unshrunk")
    args = parser.parse_args()
    main(args.matrix, args.out, args.full)
