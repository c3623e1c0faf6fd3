"""ISMRMRD read/write speed: mrbridge's vectorised reader/writer vs the ismrmrd package's per-acquisition API
and vs plain h5py, on the 256x256x8-coil Shepp-Logan file of ``ismrmrd_generate_cartesian_shepp_logan``.

Run by hand (not part of the test suite):  .venv/bin/python bench/mrd_bench.py [--matrix 256] [--coils 8]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import ismrmrd
import numpy as np

from mrbridge.raw.mrd import read_mrd, write_mrd


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ismrmrd_loop(path: Path) -> np.ndarray:
    """The plain ismrmrd way: one read_acquisition per readout."""
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False, mode="r")
    acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    ds.close()
    imaging = [a.data for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    return np.stack(imaging, axis=1)


def ismrmrd_file_iter(path: Path) -> np.ndarray:
    """ismrmrd.File: iterate the acquisitions container (Acquisition objects)."""
    with ismrmrd.File(str(path), "r") as f:
        acqs = list(f["dataset"].acquisitions)
    imaging = [a.data for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    return np.stack(imaging, axis=1)


def h5py_direct(path: Path) -> np.ndarray:
    """h5py: read the acquisition table at once, stack the data column."""
    with h5py.File(path, "r") as f:
        table = f["dataset/data"][:]
    head = table["head"]
    img = (head["flags"] & np.uint64(1 << 18)) == 0
    data = np.stack(list(table["data"][img])).view(np.complex64)
    return data.reshape(int(img.sum()), int(head["active_channels"][img][0]), -1).transpose(1, 0, 2)


def ismrmrd_append_loop(raw_path: Path, out: Path) -> None:
    """The plain ismrmrd way of writing: one append_acquisition per readout."""
    raw = read_mrd(raw_path)
    k = raw.kdata.numpy()
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=True, mode="w")
    ds.write_xml_header(raw.header.xml or "")
    for r in range(k.shape[1]):
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(k[:, r]))
        acq.idx.kspace_encode_step_1 = int(raw.labels["kspace_encode_step_1"][r])
        ds.append_acquisition(acq)
    ds.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sl.h5"
        subprocess.run(
            [
                "ismrmrd_generate_cartesian_shepp_logan",
                "-m",
                str(args.matrix),
                "-c",
                str(args.coils),
                "-C",
                "-o",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
        ours = read_mrd(path).kdata.numpy()
        for name, fn in [
            ("ismrmrd loop", ismrmrd_loop),
            ("ismrmrd.File", ismrmrd_file_iter),
            ("h5py", h5py_direct),
        ]:
            assert np.array_equal(fn(path), ours), name
        raw = read_mrd(path)
        print(
            f"file: {args.matrix}x{args.matrix}, {args.coils} coils, 2x oversampled, "
            f"kdata {tuple(raw.kdata.shape)}, {path.stat().st_size / 1e6:.1f} MB"
        )
        t_ours = best_of(lambda: read_mrd(path), args.repeats)
        print(f"read  mrbridge read_mrd            {t_ours * 1e3:8.1f} ms")
        for name, fn in [
            ("ismrmrd per-acquisition loop", ismrmrd_loop),
            ("ismrmrd.File acquisitions iter", ismrmrd_file_iter),
            ("h5py table + stack (data only)", h5py_direct),
        ]:
            t = best_of(lambda fn=fn: fn(path), args.repeats)
            print(f"read  {name:30s} {t * 1e3:8.1f} ms   ({t / t_ours:5.2f}x read_mrd)")
        out = Path(tmp) / "w.h5"
        t_w = best_of(lambda: write_mrd(raw, out), args.repeats)
        print(f"write mrbridge write_mrd           {t_w * 1e3:8.1f} ms")
        t = best_of(lambda: ismrmrd_append_loop(path, Path(tmp) / "loop.h5"), args.repeats)
        print(f"write ismrmrd append loop (+read)  {t * 1e3:8.1f} ms   ({t / t_w:5.2f}x write_mrd)")


if __name__ == "__main__":
    main()
