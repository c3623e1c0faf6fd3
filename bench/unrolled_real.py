"""The simulation-trained unrolled recon on a real scan: the Skyra 32-coil spin echo, undersampled retrospectively.

Run by hand after ``bench/unrolled_table.py`` (which trains and saves the bundles), e.g.::

    nice -n 10 .venv/bin/python bench/unrolled_real.py --bundles out/unrolled --out out/unrolled/real

The scan (``../shared/data/mr-physics-with-pulseq/MID00243__se_2D_sinc_img``: 64², 32 coils, no noise scan) is read
with the twix reader. Reference: CG-SENSE of all 64 lines (every line calibrates). R = 4: the lines of the same
seeded variable-density pattern as the simulations (8 ACS lines). Noise: the scan has no noise scan, so the
"noise scan" handed to the recon and the guard is the coil images' values in the four 8 × 8 corners of the fully
sampled field of view (air; the FFT is unitary, so they have the k-space noise's statistics). The data are scaled
so that their largest |k| equals the training data's median (the image-domain U-Net of CG + U-Net is not scale
invariant; the unrolled recon is). Prints PSNR / SSIM against the reference and writes the guard's figure and
numbers for the unrolled recon.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unrolled_data import full_raw, target
from unrolled_table import metrics

import mrbridge as mb
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.report.guard import guard, guard_figure
from mrbridge.sequence.undersampling import ACS_FLAGS, Undersampling, acquired_lines

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "mr-physics-with-pulseq" / "MID00243__se_2D_sinc_img"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, required=True, help="the --out folder of bench/unrolled_table.py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None, help="simulated signals (default: BUNDLES/signals)")
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = mb.RawData.from_file(SCAN.with_suffix(".dat"), seq=SCAN.with_suffix(".seq"))
    n = raw.header.encoded_matrix[1]
    simulated = full_raw(list(range(8)), args.cache or args.bundles / "signals")
    train_peak = float(np.median([float(r.kdata.abs().max()) for r in simulated]))
    raw = replace(raw, kdata=raw.kdata * (train_peak / float(raw.kdata.abs().max())))
    all_acs = replace(raw, flags=torch.full((raw.readouts,), ACS_FLAGS, dtype=torch.int64))
    coil_images = Recon(ReconConfig(method="fft", remove_oversampling=False))._fourier(raw).H(
        Recon()._grid(raw, raw.kdata, torch.ones(raw.readouts, dtype=torch.bool))[0])[:, 0, 0, 0]
    corners = torch.cat([coil_images[:, s0, s1].reshape(raw.coils, -1) for s0 in (slice(0, 8), slice(-8, None))
                         for s1 in (slice(0, 8), slice(-8, None))], 1)
    reference = target(replace(all_acs, noise=corners))

    spec = Undersampling(acceleration=4, acs_lines=8, pattern="variable_density", seed=args.seed)
    lines, acs = acquired_lines(n, spec)
    step = raw.labels["kspace_encode_step_1"]
    rows = torch.tensor([int((step == line).nonzero()[0, 0]) for line in lines])
    fast = replace(raw, kdata=raw.kdata[:, rows], labels={k: v[rows] for k, v in raw.labels.items()},
                   flags=torch.tensor([ACS_FLAGS if line in acs else 0 for line in lines], dtype=torch.int64),
                   traj=None if raw.traj is None else raw.traj[rows],
                   sample_time=None if raw.sample_time is None else raw.sample_time[rows], noise=corners)
    best = json.loads((args.bundles / "lambdas.json").read_text())["best_sense_lambda"]["4"][0]
    methods = {"zero-filled": Recon(ReconConfig(method="fft", coil_combine="sensitivity")),
               f"SENSE λ = {best:g} (best on simulations)": Recon(ReconConfig(method="sense", iterations=30,
                                                                              tikhonov=best,
                                                                              coil_combine="sensitivity")),
               "CG + U-Net": Recon.load(args.bundles / "cg_unet"),
               "unrolled": Recon.load(args.bundles / "unrolled")}
    results: dict[str, object] = {}
    for name, recon in methods.items():
        with torch.no_grad():
            image = recon(fast)
        psnr, ssim = metrics(image.data[0, 0, 0], reference)
        results[name] = {"psnr": psnr, "ssim": ssim}
        print(f"{name}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}", flush=True)
        if name == "unrolled":
            report = guard(fast, image, config=recon.config)
            guard_figure(report, args.out / "guard_real.png")
            results["guard"] = report.summary()
            print(json.dumps(report.summary(), indent=1))
    (args.out / "real.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
