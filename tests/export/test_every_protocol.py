"""`mrbridge export protocols/X.yaml --system prisma -o X.seq` works for every shipped sequence protocol: the file
reads back with pypulseq, passes its timing check, and its k-space is the sequence's (at 16², to stay fast)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.sequence.model import Sequence
from tests.export.common import kspace_error_in_steps, read_back
from tests.helpers import REPO

MATRIX = "16"  # a multiple of the TSE echo train (8) and the IR-GRE lines per inversion (8)
PROTOCOLS = sorted(p for p in (REPO / "protocols").glob("*.yaml")
                   if yaml.safe_load(p.read_text()).get("kind") != "task")


def test_every_sequence_protocol_is_listed() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in PROTOCOLS}
    assert kinds == {"gre", "se", "tse", "bssfp", "irgre", "epi", "radial", "spiral"}


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=[p.stem for p in PROTOCOLS])
def test_export_straight_from_the_protocol(protocol: Path, tmp_path: Path) -> None:
    seq_path = tmp_path / f"{protocol.stem}.seq"
    command = ["export", str(protocol), "--system", "prisma", "-o", str(seq_path)]
    done = CliRunner().invoke(app, [*command, "--matrix", MATRIX])
    if done.exit_code != 0 and "matrix 16" in str(done.exception):  # e.g. too few lines for its ACS: its own
        done = CliRunner().invoke(app, command)
    assert done.exit_code == 0, f"{done.output}{done.exception}"
    assert "safety on prisma" in done.output and "checks passed" in done.output
    back = read_back(seq_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, errors = back.check_timing()
    assert ok, errors
    exported = Sequence.load(seq_path.with_suffix(".exported.json"))
    assert kspace_error_in_steps(back, exported).max() < 1e-3  # the file encodes the sequence's k-space
    assert (tmp_path / "safety.json").is_file()


def test_a_task_or_a_matrix_on_a_built_sequence_is_refused(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["export", str(REPO / "protocols" / "demo_gre_sar.yaml"), "-o",
                                    str(tmp_path / "task.seq")])
    assert done.exit_code != 0 and "'task'" in str(done.exception)
    (tmp_path / "gre.json").write_text("{}")
    done = CliRunner().invoke(app, ["export", str(tmp_path / "gre.json"), "--matrix", "16", "-o",
                                    str(tmp_path / "gre.seq")])
    assert done.exit_code != 0 and "--matrix 16" in str(done.exception)
    assert not list(tmp_path.glob("*.seq"))
