"""Tutorial 9: refine a twin from real scanner data, then predict a scan it never saw.

The data: two scans of one resolution phantom on a Siemens Prisma_fit 3T from the public pulseq/tutorials
repository (CC0), folder ``11_from_GRE_to_EPI/data``: a 2D GRE with 3 echoes (``02_GRE_3echoes.dat/.seq``) and the
single-echo GRE (``01_GRE.dat/.seq``). A clone of mrbridge's project finds them in ``../shared/data/pulseq-tutorials``;
otherwise download the four files into one folder and pass it:

    .venv/bin/python docs/tutorials/09_refine_and_predict.py [--data FOLDER] [--matrix 64] [--iterations 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mrbridge as mb

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "pulseq-tutorials"
FIT, HELD_OUT = "11_from_GRE_to_EPI__02_GRE_3echoes", "11_from_GRE_to_EPI__01_GRE"


def main(data: Path, matrix: int = 64, iterations: int = 200, out: Path = Path("out/tutorial9")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:refine]
    config = mb.RefineConfig(fit=["pd", "b0", "t2dash", "coils"], iterations=iterations)
    done = mb.refine([data / f"{FIT}.dat"], [data / f"{FIT}.seq"], out / "refined", config, matrix=matrix)
    for note in done.notes:  # e.g. what one receive coil cannot tell apart
        print(f"note: {note}")
    residual = next(iter(done.result.residuals.values()))
    print(f"refined {matrix}² twin: residual {residual:.4f}; report {done.report}")
    # --8<-- [end:refine]

    # --8<-- [start:predict]
    twin = mb.Twin.from_file(out / "refined" / "twin.h5")
    mb.write_mrd(mb.simulate_seq_file(data / f"{HELD_OUT}.seq", twin), out / "predicted.h5")
    result = mb.compare(out / "predicted.h5", data / f"{HELD_OUT}.dat", out / "prediction",
                        seq_path=data / f"{HELD_OUT}.seq", matrix=matrix)  # at the twin's resolution
    m = result.metrics
    print(f"{result.role} of {HELD_OUT}: correlation {m.correlation:.4f}, NRMSE {m.nrmse:.4f}; {result.index}")
    # --8<-- [end:predict]
    return {"residual": residual, "correlation": float(m.correlation or 0.0), "nrmse": m.nrmse,
            "prediction": float(result.role == "prediction")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial9"))
    args = parser.parse_args()
    missing = [n for n in (FIT, HELD_OUT) for ext in (".dat", ".seq") if not (args.data / f"{n}{ext}").is_file()]
    if missing:
        sys.exit(f"{args.data}: {', '.join(sorted(set(missing)))} (.dat and .seq) not found: download them from "
                 "https://github.com/pulseq/tutorials (folder 11_from_GRE_to_EPI/data) and pass --data FOLDER")
    main(args.data, args.matrix, args.iterations, args.out)
