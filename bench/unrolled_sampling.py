"""Learned sampling (LOUPE-type) against variable-density random lines, both with the unrolled recon, at R = 4.

Run by hand after ``bench/unrolled_table.py`` (its unrolled bundle is the warm start), e.g.::

    nice -n 10 .venv/bin/python bench/unrolled_sampling.py --bundles out/unrolled --minutes 5

The 8 ACS lines are always acquired; 8 of the other 56 lines are chosen (16 of 64: R = 4). LOUPE (Bahadir et al.
2019) as the task parameter ``sampling`` does it (:class:`mrbridge.optimize.sampling.LineSampling`): a probability
per line, p = σ(a·w) rescaled to the budget's mean, and a mask drawn each step (line kept where p > u,
u ~ U(0, 1); the gradient of the relaxed m = σ(b·(p − u))) enter the unrolled recon's encoding
(EᴴE x = Eᴴ(m·E x)), so the loss trains the line probabilities
together with the recon. For export the mask becomes binary: the 8 most probable lines. (The task trains through
the simulation, ``protocols/learned_sampling_r4.yaml``; this bench on retrospectively undersampled data.) The
baseline gets the same recon, warm start and wall-clock budget, fine-tuned on fresh variable-density masks each
step. Both are then evaluated on the held-out twins (PSNR / SSIM as in ``unrolled_table.py``; the
random masks with the table's seeds). Writes ``sampling.json`` into ``--bundles``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unrolled_data import full_raw, target, undersample
from unrolled_table import metrics, scan, twin_indices, with_random_phase

from mrbridge.optimize.sampling import LineSampling, SamplingParam
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.pipeline import Recon, ReconConfig, SenseProblem
from mrbridge.sequence.undersampling import Undersampling

N, ACS = 64, 8


def problem(full: RawData, noise: float, seed: int) -> SenseProblem:
    """The SENSE problem of all lines (noisy), sensitivities from the 8 ACS lines, as the Recon builds it."""
    raw = undersample(full, Undersampling(acceleration=1, acs_lines=ACS, pattern="uniform"), noise, seed)
    (p,), _ = Recon(ReconConfig(method="sense", coil_combine="sensitivity")).sense_problems(raw)
    return p


def reconstruct(recon: Recon, p: SenseProblem, mask: torch.Tensor) -> torch.Tensor:
    """The unrolled recon with the (relaxed or binary) line ``mask`` (N, 1) in its encoding."""
    assert recon.unrolled is not None

    def gram(x: torch.Tensor) -> torch.Tensor:
        return p.op.H(mask * p.op(x))

    return recon.unrolled(gram, p.op.H(mask * p.kspace))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget of each of the two runs")
    ap.add_argument("--noise", type=float, default=5e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    train_ids, test_ids = twin_indices(32, 8)
    raws = full_raw(train_ids + test_ids, args.cache or args.bundles / "signals")
    truths = [target(r) for r in raws]
    start_recon = Recon.load(args.bundles / "unrolled")
    results: dict[str, object] = {}

    def l1(out: torch.Tensor, i: int) -> torch.Tensor:
        return (out.abs() - truths[i].abs()).abs().mean() / float(truths[i].abs().max())

    # LOUPE: line logits + recon
    learned = copy.deepcopy(start_recon)
    sampling = LineSampling(SamplingParam(name="sampling"), N, Undersampling(acceleration=4, acs_lines=ACS))
    opt = torch.optim.Adam([{"params": list(learned.parameters()), "lr": 2e-4},
                            {"params": [sampling.logits], "lr": 5e-2}])
    rng = np.random.default_rng(3)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 60 * args.minutes:
        i = int(rng.integers(len(train_ids)))
        p = problem(with_random_phase(raws[i], rng), args.noise, int(rng.integers(1 << 30)))
        relaxed = sampling.weights(binary=False, seed=int(rng.integers(1 << 30)))[:, None]
        loss = l1(reconstruct(learned, p, relaxed), i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    lines = sampling.chosen()
    results["loupe"] = {"steps": steps, "lines": lines}
    print(f"LOUPE: {steps} steps; lines {lines}", flush=True)

    # baseline: the same recon fine-tuned on variable-density masks
    baseline = copy.deepcopy(start_recon)
    opt = torch.optim.Adam(baseline.parameters(), lr=2e-4)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 60 * args.minutes:
        i = int(rng.integers(len(train_ids)))
        raw = scan(with_random_phase(raws[i], rng), 4, args.noise, int(rng.integers(1 << 30)))
        loss = l1(baseline(raw).data[0, 0, 0], i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    results["variable_density"] = {"steps": steps}

    binary = sampling.weights(binary=True)[:, None]
    scores: dict[str, list[tuple[float, float]]] = {"loupe": [], "variable_density": []}
    for j, i in enumerate(range(len(train_ids), len(train_ids) + len(test_ids))):
        with torch.no_grad():
            p = problem(raws[i], args.noise, 1000 + j + 7919)
            scores["loupe"].append(metrics(reconstruct(learned, p, binary), truths[i]))
            scores["variable_density"].append(metrics(baseline(scan(raws[i], 4, args.noise, 1000 + j)).data[0, 0, 0],
                                                      truths[i]))
    for name, values in scores.items():
        psnr, ssim = np.mean([v[0] for v in values]), np.mean([v[1] for v in values])
        results[name] = {**results[name], "psnr": float(psnr), "ssim": float(ssim)}  # type: ignore[dict-item]
        print(f"{name}: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}", flush=True)
    (args.bundles / "sampling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
