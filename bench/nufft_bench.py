"""Issue 14's numbers: non-Cartesian CG-SENSE at 256² — mrbridge (finufft NUFFT) vs BART ``pics`` (its own NUFFT).

    OMP_NUM_THREADS=1 .venv/bin/python bench/nufft_bench.py [--matrix 256] [--coils 8] [--iterations 10]
                                                             [--trajectory radial spiral] [--repeats 3]

Data: BART makes everything — the trajectory (radial: ``bart traj -r -G -x 2n -y 402`` scaled by 0.5, i.e.
402 golden-angle spokes of 2n samples with 2× readout oversampling; spiral: a variable-density spiral made here,
16 interleaves, written as a BART trajectory), the 8-coil analytic Shepp-Logan k-space (``bart phantom -k -s 8
-t traj``), its coil maps (``bart phantom -S 8``) and the reference image (``bart phantom``). Reconstructions,
each in its own child process with one thread (OMP_NUM_THREADS=1, torch.set_num_threads(1)):

* ``bart pics -l2 -r λ -i N -t traj ksp sens`` — CG on the normal equations with the true maps, Toeplitz NUFFT;
  its time is the whole process (reading/writing the small .cfl files included).
* ``mrbridge cg-sense``: the same problem (same maps, λ, iterations), NonCartesianOp (NUFFT) ∘ CoilOp with the
  Toeplitz normal operator ``op.normal`` and ``conjugate_gradient`` — time of the recon, median of ``--repeats``.
* ``mrbridge Recon``: ``Recon(method=cg, coil_combine=sensitivity)`` end to end (Walsh maps from the adjoint,
  CG with the Toeplitz normal operator).

Error: ‖a·x − ref‖/‖ref‖ with the complex scalar a fitted by least squares (BART scales its data internally),
ref = the phantom for the runs with the true maps, |phantom|·RSS(true maps) (and |x|) for the Walsh-map runs.
Peak memory: the child's maximum resident set size (includes the interpreter and torch's imports; the line
"import baseline" is a child that only imports and loads the data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FOV = 0.22  # m
LAMBDA = 1e-3


# --------------------------------------------------------------------------- BART .cfl io
def write_cfl(base: Path, array: np.ndarray) -> None:
    dims = list(array.shape) + [1] * (16 - array.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    np.asarray(array, dtype=np.complex64).ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> np.ndarray:
    lines = base.with_suffix(".hdr").read_text().splitlines()
    dims = [int(d) for d in lines[lines.index("# Dimensions") + 1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


def bart(*args: str, cwd: Path) -> None:
    subprocess.run(["bart", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def spiral_traj(n: int, interleaves: int = 16, samples: int = 8192, turns: float = 12.0,
                power: float = 1.5) -> np.ndarray:
    """(3, samples, interleaves) in BART units (k·FOV): r = (n/2)·τ^power (denser centre), θ = 2π·turns·τ."""
    tau = np.arange(samples) / samples
    r = n / 2 * tau**power
    traj = np.zeros((3, samples, interleaves))
    for i in range(interleaves):
        theta = 2 * np.pi * turns * tau + 2 * np.pi * i / interleaves
        traj[0, :, i], traj[1, :, i] = r * np.cos(theta), r * np.sin(theta)
    return traj


def make_data(folder: Path, kind: str, n: int, coils: int) -> None:
    if kind == "radial":
        bart("traj", "-r", "-G", "-x", str(2 * n), "-y", "402", "t0", cwd=folder)
        bart("scale", "0.5", "t0", "traj", cwd=folder)
    else:
        write_cfl(folder / "traj", spiral_traj(n))
    bart("phantom", "-k", "-s", str(coils), "-t", "traj", "ksp", cwd=folder)
    bart("phantom", "-S", str(coils), "-x", str(n), "sens", cwd=folder)
    bart("phantom", "-x", str(n), "ref", cwd=folder)


# --------------------------------------------------------------------------- children
def _load(folder: Path):  # type: ignore[no-untyped-def]
    """BART arrays → torch: traj (M, 3) 1/m, kdata (coils, readouts, samples), sens (coils, 1, y, x)."""
    import torch

    t = read_cfl(folder / "traj").real  # (3, samples, readouts), k·FOV
    ksp = read_cfl(folder / "ksp")  # (1, samples, readouts, coils)
    sens = read_cfl(folder / "sens")  # (x, y, 1, coils) — BART images are (x, y), ours (y, x)
    samples, readouts = t.shape[1], t.shape[2]
    traj = torch.from_numpy(np.ascontiguousarray(t.transpose(2, 1, 0) / FOV)).float()  # (readouts, samples, 3)
    traj[..., 2] = 0
    kdata = torch.from_numpy(np.ascontiguousarray(ksp.reshape(samples, readouts, -1).transpose(2, 1, 0)))
    kdata = kdata / kdata.abs().max()  # BART's phantom is ~1e4: Walsh maps (coils.py) overflow float32 there
    s = torch.from_numpy(np.ascontiguousarray(sens.reshape(sens.shape[0], sens.shape[1], -1).transpose(2, 1, 0)))
    return traj, kdata, s[:, None]


def child(stage: str, folder: Path, iterations: int, repeats: int) -> dict:
    import torch

    from mrbridge.raw.rawdata import RawData, RawHeader
    from mrbridge.recon.operators import CoilOp, NonCartesianOp
    from mrbridge.recon.pipeline import Recon, ReconConfig
    from mrbridge.recon.solvers import conjugate_gradient

    torch.set_num_threads(1)
    traj, kdata, sens = _load(folder)
    n = sens.shape[-1]
    shape, fov = (1, n, n), (FOV, FOV, 0.005)
    if stage == "baseline":
        return {"seconds": 0.0, "image": None}
    flat = traj.reshape(-1, 3)
    y = kdata.reshape(kdata.shape[0], -1)

    def toeplitz_cg(maps: torch.Tensor) -> torch.Tensor:
        op = NonCartesianOp(flat, shape, fov)
        coil = CoilOp(maps)
        rhs = coil.H(op.H(y))
        return conjugate_gradient(lambda x: coil.H(op.normal(coil(x))) + LAMBDA * x, rhs, iterations=iterations)

    def recon() -> torch.Tensor:
        header = RawHeader(trajectory="radial", encoded_matrix=(n, n, 1), recon_matrix=(n, n, 1),
                           encoded_fov=fov, recon_fov=fov, coils=kdata.shape[0])
        raw = RawData(kdata, header=header, traj=traj,
                      labels={"kspace_encode_step_1": torch.zeros(kdata.shape[1], dtype=torch.int64)},
                      center_sample=kdata.shape[2] // 2)
        cfg = ReconConfig(method="cg", coil_combine="sensitivity", iterations=iterations, tikhonov=LAMBDA)
        return Recon(cfg)(raw).data.reshape(n, n)

    fn = {"cg-sense": lambda: toeplitz_cg(sens), "recon": recon}[stage]
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            image = fn()
            times.append(time.perf_counter() - t0)
    np.save(folder / f"{stage}.npy", image.reshape(n, n).numpy())
    return {"seconds": float(np.median(times)), "image": str(folder / f"{stage}.npy")}


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a child process (os.wait4: that child's own peak)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def fitted_error(x: np.ndarray, ref: np.ndarray) -> float:
    """min over complex a of ‖a·x − ref‖/‖ref‖."""
    a = np.vdot(x, ref) / max(np.vdot(x, x).real, 1e-30)
    return float(np.linalg.norm(a * x - ref) / np.linalg.norm(ref))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trajectory", nargs="+", default=["radial", "spiral"], choices=["radial", "spiral"])
    p.add_argument("--child", nargs=2, metavar=("STAGE", "FOLDER"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), a.iterations, a.repeats)))
        return
    print(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()}; all runs single-threaded)")
    for kind in a.trajectory:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            make_data(folder, kind, a.matrix, a.coils)
            ref = read_cfl(folder / "ref").T  # (y, x)
            sens = read_cfl(folder / "sens")
            rss = np.sqrt((np.abs(sens.reshape(sens.shape[0], sens.shape[1], -1)) ** 2).sum(-1)).T
            samples = read_cfl(folder / "traj").shape[1] * read_cfl(folder / "traj").shape[2]
            print(f"\n{kind}: {a.matrix}² × {a.coils} coils, {samples} samples, {a.iterations} CG iterations, "
                  f"λ = {LAMBDA}")
            rows = []
            cmd = ["bart", "pics", "-l2", "-r", str(LAMBDA), "-i", str(a.iterations), "-t", "traj", "ksp", "sens",
                   "bart_out"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            _, status, usage = os.wait4(proc.pid, 0)
            bart_time = time.perf_counter() - t0
            if os.waitstatus_to_exitcode(status):
                raise RuntimeError("bart pics failed")
            bart_img = read_cfl(folder / "bart_out").T
            rows.append(("bart pics (true maps)", bart_time, usage.ru_maxrss / 1024, fitted_error(bart_img, ref)))
            me = [sys.executable, __file__, "--iterations", str(a.iterations), "--repeats", str(a.repeats), "--child"]
            _, base_rss, _ = run_measured([*me, "baseline", str(folder)])
            for stage, label in (("cg-sense", "mrbridge cg-sense (true maps, Toeplitz)"),
                                 ("recon", "mrbridge Recon cg (Walsh maps)")):
                _, peak, out = run_measured([*me, stage, str(folder)])
                res = json.loads(out.strip().splitlines()[-1])
                img = np.load(res["image"])
                err = fitted_error(img, ref) if stage == "cg-sense" else fitted_error(np.abs(img), np.abs(ref) * rss)
                rows.append((label, res["seconds"], peak, err))
            bart_err = rows[0][3]
            bart_walsh = fitted_error(np.abs(bart_img), np.abs(ref) * rss)
            print(f"{'method':42s} {'time s':>8s} {'peak MiB':>9s} {'t/BART':>7s} {'error':>7s} {'err/BART':>8s}")
            for label, sec, peak, err in rows:
                ref_err = bart_err if "true" in label else bart_walsh
                print(f"{label:42s} {sec:8.2f} {peak:9.0f} {sec / bart_time:7.2f} {err:7.4f} {err / ref_err:8.2f}")
            print(f"{'(python + torch import baseline)':42s} {'':8s} {base_rss:9.0f}")
            print(f"(Walsh-map rows: error of |x| against |phantom|·RSS(maps); BART's on that measure: "
                  f"{bart_walsh:.4f})")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
