"""Tutorial 2: calibrate a digital twin from measured parameter maps, look at it, and simulate with it.

Without a mapping session at hand, the "measured" maps are written from the built-in brain as a mapping
pipeline would deliver them: NIfTI files with T1, T2 and T2* in ms, B0 in Hz, B1+ in percent and a geometry in mm.
With real maps, pass your files instead; nothing else changes.

    .venv/bin/python docs/tutorials/02_calibrate_twin.py [--matrix 64] [--out out/tutorial2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

import mrbridge as mb
from mrbridge.recon.image_io import write_figure_png
from mrbridge.twin.show import show_twin, summary_lines

REPO = Path(__file__).resolve().parents[2]


# --8<-- [start:measured_maps]
def measured_maps(folder: Path, matrix: int) -> dict[str, Path]:
    """NIfTI maps (x, y, z) of the built-in brain in a mapping pipeline's units; returns name → file."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = mb.Twin.builtin("brain", matrix=matrix)
    voxel_mm = [f * 1e3 / n for f, n in zip(truth.fov, (matrix, matrix, 1), strict=True)]
    affine = np.diag([*voxel_mm, 1.0])
    tissue = truth.pd[0].numpy() > 0
    t2star = 1.0 / (1.0 / truth.t2[0].numpy() + 1.0 / truth.t2dash[0].numpy())
    maps = {"pd": truth.pd[0].numpy(), "t1": 1e3 * truth.t1[0].numpy(), "t2": 1e3 * truth.t2[0].numpy(),
            "t2star": 1e3 * t2star, "b0": truth.b0[0].numpy(), "b1": 100.0 * truth.b1[0].numpy()}
    files = {}
    for name, values in maps.items():
        data = np.where(tissue, values, 0.0).T[:, :, None].astype(np.float32)  # (y, x) → NIfTI (x, y, z)
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), files[name])
    return files
# --8<-- [end:measured_maps]


def main(matrix: int = 64, out: Path = Path("out/tutorial2")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    files = measured_maps(out / "maps", matrix)

    # --8<-- [start:calibrate]
    twin = mb.calibrate(
        {"pd": files["pd"], "t1": files["t1"], "t2": files["t2"], "t2star": files["t2star"],
         "b0": files["b0"], "b1": files["b1"]},
        units={"b1": "percent"},  # stated; every other unit is decided from the tissue values and reported
    )
    for line in summary_lines(twin):  # shape, FOV, each map's unit and how it was decided, mask, cleaning
        print(line)
    # --8<-- [end:calibrate]

    # --8<-- [start:save]
    twin.save(out / "twin.h5")  # HDF5 with every map in SI and the provenance of each choice
    show_twin(twin, out / "twin.png")  # every map on mm axes with its colorbar, tissue histograms, summary
    print(f"wrote {out / 'twin.h5'} and {out / 'twin.png'}")
    # --8<-- [end:save]

    # --8<-- [start:simulate]
    seq = mb.Sequence.from_protocol(REPO / "protocols" / "gre.yaml", matrix=matrix)
    image = mb.Recon()(mb.simulate(seq, mb.Twin.from_file(out / "twin.h5")))
    write_figure_png(image, out / "gre.png")
    print(f"GRE on the calibrated twin → {out / 'gre.png'}")
    # --8<-- [end:simulate]
    tissue = twin.pd[0] > 0
    return {"t1_median_s": float(twin.t1[0][tissue].median()), "t2_median_s": float(twin.t2[0][tissue].median()),
            "b1_median": float(twin.b1[0][tissue].median()), "image_max": float(image.data.abs().max())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial2"))
    args = parser.parse_args()
    main(args.matrix, args.out)
