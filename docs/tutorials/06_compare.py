"""Tutorial 6: compare a simulation with a "measurement" through one recon, and read the report.

Without a scanner at hand the measurement is a stand-in: the same protocol simulated with the isochromat Bloch
engine on a twin whose B1+ is 10 % low, plus noise (what ``mrbridge demo`` does). With real data, replace
``meas.h5`` by the scanner's twix ``.dat`` and pass the ``.seq`` it ran (``seq_path``); nothing else changes.

    .venv/bin/python docs/tutorials/06_compare.py [--matrix 32] [--out out/tutorial6]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import mrbridge as mb

REPO = Path(__file__).resolve().parents[2]


def main(matrix: int = 32, out: Path = Path("out/tutorial6")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:simulate]
    seq = mb.Sequence.from_protocol(REPO / "protocols" / "gre.yaml", matrix=matrix)
    twin = mb.Twin.builtin("brain", matrix=matrix)
    mb.write_mrd(mb.simulate(seq, twin), out / "sim.h5")  # the prediction: graph engine, ideal B1+

    scanner = replace(twin, b1=0.9 * twin.b1)  # the "scanner": B1+ 10 % low, Bloch engine, noise
    mb.write_mrd(mb.simulate(seq, scanner, engine="bloch", spins=256, noise=0.01, seed=1), out / "meas.h5")
    seq.save(out / "sequence.json")
    # --8<-- [end:simulate]

    # --8<-- [start:compare]
    result = mb.compare(out / "sim.h5", out / "meas.h5", out / "report", seq_path=out / "sequence.json",
                        twin_path="builtin:brain")
    m = result.metrics
    print(f"scale {m.scale:.4g}  NRMSE {m.nrmse:.4f}  SSIM {m.ssim:.4f}  PSNR {m.psnr_db:.2f} dB")
    for warning in result.warnings:  # why the comparison might mean little (none here)
        print(f"warning: {warning}")
    print(f"report: {result.index}")
    # --8<-- [end:compare]
    return {"nrmse": m.nrmse, "ssim": m.ssim, "warnings": float(len(result.warnings))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial6"))
    args = parser.parse_args()
    main(args.matrix, args.out)
