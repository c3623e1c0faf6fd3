"""Tutorial 5: reconstruct real Siemens twix data of a Pulseq sequence with the recon that reconstructs simulations.

The data: a 2D GRE (256 × 256, one channel, a resolution phantom, Siemens Prisma_fit 3T) from the public
pulseq/tutorials repository (CC0), folder ``11_from_GRE_to_EPI/data``: ``01_GRE.dat`` and ``01_GRE.seq``.
A clone of mrbridge's project finds them in ``../shared/data/pulseq-tutorials``; otherwise download both files
and pass them:

    .venv/bin/python docs/tutorials/05_real_twix.py [--dat 01_GRE.dat --seq 01_GRE.seq] [--out out/tutorial5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import mrbridge as mb
from mrbridge.recon.image_io import write_png
from mrbridge.recon.pipeline import default_method

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "pulseq-tutorials"
NAME = "11_from_GRE_to_EPI__01_GRE"


def main(dat: Path, seq: Path, out: Path = Path("out/tutorial5")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:read]
    raw = mb.RawData.from_file(dat, seq)  # readouts ordered, labelled and given k-space positions by the .seq
    h = raw.header
    print(f"{dat.name}: {raw.coils} coil(s) × {raw.readouts} readouts × {raw.samples} samples, "
          f"FOV {h.encoded_fov[0] * 1e3:.0f} mm, matrix {h.encoded_matrix[:2]}, {h.system_vendor} {h.system_model}")
    for key in ("rf_use_inferred", "fov_source", "adc_segments_rejoined"):  # what was inferred, not read
        if key in raw.provenance:
            print(f"note: {raw.provenance[key]}")
    # --8<-- [end:read]

    # --8<-- [start:recon]
    method = default_method(raw)  # fft for Cartesian lines (EPI lines are regridded), cg for other trajectories
    with torch.no_grad():
        image = mb.Recon(mb.ReconConfig(method=method))(raw)
    write_png(image, out / "image.png")
    magnitude = image.data.abs().reshape(-1, *image.data.shape[-2:])[0]
    ny, nx = magnitude.shape
    centre = float(magnitude[ny // 4: 3 * ny // 4, nx // 4: 3 * nx // 4].mean())
    border = float(torch.cat([magnitude[: ny // 8].flatten(), magnitude[-ny // 8:].flatten()]).std())
    print(f"recon {method}: image {tuple(image.data.shape)}; centre mean / border std = {centre / border:.1f} "
          f"→ {out / 'image.png'}")
    # --8<-- [end:recon]
    return {"centre_to_border": centre / border, "rows": float(ny), "columns": float(nx)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dat", type=Path, default=SHARED / f"{NAME}.dat")
    parser.add_argument("--seq", type=Path, default=SHARED / f"{NAME}.seq")
    parser.add_argument("--out", type=Path, default=Path("out/tutorial5"))
    args = parser.parse_args()
    if not args.dat.is_file() or not args.seq.is_file():
        sys.exit(f"{args.dat} or {args.seq} not found: download 01_GRE.dat and 01_GRE.seq from "
                 "https://github.com/pulseq/tutorials (folder 11_from_GRE_to_EPI/data) and pass --dat and --seq")
    main(args.dat, args.seq, args.out)
