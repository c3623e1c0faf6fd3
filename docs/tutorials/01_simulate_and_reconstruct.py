"""Tutorial 1: simulate a protocol on a digital twin, reconstruct it, and take a gradient through both.

Run from anywhere in a clone (the default is a 64² image; the test suite runs it at 16²):

    .venv/bin/python docs/tutorials/01_simulate_and_reconstruct.py [--matrix 64] [--out out/tutorial1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mrbridge as mb
from mrbridge.recon.image_io import write_png

REPO = Path(__file__).resolve().parents[2]  # the clone's root: protocols/ lives there


def main(matrix: int = 64, out: Path = Path("out/tutorial1")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:sequence]
    seq = mb.Sequence.from_protocol(REPO / "protocols" / "gre.yaml", matrix=matrix)
    info = seq.info
    print(f"{info.name}: TE {info.te * 1e3:.2f} ms, TR {info.tr * 1e3:.2f} ms, flip {info.flip_angle_deg:g}°, "
          f"{len(seq.readouts())} readouts × {seq.samples_per_readout()} samples, {float(seq.duration):.2f} s")
    # --8<-- [end:sequence]

    # --8<-- [start:twin]
    twin = mb.Twin.builtin("brain", matrix=matrix, coils=4)
    print(f"twin: {twin.shape} voxels (z, y, x), FOV {twin.fov[0] * 1e3:g} mm, {twin.coils} coils")
    # --8<-- [end:twin]

    # --8<-- [start:simulate]
    raw = mb.simulate(seq, twin, noise=0.002, seed=0)  # the graph engine; engine="bloch" for the reference
    mb.write_mrd(raw, out / "raw.h5")  # ISMRMRD, as a scanner's converter would write it
    print(f"raw data: {raw.coils} coils × {raw.readouts} readouts × {raw.samples} samples → {out / 'raw.h5'}")
    # --8<-- [end:simulate]

    # --8<-- [start:recon]
    recon = mb.Recon(mb.ReconConfig(method="fft", coil_combine="rss"))
    image = recon(mb.RawData.from_file(out / "raw.h5"))  # the file, read back, as `mrbridge recon` does
    write_png(image, out / "image.png")
    magnitude = image.data.abs()
    print(f"image {tuple(image.data.shape)}, max {float(magnitude.max()):.3g} → {out / 'image.png'}")
    # --8<-- [end:recon]

    # --8<-- [start:gradient]
    angles = torch.tensor([rep.pulse.angle.item() for rep in seq], requires_grad=True)
    for rep, angle in zip(seq, angles, strict=True):
        rep.pulse.angle = angle  # every flip angle is now a leaf of the graph
    signal = recon(mb.simulate(seq, twin)).data.abs().mean()
    signal.backward()
    assert angles.grad is not None
    excitations = angles.grad[angles.detach() > 0]
    print(f"mean image signal {float(signal.detach()):.4g}; d signal / d flip angle (per rad), first excitations: "
          + ", ".join(f"{float(g):.3g}" for g in excitations[:3]))
    # --8<-- [end:gradient]
    return {"signal": float(signal.detach()), "max_gradient": float(angles.grad.abs().max()),
            "image_max": float(magnitude.max())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial1"))
    args = parser.parse_args()
    main(args.matrix, args.out)
