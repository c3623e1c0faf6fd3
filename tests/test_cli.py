"""The command line end to end: real files written, read back; bad input → one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrbridge.raw.mrd import read_mrd
from mrbridge.twin.twin import Twin
from tests.helpers import REPO
from tests.twin.mapfiles import affine_mm, synthetic_maps, write_nifti


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrbridge", *args], capture_output=True, text=True, cwd=cwd)


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, a one-line message containing every fragment, no traceback."""
    assert result.returncode == 2, result.stderr + result.stdout
    message = result.stderr.strip()
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


def small_twin(tmp_path: Path, **overrides: np.ndarray) -> Path:
    maps = {
        "pd": torch.ones(1, 4, 4),
        "t1": torch.full((1, 4, 4), 0.8),
        "t2": torch.full((1, 4, 4), 0.08),
    }
    twin = Twin.from_maps(**maps, fov=(0.04, 0.04, 0.005))
    path = tmp_path / "twin.h5"
    twin.save(path)
    with h5py.File(path, "r+") as f:
        for name, value in overrides.items():
            attrs = dict(f[name].attrs)
            del f[name]
            f.create_dataset(name, data=value)
            f[name].attrs.update(attrs)
    return path


def test_simulate_writes_ismrmrd_and_twin_round_trips(tmp_path: Path) -> None:
    twin_path = tmp_path / "spin.h5"
    result = run_cli("twin", "builtin:spin-random", "--seed", "3", "--matrix", "16", "-o", str(twin_path))
    assert result.returncode == 0, result.stderr
    assert Twin.load(twin_path).shape == (1, 16, 16)
    raw_path = tmp_path / "raw.h5"
    result = run_cli("simulate", "--protocol", "protocols/se.yaml", "--twin", str(twin_path), "--matrix", "16",
                     "--noise", "0.01", "-o", str(raw_path))
    assert result.returncode == 0, result.stderr
    raw = read_mrd(raw_path)
    assert raw.kdata.shape == (1, 16, 16)
    assert raw.noise is not None


def test_unknown_protocol_key_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "protocols" / "gre.yaml").read_text() + "\nte_typo_ms: 3\n")
    assert_user_error(run_cli("simulate", "--protocol", str(bad), "-o", str(tmp_path / "r.h5")), "te_typo_ms")


def test_negative_te_is_one_line_exit_2(tmp_path: Path) -> None:
    text = (REPO / "protocols" / "gre.yaml").read_text()
    lines = [("te_ms: -5" if line.startswith("te_ms:") else line) for line in text.splitlines()]
    bad = tmp_path / "neg.yaml"
    bad.write_text("\n".join(lines))
    assert_user_error(run_cli("simulate", "--protocol", str(bad), "-o", str(tmp_path / "r.h5")), "te_ms", "-5")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"t1": np.full((1, 4, 4), 800.0, dtype=np.float32)}, ("'t1'", "milliseconds")),
        ({"t2": np.array([[[np.nan] * 4] * 4], dtype=np.float32)}, ("'t2'", "NaN")),
        ({"b0": np.zeros((1, 3, 4), dtype=np.float32)}, ("'b0'", "shape")),
    ],
    ids=["t1-in-ms", "nan", "mismatched-shape"],
)
def test_bad_twin_is_one_line_exit_2(
    tmp_path: Path, override: dict[str, np.ndarray], fragments: tuple[str, ...]
) -> None:
    twin_path = small_twin(tmp_path, **override)
    result = run_cli("simulate", "--protocol", "protocols/gre.yaml", "--twin", str(twin_path), "--matrix", "8",
                     "-o", str(tmp_path / "r.h5"))
    assert_user_error(result, str(twin_path), *fragments)
    assert not (tmp_path / "r.h5").exists()


def test_simulate_notes_a_twin_far_smaller_than_the_image(tmp_path: Path) -> None:
    """SPIN's phantoms span 64 mm: at gre.yaml's 200 mm they fill a third of the image, and simulate says so; at
    se.yaml's 64 mm it says nothing."""
    for protocol, noted in (("gre", True), ("se", False)):
        result = run_cli("simulate", "--protocol", f"protocols/{protocol}.yaml", "--twin", "builtin:spin-random",
                         "--matrix", "8", "-o", str(tmp_path / f"{protocol}.h5"))
        assert result.returncode == 0, result.stderr
        note = "note: the twin spans 64 × 64 mm, 32 % of the sequence's 200 × 200 mm field of view"
        assert (note in " ".join((result.stdout + result.stderr).split())) == noted, result.stdout


def test_calibrate_from_nifti_and_show(tmp_path: Path) -> None:
    maps = synthetic_maps(nz=1, n=16)
    args = []
    for name in ("pd", "t1", "t2", "b0", "b1"):
        args += [f"--{name}", str(write_nifti(tmp_path / f"{name}.nii.gz", maps[name], affine_mm((1, 16, 16))))]
    twin_path = tmp_path / "twin.h5"
    result = run_cli("calibrate", *args, "-o", str(twin_path))
    assert result.returncode == 0, result.stderr
    assert Twin.load(twin_path).shape == (1, 16, 16)
    result = run_cli("twin", "show", str(twin_path), "--png", str(tmp_path / "twin.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "twin.png").stat().st_size > 1000


def test_calibrate_t1_in_ms_stated_as_seconds_is_one_line_exit_2(tmp_path: Path) -> None:
    maps = synthetic_maps(nz=1, n=16)
    t1_ms = write_nifti(tmp_path / "t1.nii.gz", maps["t1"], affine_mm((1, 16, 16)))  # values in ms
    pd = write_nifti(tmp_path / "pd.nii.gz", maps["pd"], affine_mm((1, 16, 16)))
    t2 = write_nifti(tmp_path / "t2.nii.gz", maps["t2"], affine_mm((1, 16, 16)))
    result = run_cli("calibrate", "--pd", str(pd), "--t1", str(t1_ms), "--t2", str(t2), "--t1-unit", "s",
                     "-o", str(tmp_path / "twin.h5"))
    assert_user_error(result, "t1.nii.gz")
    assert not (tmp_path / "twin.h5").exists()


def test_export_check_and_simulate_the_exported_seq(tmp_path: Path) -> None:
    from mrbridge.sequence.builders import build
    from mrbridge.sequence.protocol import load_protocol

    build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=16).save(tmp_path / "gre.json")
    seq_path = tmp_path / "gre.seq"
    result = run_cli("export", str(tmp_path / "gre.json"), "--system", "generic3t", "-o", str(seq_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "safety.json").exists() and (tmp_path / "gre.exported.json").exists()
    assert run_cli("check", str(seq_path)).returncode == 0
    raw_path = tmp_path / "raw.h5"
    result = run_cli("simulate", "--seq", str(seq_path), "--twin", "builtin:brain", "--matrix", "16",
                     "-o", str(raw_path))
    assert result.returncode == 0, result.stderr
    assert read_mrd(raw_path).kdata.shape == (1, 16, 16)


def test_export_refuses_an_unsafe_tse_with_exit_1(tmp_path: Path) -> None:
    from mrbridge.sequence.builders import build
    from mrbridge.sequence.protocol import load_protocol

    build(load_protocol(REPO / "protocols" / "tse.yaml"), matrix=16).save(tmp_path / "tse.json")
    # the shipped protocol's 3-ms 180° passes; played as 1-ms sincs its refocusing pulses need 46 µT
    result = run_cli("export", str(tmp_path / "tse.json"), "-o", str(tmp_path / "tse.seq"), "--rf-duration-ms", "1")
    assert result.returncode == 1
    assert "peak B1" in result.stderr and "limit 20" in result.stderr
    assert not (tmp_path / "tse.seq").exists()


def test_demo_runs_the_whole_loop_and_the_report_sees_the_b1_error(tmp_path: Path) -> None:
    import json

    from mrbridge.twin.phantoms import builtin

    result = run_cli("--quiet", "demo", "-o", str(tmp_path), "--matrix", "16")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert printed[-1] == str(tmp_path / "report" / "index.html")
    assert str(tmp_path / "refined" / "report" / "index.html") in printed
    assert (tmp_path / "run" / "sequence.seq").exists() and (tmp_path / "run" / "safety.json").exists()
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    # small flip angles: the scanner stand-in's B1+ × 0.9 scales the image by ≈ 0.9
    assert 0.85 < metrics["scale"] < 0.95
    # the return path: the twin refined from the stand-in's scans recovers B1+ × 0.9 (median over the brain)
    refined, truth = Twin.load(tmp_path / "refined" / "twin.h5"), builtin("brain", matrix=16)
    brain = truth.pd > 0
    factor = float((refined.b1[brain] / truth.b1[brain]).median())
    assert abs(factor / 0.9 - 1) < 0.02
    assert f"refine: B1+ recovered × {factor:.3f} (truth × 0.9) in the brain" in result.stdout
