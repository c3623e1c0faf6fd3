"""Every user mistake, on every command: exit 2, one line naming what is wrong, no traceback, inputs untouched,
nothing written under the output's name (issue 13).

Each case is ``mrbridge ARGS`` run through the console entry point in this process; ``{name}`` in ARGS is a file
of the ``files`` fixture (real files written here: a twin, a .seq, ISMRMRD raw data, a bundle, broken variants),
``{out}`` a fresh output path.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrbridge import cli
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.twin.phantoms import builtin
from tests import pulseq_classes as pc
from tests.helpers import REPO, SHARED_DATA

GRE_PROTOCOL = str(REPO / "protocols" / "gre.yaml")
TASK = str(REPO / "protocols" / "demo_gre_sar.yaml")
REAL = SHARED_DATA / "11_from_GRE_to_EPI__01_GRE"
REAL_EPI_SEQ = SHARED_DATA / "11_from_GRE_to_EPI__05_EPI.seq"

#: (id, args, fragments the one-line message must contain)
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- simulate
    ("sim-noise-negative", ["simulate", "--protocol", GRE_PROTOCOL, "--noise", "-1", "-o", "{out}"], ["--noise", "-1"]),
    ("sim-noise-nan", ["simulate", "--protocol", GRE_PROTOCOL, "--noise", "nan", "-o", "{out}"], ["--noise", "nan"]),
    ("sim-matrix-small", ["simulate", "--protocol", GRE_PROTOCOL, "--matrix", "2", "-o", "{out}"], ["--matrix"]),
    ("sim-coils-zero", ["simulate", "--protocol", GRE_PROTOCOL, "--coils", "0", "-o", "{out}"], ["--coils"]),
    ("sim-spins-zero", ["simulate", "--protocol", GRE_PROTOCOL, "--engine", "bloch", "--spins", "0", "-o", "{out}"],
     ["--spins"]),
    ("sim-accuracy-zero", ["simulate", "--protocol", GRE_PROTOCOL, "--accuracy", "0", "-o", "{out}"], ["--accuracy"]),
    ("sim-accuracy-big", ["simulate", "--protocol", GRE_PROTOCOL, "--accuracy", "5", "-o", "{out}"], ["--accuracy"]),
    ("sim-memory-zero", ["simulate", "--protocol", GRE_PROTOCOL, "--memory-gb", "0", "-o", "{out}"], ["--memory-gb"]),
    ("sim-device-cuda", ["simulate", "--protocol", GRE_PROTOCOL, "--device", "cuda:7", "-o", "{out}"],
     ["--device", "CUDA"]),
    ("sim-device-unknown", ["simulate", "--protocol", GRE_PROTOCOL, "--device", "abacus", "-o", "{out}"],
     ["--device", "abacus"]),
    ("sim-engine-unknown", ["simulate", "--protocol", GRE_PROTOCOL, "--engine", "magic", "--matrix", "8",
                            "-o", "{out}"], ["magic"]),
    ("sim-no-sequence", ["simulate", "-o", "{out}"], ["--protocol", "--seq"]),
    ("sim-two-sequences", ["simulate", "--protocol", GRE_PROTOCOL, "--seq", "{seq}", "-o", "{out}"], ["exactly one"]),
    ("sim-protocol-missing", ["simulate", "--protocol", "{missing}.yaml", "-o", "{out}"], ["no such file"]),
    ("sim-protocol-binary", ["simulate", "--protocol", "{binary}", "-o", "{out}"], ["binary.bin"]),
    ("sim-protocol-nan", ["simulate", "--protocol", "{nan_protocol}", "-o", "{out}"],
     ["flip_angle_deg", "nan", "finite"]),
    ("sim-protocol-unknown-key", ["simulate", "--protocol", "{typo_protocol}", "-o", "{out}"], ["flip_angel_deg"]),
    ("sim-protocol-not-mapping", ["simulate", "--protocol", "{list_yaml}", "-o", "{out}"], ["list.yaml"]),
    ("sim-seq-missing", ["simulate", "--seq", "{missing}.seq", "-o", "{out}"], ["missing.seq"]),
    ("sim-seq-binary", ["simulate", "--seq", "{binary_seq}", "-o", "{out}"], ["binary.seq"]),
    ("sim-seq-v12", ["simulate", "--seq", "{seq_v12}", "-o", "{out}"], ["1.2", "expected 1.4 or 1.5"]),
    ("sim-seq-truncated", ["simulate", "--seq", "{seq_truncated}", "-o", "{out}"], ["truncated.seq"]),
    ("sim-seq-json-broken", ["simulate", "--seq", "{broken_json}", "-o", "{out}"], ["broken.json", "JSON"]),
    ("sim-twin-missing", ["simulate", "--protocol", GRE_PROTOCOL, "--twin", "{missing}.h5", "-o", "{out}"],
     ["missing.h5"]),
    ("sim-twin-unknown-builtin", ["simulate", "--protocol", GRE_PROTOCOL, "--twin", "builtin:unicorn",
                                  "-o", "{out}"], ["unicorn"]),
    ("sim-twin-not-hdf5", ["simulate", "--protocol", GRE_PROTOCOL, "--twin", "{binary}", "-o", "{out}"],
     ["binary.bin"]),
    ("sim-output-is-twin", ["simulate", "--protocol", GRE_PROTOCOL, "--twin", "{twin}", "-o", "{twin}"],
     ["overwrite the input", "--twin"]),
    ("sim-output-is-seq-link", ["simulate", "--seq", "{seq}", "-o", "{seq_link}"], ["overwrite the input", "--seq"]),
    ("sim-output-under-file", ["simulate", "--protocol", GRE_PROTOCOL, "-o", "{twin}/raw.h5"], ["not a folder"]),
    ("sim-output-proc", ["simulate", "--protocol", GRE_PROTOCOL, "-o", "/proc/mrbridge/raw.h5"], ["not writable"]),
    ("sim-output-folder", ["simulate", "--protocol", GRE_PROTOCOL, "-o", "{folder}"], ["is a folder"]),
    ("sim-option-unknown", ["simulate", "--protocol", GRE_PROTOCOL, "--nosie", "1", "-o", "{out}"], ["--nosie"]),
    ("sim-option-not-number", ["simulate", "--protocol", GRE_PROTOCOL, "--noise", "lots", "-o", "{out}"],
     ["--noise", "lots"]),
    # ---- recon
    ("recon-raw-missing", ["recon", "{missing}.h5", "-o", "{out}"], ["missing.h5"]),
    ("recon-raw-not-hdf5", ["recon", "{binary}", "-o", "{out}"], ["binary.bin"]),
    ("recon-dat-without-seq", ["recon", "{fake_dat}", "-o", "{out}"], ["--seq"]),
    ("recon-output-is-raw", ["recon", "{raw}", "-o", "{raw}"], ["overwrite the input", "RAW"]),
    ("recon-output-is-raw-link", ["recon", "{raw}", "-o", "{raw_link}"], ["overwrite the input", "RAW"]),
    ("recon-output-hard-link", ["recon", "{raw}", "-o", "{raw_hard}"], ["overwrite the input", "RAW"]),
    ("recon-png-is-raw", ["recon", "{raw}", "-o", "{out}", "--png", "{raw}"], ["--png", "overwrite"]),
    ("recon-nifti-suffix", ["recon", "{raw}", "-o", "{out}", "--nifti", "{out}.png"], ["--nifti", ".nii"]),
    ("recon-output-suffix", ["recon", "{raw}", "-o", "{out}.png"], ["-o", "result.h5.png", ".h5", "--png"]),
    ("recon-method-unknown", ["recon", "{raw}", "-o", "{out}", "--method", "magic"], ["method", "magic"]),
    ("recon-bundle-missing", ["recon", "{raw}", "-o", "{out}", "--with", "{missing}"], ["recon.json"]),
    ("recon-bundle-empty-config", ["recon", "{raw}", "-o", "{out}", "--with", "{bundle_empty}"], ["recon.pt"]),
    ("recon-bundle-bad-json", ["recon", "{raw}", "-o", "{out}", "--with", "{bundle_bad_json}"], ["recon.json"]),
    ("recon-ghost-unknown", ["recon", "{raw}", "-o", "{out}", "--ghost-correction", "maybe"],
     ["--ghost-correction", "maybe"]),
    ("recon-output-under-file", ["recon", "{raw}", "-o", "{raw}/img.h5"], ["not a folder"]),
    # ---- convert
    ("convert-dat-missing", ["convert", "{missing}.dat", "--seq", "{seq}", "-o", "{out}"], ["missing.dat"]),
    ("convert-dat-junk", ["convert", "{fake_dat}", "--seq", "{seq}", "-o", "{out}"], ["fake.dat"]),
    ("convert-seq-missing", ["convert", "{fake_dat}", "--seq", "{missing}.seq", "-o", "{out}"], ["missing.seq"]),
    ("convert-output-is-dat", ["convert", "{fake_dat}", "--seq", "{seq}", "-o", "{fake_dat}"],
     ["overwrite the input", "DAT"]),
    ("convert-output-is-seq", ["convert", "{fake_dat}", "--seq", "{seq}", "-o", "{seq}"], ["overwrite the input"]),
    ("convert-no-seq", ["convert", "{fake_dat}", "-o", "{out}"], ["--seq"]),
    # ---- export / check
    ("export-source-missing", ["export", "{missing}.json", "-o", "{out}.seq"], ["missing.json"]),
    ("export-json-binary", ["export", "{binary_json}", "-o", "{out}.seq"], ["binary.json"]),
    ("export-json-broken", ["export", "{broken_json}", "-o", "{out}.seq"], ["broken.json", "JSON"]),
    ("export-yaml-binary", ["export", "{binary_yaml}", "-o", "{out}.seq"], ["binary.yaml"]),
    ("export-output-is-source", ["export", "{sequence_json}", "-o", "{sequence_json}"], ["overwrite the input"]),
    ("export-beside-is-source", ["export", "{exported_json}", "-o", "{exported_seq}"], ["overwrite the input"]),
    ("export-system-unknown", ["export", GRE_PROTOCOL, "--system", "tricorder", "-o", "{out}.seq"], ["tricorder"]),
    ("export-system-binary", ["export", GRE_PROTOCOL, "--system", "{binary_yaml}", "-o", "{out}.seq"],
     ["binary.yaml"]),
    ("export-short-sinc", ["export", GRE_PROTOCOL, "--rf-duration-ms", "0.05", "-o", "{out}.seq"],
     ["mT/m", "--rf-duration-ms"]),
    ("export-rf-unknown", ["export", GRE_PROTOCOL, "--rf", "gauss", "-o", "{out}.seq"], ["--rf", "gauss"]),
    ("export-timing-unknown", ["export", GRE_PROTOCOL, "--timing", "lazy", "-o", "{out}.seq"], ["--timing"]),
    ("export-version-unknown", ["export", GRE_PROTOCOL, "--version", "2.0", "-o", "{out}.seq"], ["--version"]),
    ("export-protocol-nan", ["export", "{nan_protocol}", "-o", "{out}.seq"], ["flip_angle_deg", "finite"]),
    ("export-bundle-empty", ["export", "{folder}", "-o", "{out}.seq"], ["sequence.json"]),
    ("export-slew-fraction-zero", ["export", GRE_PROTOCOL, "--slew-fraction", "0", "-o", "{out}.seq"],
     ["--slew-fraction"]),
    ("export-patient-negative", ["export", GRE_PROTOCOL, "--patient-kg", "-3", "-o", "{out}.seq"], ["--patient-kg"]),
    ("export-crushers-nan", ["export", GRE_PROTOCOL, "--crusher-cycles", "nan", "-o", "{out}.seq"],
     ["--crusher-cycles"]),
    ("check-seq-missing", ["check", "{missing}.seq"], ["missing.seq"]),
    ("check-seq-junk", ["check", "{binary_seq}"], ["binary.seq"]),
    ("check-system-unknown", ["check", "{seq}", "--system", "tricorder"], ["tricorder"]),
    # ---- twin / calibrate
    ("twin-builtin-unknown", ["twin", "builtin:unicorn", "-o", "{out}"], ["unicorn"]),
    ("twin-matrix-small", ["twin", "builtin:brain", "--matrix", "2", "-o", "{out}"], ["matrix"]),
    ("twin-output-is-input", ["twin", "{twin}", "-o", "{twin}"], ["overwrite the input"]),
    ("twin-show-no-png", ["twin", "show", "{twin}"], ["--png"]),
    ("twin-no-output", ["twin", "builtin:brain"], ["-o"]),
    ("calibrate-no-maps", ["calibrate", "-o", "{out}"], ["pd"]),
    ("calibrate-pd-missing", ["calibrate", "--pd", "{missing}.nii.gz", "--t1", "{t1_npy}", "--t2", "{t1_npy}",
                              "-o", "{out}"], ["missing.nii.gz"]),
    ("calibrate-object-array", ["calibrate", "--mat", "{object_npz}", "--keys", "PD,T1", "-o", "{out}"],
     ["object.npz", "PD", "pickled"]),
    ("calibrate-mat-without-keys", ["calibrate", "--mat", "{object_npz}", "-o", "{out}"], ["--keys"]),
    ("calibrate-voxel-bad", ["calibrate", "--mat", "{maps_npz}", "--keys", "PD,T1,T2", "--voxel-mm", "1,x",
                             "-o", "{out}"], ["--voxel-mm"]),
    ("calibrate-output-is-map", ["calibrate", "--mat", "{maps_npz}", "--keys", "PD,T1,T2", "-o", "{maps_npz}"],
     ["overwrite the input", "--mat"]),
    ("calibrate-zero-size-pd", ["calibrate", "--pd", "{empty_npy}", "--t1", "{t1_npy}", "--t2", "{t1_npy}",
                                "--voxel-mm", "1,1,5", "-o", "{out}"], ["empty.npy"]),
    ("calibrate-unit-unknown", ["calibrate", "--mat", "{maps_npz}", "--keys", "PD,T1,T2", "--t1-unit", "furlong",
                                "--voxel-mm", "1,1,5", "-o", "{out}"], ["furlong"]),
    # ---- optimize / compare / gadget
    ("optimize-protocol-not-task", ["optimize", GRE_PROTOCOL, "-o", "{out}"], ["kind", "task"]),
    ("optimize-task-missing", ["optimize", "{missing}.yaml", "-o", "{out}"], ["missing.yaml"]),
    ("optimize-output-is-file", ["optimize", TASK, "-o", "{twin}"], ["twin.h5"]),
    ("optimize-device-cuda", ["optimize", TASK, "-o", "{out}", "--device", "cuda:3"], ["--device"]),
    ("optimize-task-twin-missing", ["optimize", "{task_missing_twin}", "-o", "{out}"],
     ["task_missing_twin.yaml", "data.twin", "nothere.h5"]),
    ("compare-sim-missing", ["compare", "--sim", "{missing}.h5", "--meas", "{raw}", "-o", "{out}"], ["missing.h5"]),
    ("compare-meas-junk", ["compare", "--sim", "{raw}", "--meas", "{binary}", "-o", "{out}"], ["binary.bin"]),
    ("compare-output-is-file", ["compare", "--sim", "{raw}", "--meas", "{raw}", "-o", "{twin}"], ["twin.h5"]),
    ("gadget-port-negative", ["gadget", "--port", "-5"], ["--port"]),
    ("gadget-connections-zero", ["gadget", "--max-connections", "0"], ["--max-connections"]),
    ("demo-matrix-small", ["demo", "--matrix", "2", "-o", "{out}"], ["matrix"]),
    ("no-such-command", ["reconstruct", "{raw}"], ["reconstruct"]),
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real input files, good and broken, in one folder."""
    d = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {"missing": d / "missing", "folder": d / "empty_folder"}
    f["folder"].mkdir()
    twin = builtin("brain", matrix=8)
    f["twin"] = d / "twin.h5"
    twin.save(f["twin"])
    f["seq"] = pc.multi_echo_gre(d / "gre.seq", echoes=1, n=8).path
    f["seq_link"] = d / "link.seq"
    f["seq_link"].symlink_to(f["seq"])
    text = f["seq"].read_text()
    f["seq_v12"] = d / "v12.seq"
    f["seq_v12"].write_text(text.replace("minor 5", "minor 2").split("\n[SIGNATURE]")[0] + "\n")
    f["seq_truncated"] = d / "truncated.seq"
    f["seq_truncated"].write_text(text[: len(text) // 2])
    for name, suffix in (("binary", ".bin"), ("binary_seq", ".seq"), ("binary_json", ".json"),
                         ("binary_yaml", ".yaml")):
        f[name] = d / f"binary{suffix}"
        f[name].write_bytes(b"\xff\xfe\x00\x81binary\x00" * 64)
    f["fake_dat"] = d / "fake.dat"
    f["fake_dat"].write_bytes(bytes(4096))
    f["broken_json"] = d / "broken.json"
    f["broken_json"].write_text('{"repetitions": [')
    protocol = (REPO / "protocols" / "gre.yaml").read_text()
    f["nan_protocol"] = d / "nan.yaml"
    f["nan_protocol"].write_text("\n".join("flip_angle_deg: .nan" if line.startswith("flip_angle_deg") else line
                                           for line in protocol.splitlines()) + "\n")
    f["typo_protocol"] = d / "typo.yaml"
    f["typo_protocol"].write_text(protocol.replace("flip_angle_deg", "flip_angel_deg"))
    f["task_missing_twin"] = d / "task_missing_twin.yaml"
    f["task_missing_twin"].write_text(Path(TASK).read_text().replace("twin: builtin:brain", "twin: nothere.h5"))
    f["list_yaml"] = d / "list.yaml"
    f["list_yaml"].write_text("- 1\n- 2\n")
    raw = RawData(torch.randn(1, 8, 8, dtype=torch.complex64), header=RawHeader(encoded_matrix=(8, 8, 1),
                  recon_matrix=(8, 8, 1)), labels={"kspace_encode_step_1": torch.arange(8)}, center_sample=4)
    f["raw"] = d / "raw.h5"
    write_mrd(raw, f["raw"])
    f["raw_link"] = d / "raw_link.h5"
    f["raw_link"].symlink_to(f["raw"])
    f["raw_hard"] = d / "raw_hard.h5"
    f["raw_hard"].hardlink_to(f["raw"])
    f["bundle_empty"] = d / "bundle_empty"
    f["bundle_empty"].mkdir()
    (f["bundle_empty"] / "recon.json").write_text("{}")
    f["bundle_bad_json"] = d / "bundle_bad_json"
    Recon(ReconConfig()).save(f["bundle_bad_json"])
    (f["bundle_bad_json"] / "recon.json").write_text('{"method": "fft",')
    from mrbridge.sequence.builders import build
    from mrbridge.sequence.protocol import load_protocol

    f["sequence_json"] = d / "sequence.json"
    build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=8).save(f["sequence_json"])
    f["exported_seq"] = d / "exported.seq"
    f["exported_json"] = d / "exported.exported.json"
    f["exported_json"].write_bytes(f["sequence_json"].read_bytes())
    f["object_npz"] = d / "object.npz"
    np.savez(f["object_npz"], PD=np.array([{"a": 1}], dtype=object), T1=np.ones((4, 4)))
    f["maps_npz"] = d / "maps.npz"
    disc = np.hypot(*np.meshgrid(np.arange(8) - 4, np.arange(8) - 4)) < 3
    np.savez(f["maps_npz"], PD=disc * 1.0, T1=np.where(disc, 1000.0, 0.0), T2=np.where(disc, 80.0, 0.0))
    f["empty_npy"] = d / "empty.npy"
    np.save(f["empty_npy"], np.zeros((0, 8)))
    f["t1_npy"] = d / "t1.npy"
    np.save(f["t1_npy"], np.full((8, 8), 1000.0))
    return f


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mrbridge", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.err


@pytest.mark.parametrize(("args", "fragments"), [pytest.param(a, f, id=i) for i, a, f in CASES])
def test_bad_input_is_one_line_exit_2_and_harmless(args: list[str], fragments: list[str], files: dict[str, Path],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "result.h5"
    names = {k: str(v) for k, v in files.items()} | {"out": str(out)}
    argv = [a.format(**names) for a in args]
    inputs = [p for p in files["twin"].parent.rglob("*") if p.is_file() and not p.is_symlink()]
    before = {p: _sha(p) for p in inputs}
    code, stderr = _run(monkeypatch, capsys, argv)
    message = stderr.strip()
    assert code == 2, f"exit {code}: {message}"
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1, message
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert {p: _sha(p) for p in inputs} == before, "an input was modified"
    assert not any(tmp_path.glob("out*")) or not any((tmp_path / "out").iterdir()), "something was written"


def test_real_dat_with_the_wrong_seq_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    dat = REAL.with_suffix(".dat")
    if not dat.exists():
        pytest.skip(f"real scanner data not available: {dat}")
    code, stderr = _run(monkeypatch, capsys, ["recon", str(dat), "--seq", str(REAL_EPI_SEQ),
                                              "-o", str(tmp_path / "img.h5")])
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert dat.name in stderr and REAL_EPI_SEQ.name in stderr
    assert not (tmp_path / "img.h5").exists()


def test_cases_cover_every_command() -> None:
    commands = {args[0] for _, args, _ in CASES}
    assert {"simulate", "recon", "convert", "export", "check", "twin", "calibrate", "optimize", "compare",
            "gadget", "demo"} <= commands
    assert len(CASES) >= 80
