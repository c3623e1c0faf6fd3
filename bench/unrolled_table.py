"""Unrolled recon against best-λ regularised SENSE and CG + image-domain U-Net: method × R → PSNR, SSIM, DC, time.

Run by hand (minutes; never part of pass/fail), e.g.::

    nice -n 10 .venv/bin/python bench/unrolled_table.py --out out/unrolled --train-minutes 12

Data (``bench/unrolled_data.py``): 64², 8 simulated coils, randomised twins simulated once fully sampled with
``protocols/gre.yaml``; ``--train-twins`` (256: twins 0 … 31 and 64 … 287) train, with ``--bottle-twins`` (128) water
bottles (twins 1000 …: test objects without a skull, for nets that will see a scanner's phantom), and
``--test-twins`` (32: twins 32 … 63) are held out (sessions 7–11 used 32 and 8, of twins that filled a third of the
field of view). Accelerated scans are the lines of a seeded variable-density pattern (R = 4: 8 ACS lines, R = 6: 6
ACS lines; the lines of ``mrbridge.sequence.undersampling``) plus complex Gaussian noise of σ = ``--noise``·max|k|.
Every method runs through ``mrbridge.recon.pipeline.Recon`` on that RawData (coil sensitivities by Walsh from the
ACS lines):

- zero-filled: the inverse FFT, sensitivity-combined;
- SENSE, best λ: CG-SENSE (30 iterations) with the Tikhonov λ of best mean PSNR on 8 training twins, per R;
- CG + U-Net: that SENSE followed by a residual image-domain U-Net (trained on both R), which sees the image
  divided by its largest magnitude (``--post-scale normalised``, as the unrolled net does; ``as_is``: in the
  simulation's units, which a scanner does not share);
- unrolled: ``network: unrolled`` (``--unrolled-steps`` N = 6 of ``--cg-iterations`` 6, one shared U-Net of the
  same size: equal parameter count up to the N λₙ; or, ``--per-iteration``, one U-Net per step with fewer
  ``--unrolled-features``), trained on both R.

The two networks train for a fixed wall-clock budget each (training pairs drawn afresh every step: twin, R, mask
seed, noise seed; by default each with a random smooth image phase, and both networks phase-normalised,
``mrbridge.recon.phase``: without, the simulation-trained nets fail on scanner phases). Metrics on magnitudes
scaled by the target's maximum: PSNR (whole 64² image), SSIM, the
data-consistency residual ‖E x − y‖/‖y‖ (E with the recon's own ACS sensitivities), and the mean recon time per
image; then the two networks' paired differences per R, and their PSNR at R = 4 when the k-space is scaled by a
receiver gain (0.25, 1, 4). Writes ``table.md``, ``lambdas.json`` and the bundles it trains (``unrolled/``,
``cg_unet/``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from unrolled_data import BOTTLES, full_raw, target, undersample

from mrbridge.optimize import losses
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.operators import FourierOp
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.undersampling import Undersampling

ACS = {4: 8, 6: 6}
LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]


def twin_indices(train: int, test: int, bottles: int = 0) -> tuple[list[int], list[int]]:
    """Training and held-out twin indices: 0 … 31 then 64 … for training, 32 … 63 held out (so the first 32 / 8 are
    those of every earlier run); then ``bottles`` water bottles (:data:`unrolled_data.BOTTLES` on) for training."""
    if not 1 <= test <= 32:
        raise SystemExit(f"--test-twins {test}: expected 1 … 32")
    heads = list(range(min(train, 32))) + list(range(64, 64 + max(train - 32, 0)))
    return heads + list(range(BOTTLES, BOTTLES + bottles)), list(range(32, 32 + test))


def scan(raw: RawData, r: int, noise: float, seed: int) -> RawData:
    spec = Undersampling(acceleration=r, acs_lines=ACS[r], pattern="variable_density", seed=seed)
    return undersample(raw, spec, noise, seed + 7919)


def with_random_phase(raw: RawData, rng: np.random.Generator) -> RawData:
    """Fully sampled ``raw`` (readouts = lines 0 … N−1) of the object times exp(iφ), φ a random constant + linear
    + quadratic phase (up to ~±π, ±2 rad, ±2 rad): scanners' images carry such phases (coil reference, B0, RF);
    the Walsh-combined target only changes by the same factor, so its magnitude stays the training target."""
    n = raw.kdata.shape[-1]
    y, x = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    a = rng.uniform(-1, 1, 6) * np.array([np.pi, 2, 2, 2, 2, 2])
    phi = a[0] + a[1] * x + a[2] * y + a[3] * x * x + a[4] * y * y + a[5] * x * y
    fourier = FourierOp((n, n))
    return replace(raw, kdata=fourier(fourier.H(raw.kdata) * torch.exp(1j * phi).to(raw.kdata.dtype)))


def dc_residual(recon: Recon, raw: RawData, image: torch.Tensor) -> float:
    """‖m·E x − y‖/‖y‖ with E, m, y of ``raw`` as the Recon's SENSE sees them; image (y, x) complex."""
    (p,), _ = Recon(ReconConfig(method="sense", coil_combine="sensitivity")).sense_problems(raw)
    return float(torch.linalg.vector_norm(p.mask * p.op(image) - p.kspace) / torch.linalg.vector_norm(p.kspace))


def metrics(image: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    peak = float(truth.abs().max())
    x, y = image.abs() / peak, truth.abs() / peak
    return float(losses.psnr(x, y)), float(losses.ssim(x, y))


def paired(a: list[float], b: list[float]) -> str:
    """Mean ± standard error of the per-twin differences a − b, and on how many twins a is ahead."""
    d = np.asarray(a) - np.asarray(b)
    return f"{d.mean():+.4g} ± {d.std(ddof=1) / np.sqrt(len(d)):.2g} (ahead on {int((d > 0).sum())} of {len(d)})"


def psnr_at_gain(recon: Recon, raws: list[RawData], truths: list[torch.Tensor], r: int, noise: float,
                 gain: float) -> float:
    """Mean PSNR of ``recon`` on the held-out scans multiplied by a receiver gain (image divided by it after):
    a recon that scales with the data gives the same number at every gain."""
    ps = []
    for i, (raw, truth) in enumerate(zip(raws, truths, strict=True)):
        acq = scan(raw, r, noise, 1000 + i)
        with torch.no_grad():
            ps.append(metrics(recon(replace(acq, kdata=acq.kdata * gain)).data[0, 0, 0] / gain, truth)[0])
    return float(np.mean(ps))


def best_lambda(raws: list[RawData], truths: list[torch.Tensor], r: int, noise: float) -> tuple[float, float]:
    """(λ, mean PSNR) of the best CG-SENSE λ on the given twins."""
    scores = []
    for lam in LAMBDAS:
        recon = Recon(ReconConfig(method="sense", iterations=30, tikhonov=lam, coil_combine="sensitivity"))
        with torch.no_grad():
            ps = [metrics(recon(scan(raw, r, noise, 100 + i)).data[0, 0, 0], t)[0]
                  for i, (raw, t) in enumerate(zip(raws, truths, strict=True))]
        scores.append(float(np.mean(ps)))
    best = int(np.argmax(scores))
    return LAMBDAS[best], scores[best]


def train(recon: Recon, raws: list[RawData], truths: list[torch.Tensor], noise: float, minutes: float,
          seed: int, phase: bool, lr: float) -> tuple[int, float, list[float]]:
    """Adam on L1 of magnitudes (scaled by the target's max) over random (twin, R, mask, noise) for ``minutes``,
    the learning rates decaying as a cosine of the elapsed fraction of the budget (to 5 %); ``phase``: each pair
    with a random smooth image phase (:func:`with_random_phase`).
    Returns (steps, seconds, loss per 50 steps)."""
    lam = [p for n, p in recon.named_parameters() if "log_lambdas" in n]
    rest = [p for n, p in recon.named_parameters() if "log_lambdas" not in n]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}] + ([{"params": lam, "lr": 2e-2}] if lam else []))
    base = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng(seed)
    start, steps, history, running = time.perf_counter(), 0, [], []
    while (elapsed := time.perf_counter() - start) < 60 * minutes:
        for group, lr in zip(opt.param_groups, base, strict=True):
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * elapsed / (60 * minutes))))
        i = int(rng.integers(len(raws)))
        r = int(rng.choice([4, 6]))
        full = with_random_phase(raws[i], rng) if phase else raws[i]
        raw = scan(full, r, noise, int(rng.integers(1 << 30)))
        out = recon(raw).data[0, 0, 0]
        peak = float(truths[i].abs().max())
        loss = (out.abs() - truths[i].abs()).abs().mean() / peak
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        steps += 1
        if steps % 50 == 0:
            history.append(float(np.mean(running)))
            running = []
            print(f"  step {steps}: L1 {history[-1]:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return steps, time.perf_counter() - start, history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None, help="simulated signals (default: OUT/signals)")
    ap.add_argument("--noise", type=float, default=5e-4, help="σ relative to the twin's max |k|")
    ap.add_argument("--train-twins", type=int, default=256, help="twins the networks train on")
    ap.add_argument("--test-twins", type=int, default=32, help="held-out twins of the table (at most 32)")
    ap.add_argument("--bottle-twins", type=int, default=128,
                    help="water bottles (no skull, as scanners' test objects) added to the training twins")
    ap.add_argument("--train-minutes", type=float, default=12.0)
    ap.add_argument("--post-minutes", type=float, default=None, help="CG + U-Net's budget (default: the "
                    "unrolled net's, --train-minutes)")
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--unrolled-features", type=int, default=None,
                    help="features of the unrolled net's U-Nets (default: --features)")
    ap.add_argument("--unrolled-steps", type=int, default=6, help="N, the unrolled net's SENSE + prior steps")
    ap.add_argument("--cg-iterations", type=int, default=6, help="CG iterations of each unrolled step")
    ap.add_argument("--per-iteration", action="store_true",
                    help="one U-Net per unrolled step instead of one shared (with fewer --unrolled-features for an "
                    "equal parameter count)")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam's rate of the unrolled U-Net (λₙ: 2e-2)")
    ap.add_argument("--post-lr", type=float, default=1e-3, help="Adam's rate of CG + U-Net")
    ap.add_argument("--post-scale", choices=["as_is", "normalised"], default="normalised",
                    help="CG + U-Net's network sees the SENSE image as is (in the simulation's units, so it fails at "
                    "another receiver gain) or divided by its largest magnitude (network_scale; the unrolled net "
                    "always normalises)")
    ap.add_argument("--network-phase", choices=["as_is", "normalised"], default="normalised",
                    help="networks see images without their smooth phase (both networks)")
    ap.add_argument("--network-init", type=float, default=0.01,
                    help="std of each U-Net's last layer at the start (both networks; 0: the identity, whose "
                    "training can sit on that plateau)")
    ap.add_argument("--unrolled-from", type=Path, default=None,
                    help="take the unrolled bundle of an earlier run instead of training one (to give CG + U-Net "
                    "the same training time)")
    ap.add_argument("--cg-unet-from", type=Path, default=None,
                    help="take the CG + U-Net bundle of an earlier run instead of training one")
    ap.add_argument("--phase", action=argparse.BooleanOptionalAction, default=True,
                    help="train on images with random smooth phases (both networks)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    t0 = time.perf_counter()
    train_ids, test_ids = twin_indices(args.train_twins, args.test_twins, args.bottle_twins)
    raws = full_raw(train_ids + test_ids, args.cache or out / "signals")
    truths = [target(r) for r in raws]
    print(f"data: {len(raws)} twins in {time.perf_counter() - t0:.0f} s", flush=True)
    train_raws, train_truths = raws[: len(train_ids)], truths[: len(train_ids)]
    test_raws, test_truths = raws[len(train_ids):], truths[len(train_ids):]

    best = {r: best_lambda(train_raws[:8], train_truths[:8], r, args.noise) for r in (4, 6)}
    print(f"best λ: {best}", flush=True)

    net = {"network_features": args.features, "network_depth": args.depth, "network_phase": args.network_phase,
           "network_init": args.network_init}
    # the unrolled net: that of an earlier run (its training time is in that run's table), or a new one
    unrolled = Recon.load(args.unrolled_from) if args.unrolled_from else Recon(ReconConfig.model_validate(
        {"method": "sense", "coil_combine": "sensitivity", "network": "unrolled",
         **net, "network_features": args.unrolled_features or args.features,
         "unrolled": {"iterations": args.unrolled_steps, "prior": "unet", "lambdas": "trained",
                      "shared_weights": not args.per_iteration, "cg_iterations": args.cg_iterations}}))
    cg_unet = Recon.load(args.cg_unet_from) if args.cg_unet_from else Recon(ReconConfig(
        method="sense", iterations=30, tikhonov=best[4][0], coil_combine="sensitivity", network="unet",
        network_scale=args.post_scale, **net))
    n_unrolled = sum(p.numel() for p in unrolled.parameters())
    n_post = sum(p.numel() for p in cg_unet.parameters())
    print(f"parameters: unrolled {n_unrolled}, CG + U-Net {n_post}", flush=True)
    u_steps, u_time, u_hist = 0, 0.0, list[float]()
    if not args.unrolled_from:
        print("training unrolled …", flush=True)
        u_steps, u_time, u_hist = train(unrolled, train_raws, train_truths, args.noise, args.train_minutes, 1,
                                         args.phase, args.lr)
        (out / "unrolled").mkdir(exist_ok=True)
        unrolled.save(out / "unrolled")
    p_steps, p_time, p_hist = 0, 0.0, list[float]()
    if not args.cg_unet_from:
        print("training CG + U-Net …", flush=True)
        post_minutes = args.train_minutes if args.post_minutes is None else args.post_minutes
        p_steps, p_time, p_hist = train(cg_unet, train_raws, train_truths, args.noise, post_minutes, 2, args.phase,
                                         args.post_lr)
        (out / "cg_unet").mkdir(exist_ok=True)
        cg_unet.save(out / "cg_unet")

    assert unrolled.unrolled is not None
    steps = unrolled.unrolled.config.iterations
    rows, per_twin = [], {}
    for r in (4, 6):
        methods = {
            "zero-filled": Recon(ReconConfig(method="fft", coil_combine="sensitivity")),
            f"SENSE, best λ = {best[r][0]:g}": Recon(ReconConfig(method="sense", iterations=30, tikhonov=best[r][0],
                                                                  coil_combine="sensitivity")),
            "CG + U-Net": cg_unet,
            f"unrolled ({steps} steps)": unrolled,
        }
        for name, recon in methods.items():
            ps, ss, dcs, ts = [], [], [], []
            for i, (raw, truth) in enumerate(zip(test_raws, test_truths, strict=True)):
                acq = scan(raw, r, args.noise, 1000 + i)
                with torch.no_grad():
                    t = time.perf_counter()
                    image = recon(acq).data[0, 0, 0]
                    ts.append(time.perf_counter() - t)
                p, s = metrics(image, truth)
                ps.append(p)
                ss.append(s)
                dcs.append(dc_residual(recon, acq, image.to(torch.complex64)))
            rows.append((name, r, np.mean(ps), np.std(ps), np.mean(ss), np.mean(dcs), 1e3 * np.mean(ts)))
            per_twin[id(recon), r] = ps, ss
            print(f"R={r} {name}: PSNR {np.mean(ps):.2f} SSIM {np.mean(ss):.3f}", flush=True)
    lambdas = [round(float(v), 3) for v in unrolled.unrolled.lambdas().detach()]
    shared = unrolled.unrolled.config.shared_weights
    lines = ["| method | R | PSNR / dB (± sd) | SSIM | DC ‖Ex−y‖/‖y‖ | time / ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r} | {p:.2f} ± {sd:.2f} | {s:.3f} | {dc:.4f} | {t:.0f} |" for n, r, p, sd, s, dc, t in rows]
    lines += ["", "unrolled − CG + U-Net, paired over the held-out twins (mean ± standard error):"]
    for r in (4, 6):
        (pu, su), (pc, sc) = per_twin[id(unrolled), r], per_twin[id(cg_unet), r]
        lines.append(f"- R = {r}: PSNR / dB {paired(pu, pc)}, SSIM {paired(su, sc)}")
    gains = (0.25, 1.0, 4.0)
    lines += ["", "PSNR / dB at R = 4 with the k-space times a receiver gain " + ", ".join(f"{g:g}" for g in gains)]
    for name, recon in ((f"CG + U-Net (network_scale {cg_unet.config.network_scale})", cg_unet),
                        (f"unrolled ({steps} steps)", unrolled)):
        values = [psnr_at_gain(recon, test_raws, test_truths, 4, args.noise, g) for g in gains]
        lines.append(f"- {name}: " + ", ".join(f"{v:.2f}" for v in values))
    lines += ["", f"noise σ = {args.noise:g}·max|k| per twin; {len(train_ids)} training twins "
              f"({args.bottle_twins} of them water bottles), "
              f"test twins {test_ids[0]}–{test_ids[-1]} (held out), "
              f"variable-density masks (ACS {ACS}), 64², 8 coils",
              f"trained λₙ (n = 1 … {steps}): {lambdas}  (seed pattern: 7.05, 7.05, 3.91, 1.85, 1.11, 0.91)",
              f"parameters: unrolled {n_unrolled} ({'shared U-Net' if shared else 'one U-Net per step'}"
              f" + {steps} λ), CG + U-Net {n_post}",
              f"training: unrolled {f'from {args.unrolled_from}' if args.unrolled_from else f'{u_steps} steps'} "
              f"in {u_time / 60:.1f} min, CG + U-Net "
              f"{f'from {args.cg_unet_from}' if args.cg_unet_from else f'{p_steps} steps'} in "
              f"{p_time / 60:.1f} min; random image phase in training: {args.phase}, network phase "
              f"{args.network_phase}, last layers starting at std {args.network_init:g}; torch threads "
              f"{args.threads}; load average at start {load[0]:.2f}, "
              f"at end {os.getloadavg()[0]:.2f} (2 cores, shared)"]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "lambdas.json").write_text(json.dumps({"lambdas": lambdas, "best_sense_lambda": best,
                                                  "unrolled_loss": u_hist, "cg_unet_loss": p_hist}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
