"""Issue 3's numbers: mrbridge Recon vs plain numpy, the C++ ISMRMRD recon and BART (run by hand).

    .venv/bin/python bench/recon_bench.py [--matrix 256] [--coils 8] [--iterations 10] [--repeats 5]

Every stage runs in its own child process (1 thread; BART with OMP_NUM_THREADS=1); the time is the median
of ``--repeats`` runs after one warm-up (BART: one timed run of ecalib + pics), the peak memory the child's
maximum resident set size (includes the interpreter and its imports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- child stages
def _median_time(fn, repeats: int):  # type: ignore[no-untyped-def]
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def stage_mrbridge_fft(path: Path, out: Path, repeats: int, iterations: int) -> float:
    import torch

    from mrbridge.raw.mrd import read_mrd
    from mrbridge.recon.pipeline import Recon, ReconConfig

    torch.set_num_threads(1)
    recon = Recon(ReconConfig(method="fft"))
    seconds, image = _median_time(lambda: recon(read_mrd(path)), repeats)
    np.save(out, image.data[0, 0, 0].numpy())
    return seconds


def stage_numpy_fft(path: Path, out: Path, repeats: int, iterations: int) -> float:
    import h5py

    def run() -> np.ndarray:
        with h5py.File(path, "r") as f:
            acq = f["dataset/data"][...]
            xml = f["dataset/xml"][0]
        import xml.etree.ElementTree as ET

        ns = {"m": "http://www.ismrm.org/ISMRMRD"}
        enc = ET.fromstring(xml).find("m:encoding", ns)
        nx_rec = int(enc.find("m:reconSpace/m:matrixSize/m:x", ns).text)
        head = acq["head"]
        coils, samples = int(head["active_channels"][0]), int(head["number_of_samples"][0])
        lines = np.stack(acq["data"]).view(np.complex64).reshape(len(acq), coils, samples)
        ky = head["idx"]["kspace_encode_step_1"]
        k = np.zeros((coils, int(ky.max()) + 1, samples), np.complex64)
        k[:, ky] = lines.transpose(1, 0, 2)
        img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, (-2, -1))), (-2, -1))
        rss = np.sqrt((np.abs(img) ** 2).sum(0))
        return rss[:, samples // 2 - nx_rec // 2 : samples // 2 + nx_rec // 2] * k[0].size  # unnormalised

    seconds, image = _median_time(run, repeats)
    np.save(out, image)
    return seconds


def stage_mrbridge_sense(path: Path, out: Path, repeats: int, iterations: int) -> float:
    import torch

    from mrbridge.raw.mrd import read_mrd
    from mrbridge.recon.pipeline import Recon, ReconConfig

    torch.set_num_threads(1)
    raw = first_pass(read_mrd(path))
    recon = Recon(ReconConfig(method="sense", iterations=iterations, tikhonov=1e-3))
    seconds, image = _median_time(lambda: recon(raw), repeats)
    np.save(out, image.data[0, 0, 0].numpy())
    return seconds


def first_pass(raw):  # type: ignore[no-untyped-def]
    """The R=2 acquisition alone: the generator writes a second pass (the other lines) as repetition 1."""
    sel = raw.labels["repetition"] == 0
    return replace(
        raw,
        kdata=raw.kdata[:, sel],
        labels={k: v[sel] for k, v in raw.labels.items()},
        flags=raw.flags[sel],
        sample_time=None if raw.sample_time is None else raw.sample_time[sel],
        traj=None if raw.traj is None else raw.traj[sel],
    )


STAGES = {"mrbridge_fft": stage_mrbridge_fft, "numpy_fft": stage_numpy_fft, "mrbridge_sense": stage_mrbridge_sense}


# --------------------------------------------------------------------------- parent
def run_child(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a process; (wall seconds, its peak RSS in MiB, its stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{err.read()}")
        return wall, usage.ru_maxrss / 1024, out.read()


def stage(name: str, path: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(median seconds, peak MiB) of a child stage."""
    argv = [sys.executable, __file__, "--stage", name, "--file", str(path), "--out", str(out)]
    argv += ["--repeats", str(args.repeats), "--iterations", str(args.iterations)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    _, peak, stdout = run_child(argv, env)
    return float(json.loads(stdout)["seconds"]), peak


def write_cfl(base: Path, array: np.ndarray) -> None:
    dims = list(array.shape) + [1] * (16 - array.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    array.astype(np.complex64).ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> np.ndarray:
    dims = [int(d) for d in base.with_suffix(".hdr").read_text().splitlines()[1].split()]
    return np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


def kspace_for_bart(path: Path, repetition: int | None) -> tuple[np.ndarray, int]:
    """(x, y, 1, coils) k-space straight from the file (h5py), and the recon x size."""
    import h5py

    with h5py.File(path, "r") as f:
        acq = f["dataset/data"][...]
    head = acq["head"]
    keep = np.ones(len(acq), bool) if repetition is None else head["idx"]["repetition"] == repetition
    coils, samples = int(head["active_channels"][0]), int(head["number_of_samples"][0])
    lines = np.stack(acq["data"][keep]).view(np.complex64).reshape(int(keep.sum()), coils, samples)
    ky = head["idx"]["kspace_encode_step_1"][keep]
    k = np.zeros((samples, int(head["idx"]["kspace_encode_step_1"].max()) + 1, 1, coils), np.complex64)
    k[:, ky, 0, :] = lines.transpose(2, 0, 1)
    return k, samples // 2


def bart(tool: str, args: list[str], cwd: Path) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    wall, peak, _ = run_child([tool, *args], env, cwd)
    return wall, peak


def nrmse_fit(a: np.ndarray, b: np.ndarray) -> float:
    """NRMSE of |a| to |b| after the least-squares scale of |a| (recons differ in global scale)."""
    a, b = np.abs(a).ravel(), np.abs(b).ravel()
    return float(np.linalg.norm(a * (a @ b) / (a @ a) - b) / np.linalg.norm(b))


def nrmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.abs(a) - np.abs(b)) / np.linalg.norm(np.abs(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stage", choices=sorted(STAGES))
    p.add_argument("--file", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.stage:
        print(json.dumps({"seconds": STAGES[args.stage](args.file, args.out, args.repeats, args.iterations)}))
        return

    import h5py

    tools = {
        t: shutil.which(t) for t in ("ismrmrd_generate_cartesian_shepp_logan", "ismrmrd_recon_cartesian_2d", "bart")
    }
    missing = [t for t, w in tools.items() if w is None]
    if missing:
        sys.exit(f"missing tools: {missing}")
    work = Path(tempfile.mkdtemp(prefix="recon_bench_"))
    m, c = str(args.matrix), str(args.coils)
    full, under = work / "full.h5", work / "r2.h5"
    subprocess.run(
        [tools["ismrmrd_generate_cartesian_shepp_logan"], "-m", m, "-c", c, "-o", str(full)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [tools["ismrmrd_generate_cartesian_shepp_logan"], "-m", m, "-c", c, "-a", "2", "-w", "24", "-o", str(under)],
        check=True,
        capture_output=True,
    )
    cpp_s, cpp_mb = bart(tools["ismrmrd_recon_cartesian_2d"], [str(full)], work)
    with h5py.File(full, "r") as f:
        cpp = f["dataset/cpp/data"][...].reshape(args.matrix, args.matrix)
    with h5py.File(under, "r") as f:
        phantom = f["dataset/phantom"][...].view(np.complex64).reshape(args.matrix, args.matrix)
        csm = f["dataset/csm"][...].view(np.complex64).reshape(args.coils, args.matrix, args.matrix)
    weighted = np.abs(phantom) * np.sqrt((np.abs(csm) ** 2).sum(0))

    rows = []
    t_mb, mem_mb = stage("mrbridge_fft", full, work / "mb_fft.npy", args)
    t_np, mem_np = stage("numpy_fft", full, work / "np_fft.npy", args)
    ours = np.load(work / "mb_fft.npy")
    scale = np.sqrt(2 * args.matrix * args.matrix)  # unnormalised FFT of the C++ recon (oversampling 2)

    # BART fft + rss on the fully sampled file
    k, _ = kspace_for_bart(full, None)
    write_cfl(work / "k", k)
    t1, mem1 = bart(tools["bart"], ["fft", "-u", "-i", "3", "k", "img"], work)
    t2, mem2 = bart(tools["bart"], ["rss", "8", "img", "rss"], work)
    t3, mem3 = bart(tools["bart"], ["resize", "-c", "0", m, "rss", "out"], work)
    bart_fft = np.abs(read_cfl(work / "out")).reshape(args.matrix, args.matrix).T
    rows.append(("read+FFT+RSS mrbridge", t_mb, mem_mb, f"{nrmse(ours * scale, cpp):.1e} vs C++"))
    rows.append(("read+FFT+RSS numpy/h5py", t_np, mem_np, f"{nrmse(np.load(work / 'np_fft.npy'), cpp):.1e} vs C++"))
    rows.append(("ismrmrd_recon_cartesian_2d", cpp_s, cpp_mb, "(process incl. read/write)"))
    rows.append(
        ("BART fft+rss+resize", t1 + t2 + t3, max(mem1, mem2, mem3), f"{nrmse(ours, bart_fft):.1e} ours vs BART")
    )

    # R = 2, 24 ACS lines: CG-SENSE vs BART ecalib + pics -l2
    t_sense, mem_sense = stage("mrbridge_sense", under, work / "mb_sense.npy", args)
    k2, _ = kspace_for_bart(under, 0)
    write_cfl(work / "k2", k2)
    te, meme = bart(tools["bart"], ["ecalib", "-m1", "k2", "sens"], work)
    it = str(args.iterations)
    tp, memp = bart(tools["bart"], ["pics", "-l2", "-r", "0.001", "-i", it, "k2", "sens", "pimg"], work)
    bart(tools["bart"], ["resize", "-c", "0", m, "pimg", "pout"], work)
    bart_sense = read_cfl(work / "pout").reshape(args.matrix, args.matrix).T
    sense = np.load(work / "mb_sense.npy")
    e_ours, e_bart = nrmse_fit(sense, phantom), nrmse_fit(bart_sense, phantom)
    w_ours, w_bart = nrmse_fit(sense, weighted), nrmse_fit(bart_sense, weighted)
    rows.append((f"CG-SENSE mrbridge ({it} it)", t_sense, mem_sense, f"{e_ours:.4f} / {w_ours:.4f}"))
    rows.append((f"BART ecalib+pics -l2 ({it} it)", te + tp, max(meme, memp), f"{e_bart:.4f} / {w_bart:.4f}"))

    print(f"# {args.matrix}x{args.matrix}, {args.coils} coils, 1 thread; work dir {work}")
    print(f"{'stage':34s} {'time s':>8s} {'peak MiB':>9s}  quality")
    for name, t, mem, q in rows:
        print(f"{name:34s} {t:8.3f} {mem:9.0f}  {q}")
    print(f"ratio read+recon mrbridge / numpy      : {t_mb / t_np:.2f}  (target <= 2)")
    print(f"ratio CG-SENSE mrbridge / BART         : {t_sense / (te + tp):.2f}  (target <= 1)")
    print(
        f"SENSE NRMSE to phantom ours / BART     : {e_ours / e_bart:.3f}  (target <= 1.10; "
        "quality column: vs phantom / vs phantom·RSS(csm), scale fitted)"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
