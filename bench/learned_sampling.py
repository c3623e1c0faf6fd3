"""Learned sampling against its own start: the same task trains a mask (LOUPE, straight-through) or keeps it fixed.

    nice .venv/bin/python bench/learned_sampling.py [--patterns 0 1 2] [--seeds 0] [--iterations 400]
                                                    [--mask-lr 0.005] [--final-recon-steps 400] [-o DIR]

``protocols/learned_sampling_r4.yaml`` (32², R = 4: 8 of 32 lines, 4 ACS, unrolled SENSE with a U-Net prior, 8
coils, SPIN random twins) is run twice per variable-density pattern seed and optimizer seed, with
``init: pattern`` (the protocol's variable-density lines) and

- ``train: true``: the line logits learn with the recon (the learned mask), at the task's learning rate or
  ``--mask-lr``;
- ``train: false``: the mask stays the variable-density one and only the recon trains (the baseline).

Both share everything else: twins, noise, recon, steps. Both end with ``--final-recon-steps`` F of their steps
training the recon alone for the binary mask (``optimizer.final_recon_steps``; by default the task's share, a
quarter; for the fixed mask that is what every step does). The learned run's recon, though, trained on many drawn
masks before (a kind of augmentation the fixed run lacks), so a third run, ``retrained``, trains a fresh recon on
the learned binary mask exactly as the fixed run trains on its own (``train: false``, the learned lines as an
``explicit`` pattern, the same seed and steps): only the mask differs between ``retrained`` and ``fixed``.

Prints each run's validation NRMSE / PSNR / SSIM on the 10 held-out twins (binary masks) and its lines, then the
paired differences learned − fixed and retrained − fixed (mean ± standard error over the runs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mrbridge.optimize.trainer import optimize

REPO = Path(__file__).resolve().parents[1]


def task(pattern_seed: int, seed: int, train: bool, iterations: int, mask_lr: float | None = None,
         final: int | None = None, lines: list[int] | None = None) -> dict[str, Any]:
    """The shipped task with a variable-density start of ``pattern_seed`` (or the given ``lines``) and a trained or
    fixed mask, ``iterations`` steps of which the last ``final`` (default: the task's share) train the recon
    alone."""
    t: dict[str, Any] = yaml.safe_load((REPO / "protocols" / "learned_sampling_r4.yaml").read_text())
    o = t["optimizer"]
    final = round(iterations * o["final_recon_steps"] / (o["iterations"] + o["final_recon_steps"])) \
        if final is None else final
    t["sequence"]["protocol"] = str(REPO / "protocols" / "gre_r4.yaml")
    t["sequence"]["set"]["undersampling"].update(pattern="variable_density", seed=pattern_seed)
    if lines is not None:
        t["sequence"]["set"]["undersampling"].update(pattern="explicit", lines=lines)
    t["target"]["protocol"] = str(REPO / "protocols" / "gre.yaml")
    t["parameters"][0].update(init="pattern", train=train)
    if mask_lr is not None:
        t["parameters"][0]["lr"] = mask_lr
    t["optimizer"].update(seed=seed, iterations=iterations - final, final_recon_steps=final, validate_every=iterations,
                          checkpoint_every=iterations)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--mask-lr", type=float, default=None, help="the line logits' learning rate (default: the "
                    "task's)")
    ap.add_argument("--final-recon-steps", type=int, default=None, help="of --iterations, the last ones that "
                    "train the recon alone for the binary mask (default: the task's share)")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    work = args.output or Path(tempfile.mkdtemp(prefix="learned_sampling_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'pattern':>7} {'seed':>4} {'mask':<9} {'NRMSE':>7} {'PSNR dB':>8} {'SSIM':>6} {'s':>5}  lines")
    scores: dict[str, list[dict[str, float]]] = {"fixed": [], "learned": [], "retrained": []}
    for pattern in args.patterns:
        for seed in args.seeds:
            learned_lines = None
            for kind in scores:
                name = f"p{pattern}_s{seed}_{kind}"
                path = work / f"{name}.yaml"
                spec = task(pattern, seed, kind == "learned", args.iterations, args.mask_lr, args.final_recon_steps,
                            learned_lines if kind == "retrained" else None)
                path.write_text(yaml.safe_dump(spec, sort_keys=False))
                started = time.perf_counter()
                summary = optimize(path, work / name, progress=False)
                final = summary["final"]
                scores[kind].append(final)
                if kind == "learned":
                    learned_lines = summary["sampling"]
                print(f"{pattern:>7} {seed:>4} {kind:<9} {final['val_nrmse']:7.4f} {final['val_psnr']:8.2f} "
                      f"{final['val_ssim']:6.3f} {time.perf_counter() - started:5.0f}  {summary['sampling']}",
                      flush=True)
    for kind in ("learned", "retrained"):
        print(f"{kind} − fixed over the runs, mean ± standard error ({kind} ahead in how many):")
        for key, better in (("val_nrmse", -1), ("val_psnr", 1), ("val_ssim", 1)):
            d = np.array([a[key] - b[key] for a, b in zip(scores[kind], scores["fixed"], strict=True)])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(f"  {key}: {d.mean():+.4f} ± {se:.4f} ({int((better * d > 0).sum())} of {len(d)})")
    print(f"folders in {work}")


if __name__ == "__main__":
    main()
