"""The front doors: ``import mrbridge as mb`` (lazy), the types' ``from_*`` classmethods, their doctests, and the
CLI's ``build`` command and ``export`` safety line; the CLI and the package import without torch."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mrbridge as mb
from mrbridge.errors import InputError
from tests.helpers import REPO

PROTOCOL = REPO / "protocols" / "gre.yaml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrbridge", *args], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("module", ["mrbridge", "mrbridge.cli"])
def test_importing_the_package_and_the_cli_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_every_front_door_name_resolves_to_the_library_object() -> None:
    expected = {
        "Sequence": "mrbridge.sequence.model:Sequence", "Twin": "mrbridge.twin.twin:Twin",
        "RawData": "mrbridge.raw.rawdata:RawData", "Image": "mrbridge.recon.image:Image",
        "System": "mrbridge.system:System", "Recon": "mrbridge.recon.pipeline:Recon",
        "simulate": "mrbridge.sim.simulate:simulate", "export": "mrbridge.sequence.export:export_seq",
        "compare": "mrbridge.report.compare:compare", "read_raw": "mrbridge.raw.read:read_raw",
        "build": "mrbridge.sequence.builders:build", "open_twin": "mrbridge.twin.phantoms:open_twin",
    }
    for name, target in expected.items():
        module, attribute = target.split(":")
        assert getattr(mb, name) is getattr(importlib.import_module(module), attribute), name
    assert set(mb.__all__) == {"__version__", *mb._EXPORTS}
    for name in mb.__all__:
        assert getattr(mb, name) is not None, name
        assert name in dir(mb)
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = mb.no_such_thing


def test_sequence_from_file_dispatches_on_the_suffix(tmp_path: Path) -> None:
    built = mb.build(mb.load_protocol(PROTOCOL), matrix=16)
    from_protocol = mb.Sequence.from_file(PROTOCOL, matrix=16)
    assert from_protocol.to_dict() == built.to_dict()
    built.save(tmp_path / "gre.json")
    assert mb.Sequence.from_file(tmp_path / "gre.json").to_dict() == built.to_dict()

    result = mb.export(built, mb.System.load("generic3t"))
    mb.write_pulseq(result.pulseq, tmp_path / "gre.seq")
    imported = mb.Sequence.from_file(tmp_path / "gre.seq")
    assert imported.adc_count == built.adc_count == 16 * 16
    k_imported = imported.kspace().reshape(16, 16, 3)[..., :2]
    k_built = built.kspace().reshape(16, 16, 3)[..., :2]
    assert torch.allclose(k_imported, k_built, atol=1e-3 * float(k_built.abs().max()))

    with pytest.raises(InputError, match=r"gre\.json: matrix = 32 applies to protocols"):
        mb.Sequence.from_file(tmp_path / "gre.json", matrix=32)
    (tmp_path / "gre.txt").write_text("x")
    with pytest.raises(InputError, match=r"unknown sequence file type '\.txt'"):
        mb.Sequence.from_file(tmp_path / "gre.txt")


def test_twin_and_rawdata_front_doors_round_trip(tmp_path: Path) -> None:
    twin = mb.Twin.builtin("builtin:spin-random", matrix=16, coils=2, seed=3)
    reference = mb.builtin("spin-random", matrix=16, coils=2, seed=3)
    assert torch.equal(twin.t1, reference.t1) and twin.coils == 2
    twin.save(tmp_path / "twin.h5")
    assert torch.equal(mb.Twin.from_file(tmp_path / "twin.h5").t2, twin.t2)

    raw = mb.simulate(mb.Sequence.from_protocol(PROTOCOL, matrix=16), twin)
    mb.write_mrd(raw, tmp_path / "raw.h5")
    read = mb.RawData.from_file(tmp_path / "raw.h5")
    assert torch.allclose(read.kdata, raw.kdata)
    with pytest.raises(InputError, match=r"needs the Pulseq \.seq"):
        (tmp_path / "meas.dat").write_bytes(b"\0" * 16)
        mb.RawData.from_file(tmp_path / "meas.dat")


#: every module whose docstrings hold an example (>>>)
EXAMPLES = sorted(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for path in (REPO / "mrbridge").rglob("*.py") if ">>> " in path.read_text())

#: modules whose only examples need input files, a GPU-sized run or a server (marked ``doctest: +SKIP``)
SKIPPED_EXAMPLES = {"mrbridge.gadget.server", "mrbridge.optimize.trainer", "mrbridge.twin.calibrate"}


@pytest.mark.parametrize("module", EXAMPLES)
def test_docstring_examples_run(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the examples name protocols/… from the repository root
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, result
    assert result.attempted > 0 or module in SKIPPED_EXAMPLES  # what needs files or a server is skipped


def test_build_writes_the_sequence_json_of_the_protocol(tmp_path: Path) -> None:
    output = tmp_path / "gre.json"
    done = run_cli("build", "protocols/gre.yaml", "-o", str(output), "--matrix", "16")
    assert done.returncode == 0, done.stderr
    assert f"wrote {output}" in done.stdout and "16 readouts" in done.stdout
    assert json.loads(output.read_text()) == mb.Sequence.from_protocol(PROTOCOL, matrix=16).to_dict()


@pytest.mark.parametrize(("args", "fragment"), [
    (["protocols/gre.yaml", "-o", "protocols/gre.yaml"], "would overwrite the input PROTOCOL"),
    (["protocols/gre.yaml", "-o", "{tmp}/gre.seq"], "expected a name ending in .json"),
    (["protocols/spin_flip_angle.yaml", "-o", "{tmp}/x.json"], "field 'kind' = 'task'"),
    (["protocols/gre.yaml", "-o", "{tmp}/x.json", "--matrix", "2"], "--matrix 2"),
])
def test_build_refuses_mistakes_in_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    done = run_cli("build", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and fragment in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())


def test_export_of_a_protocol_prints_a_one_line_safety_summary(tmp_path: Path) -> None:
    done = run_cli("--quiet", "export", "protocols/gre.yaml", "--system", "prisma", "-o", str(tmp_path / "gre.seq"))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("safety on")]
    assert len(lines) == 1, done.stdout
    report = json.loads((tmp_path / "safety.json").read_text())
    checks = report["checks"]
    assert lines[0].startswith(f"safety on prisma: {len(checks)}/{len(checks)} checks passed;")
    peak = next(c for c in checks if c["name"] == "peak B1")
    assert f"peak B1 {peak['value']:.3g} / 20 µT" in lines[0]
    assert "PNS " in lines[0] and "SAR" in lines[0]
