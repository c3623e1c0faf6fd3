"""Real-data prediction: refine a twin from the Prisma 3-echo GRE, predict the single-echo GRE it was not fitted to.

    python bench/refine_prediction.py [--data ../shared/data/pulseq-tutorials] [--matrix 64] [--iterations 200]

Prints the refine time and residual, then the prediction of the held-out scan against its two baselines, all at the
twin's resolution (both raw data band-limited to its k-space, as ``compare --matrix`` does) and through one ``Recon``:

- the refined twin's simulation of the single-echo ``.seq`` (``simulate`` + ``compare``, as a user runs them);
- the 3-echo scan's first echo taken as the prediction (a second measurement of the object);
- the built-in brain twin's simulation of the single-echo ``.seq`` (what mrbridge predicted before refine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.read import read_raw
from mrbridge.recon.pipeline import Recon
from mrbridge.refinement.fit import RefineConfig
from mrbridge.refinement.run import refine
from mrbridge.report.bandlimit import band_limited
from mrbridge.report.compare import compare
from mrbridge.report.metrics import compare_images, comparison_mask
from mrbridge.report.validity import correlation
from mrbridge.sim.seqfile import simulate_seq_file
from mrbridge.twin.phantoms import open_twin

FIT, HELD_OUT = "11_from_GRE_to_EPI__02_GRE_3echoes", "11_from_GRE_to_EPI__01_GRE"


def first_echo_baseline(data: Path, matrix: int) -> tuple[float, float]:
    """(correlation, NRMSE) of the 3-echo scan's first echo against the single-echo scan, both band-limited to the
    k-space of a matrix² grid and reconstructed by one Recon (as ``compare --matrix`` does)."""
    recon = Recon()
    images = []
    for name in (FIT, HELD_OUT):
        raw = band_limited(read_raw(data / f"{name}.dat", data / f"{name}.seq"), matrix)
        with torch.no_grad():
            image = recon(raw).data.abs().float()
        images.append(image.reshape(-1, *image.shape[-3:])[0])  # first repetition and contrast (z, y, x)
    metrics, _ = compare_images(images[0], images[1])
    return correlation(images[0], images[1], comparison_mask(images[0], images[1])), metrics.nrmse


def predicted(data: Path, twin: str, matrix: int, work: Path, name: str) -> tuple[float, float, str]:
    """(correlation, NRMSE, role) of ``twin``'s simulation of the held-out scan, through ``compare --matrix``."""
    seq = data / f"{HELD_OUT}.seq"
    sim = work / f"{name}.h5"
    write_mrd(simulate_seq_file(seq, open_twin(twin, matrix=matrix)), sim)
    result = compare(sim, data / f"{HELD_OUT}.dat", work / f"{name}_report", seq_path=seq, matrix=matrix)
    return float(result.metrics.correlation or float("nan")), result.metrics.nrmse, result.role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pulseq-tutorials"))
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--smoothness", type=float, default=RefineConfig.model_fields["smoothness"].default)
    parser.add_argument("-o", "--output", type=Path, default=None, help="keep the folders here (default: temp)")
    args = parser.parse_args()
    work = args.output or Path(tempfile.mkdtemp(prefix="refine_prediction_"))
    config = RefineConfig(fit=["pd", "b0", "t2dash", "coils"], iterations=args.iterations, smoothness=args.smoothness)
    started = time.perf_counter()
    done = refine([args.data / f"{FIT}.dat"], [args.data / f"{FIT}.seq"], work / "refined", config,
                  matrix=args.matrix, progress=False)
    seconds = time.perf_counter() - started
    residual = next(iter(done.result.residuals.values()))
    print(f"refine {FIT} at {args.matrix}², {args.iterations} iterations: {seconds:.0f} s, residual "
          f"{done.result.history[0]['res_0']:.4f} → {residual:.4f}")
    print(f"{'prediction of ' + HELD_OUT:<60} correlation   NRMSE")
    refined = predicted(args.data, str(work / "refined" / "twin.h5"), args.matrix, work, "refined")
    rows = [(f"refined twin ({refined[2]})", refined[:2]),
            ("baseline: first echo of the 3-echo scan", first_echo_baseline(args.data, args.matrix)),
            ("baseline: built-in brain twin", predicted(args.data, "builtin:brain", args.matrix, work, "brain")[:2])]
    for label, (corr, error) in rows:
        print(f"{label:<60} {corr:11.4f} {error:7.4f}")
    print(f"folders in {work}")


if __name__ == "__main__":
    main()
