"""Calibration (ACS) lines in the ``.seq``: the exporter writes Pulseq's REF / IMA labels on every readout, pypulseq
reads them back per ADC, both of mrbridge's readers turn them into the ISMRMRD flags the sequence was built with,
and ``simulate --seq`` + ``recon --method sense`` unfold the file's accelerated acquisition."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.raw.read import read_raw
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.flag_labels import CALIBRATION, CALIBRATION_AND_IMAGING
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import load_protocol, with_matrix
from mrbridge.sequence.undersampling import acquired_lines
from mrbridge.system import SYSTEMS_DIR, System
from tests.export.common import read_back
from tests.helpers import REPO, nrmse


def _flags(seq: Sequence) -> list[int]:
    return [lab.flags for rep in seq.repetitions for lab in rep.readouts]


def _exported(seq: Sequence, path: Path) -> dict[str, np.ndarray]:
    """Export to ``path`` (Prisma), check pypulseq's timing, and return pypulseq's label values per ADC."""
    result = export_seq(seq, System.load(SYSTEMS_DIR / "prisma.yaml"), path=path)
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    back = read_back(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, errors = back.check_timing()
    assert ok, errors[:3]
    return {k: np.asarray(v) for k, v in back.evaluate_labels(evolution="adc").items()}


@pytest.mark.parametrize("name", ["gre_r4", "tse_r4"])
def test_acs_lines_of_an_accelerated_protocol_are_ref_and_ima(name: str, tmp_path: Path) -> None:
    protocol = with_matrix(load_protocol(REPO / "protocols" / f"{name}.yaml"), 32)  # 4 ACS lines
    seq = build(protocol)
    lines, acs = acquired_lines(32, protocol.undersampling)  # type: ignore[arg-type, union-attr]
    labels = _exported(seq, tmp_path / "r4.seq")
    played = [lab.kspace_encode_step_1 for rep in seq.repetitions for lab in rep.readouts]  # TSE: the train order
    assert labels["LIN"].tolist() == played and sorted(played) == lines
    expected = [int(line in acs) for line in played]
    assert sum(expected) == 4 and labels["REF"].tolist() == expected and labels["IMA"].tolist() == expected
    built = _flags(seq)
    assert built == [CALIBRATION_AND_IMAGING if e else 0 for e in expected]
    assert read_seq_readouts(tmp_path / "r4.seq").flags.tolist() == built
    assert _flags(import_seq(tmp_path / "r4.seq")) == built


def test_a_calibration_only_line_is_ref_without_ima_and_labels_do_not_leak(tmp_path: Path) -> None:
    seq = build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=16)
    roles = [0] * 16
    roles[7], roles[8] = CALIBRATION, CALIBRATION_AND_IMAGING  # followed by an imaging line: REF must go back to 0
    readout = iter(roles)
    for rep in seq.repetitions:
        rep.readouts = [lab.model_copy(update={"flags": next(readout)}) for lab in rep.readouts]
    labels = _exported(seq, tmp_path / "calib.seq")
    assert labels["REF"].tolist() == [int(i in (7, 8)) for i in range(16)]
    assert labels["IMA"].tolist() == [int(i == 8) for i in range(16)]
    assert read_seq_readouts(tmp_path / "calib.seq").flags.tolist() == roles
    assert _flags(import_seq(tmp_path / "calib.seq")) == roles


def test_a_fully_sampled_export_says_no_line_is_a_calibration_line(tmp_path: Path) -> None:
    labels = _exported(build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=16), tmp_path / "gre.seq")
    assert not labels["REF"].any() and not labels["IMA"].any()
    assert not read_seq_readouts(tmp_path / "gre.seq").flags.any()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "tolerance"), [("gre_r4", 0.03), ("tse_r4", 0.1)])  # TSE: + the file's crushers
def test_the_exported_protocol_simulates_and_unfolds_with_sense(name: str, tolerance: float, tmp_path: Path) -> None:
    protocol = REPO / "protocols" / f"{name}.yaml"
    seq_path, raw_path, direct = tmp_path / "r4.seq", tmp_path / "raw.h5", tmp_path / "direct.h5"
    runner = CliRunner()
    for command in (["export", str(protocol), "--system", "prisma", "-o", str(seq_path)],
                    ["simulate", "--seq", str(seq_path), "--twin", "builtin:brain", "--coils", "8", "-o",
                     str(raw_path)],
                    ["simulate", "--protocol", str(protocol), "--twin", "builtin:brain", "--coils", "8", "-o",
                     str(direct)],
                    ["recon", str(raw_path), "--method", "sense", "-o", str(tmp_path / "sense.h5")]):
        done = runner.invoke(app, command)
        assert done.exit_code == 0, f"{command[0]}: {done.output}{done.exception}"
    raw = read_raw(raw_path)
    assert raw.flags is not None and raw.flags.tolist() == _flags(build(load_protocol(protocol)))
    sense = Recon(ReconConfig(method="sense"))(raw).data.abs()
    reference = Recon(ReconConfig(method="sense"))(read_raw(direct)).data.abs()  # the built sequence, simulated
    zero_filled = Recon(ReconConfig(method="fft"))(raw).data.abs()
    scale = float((reference * zero_filled).sum() / zero_filled.square().sum())
    assert nrmse(sense, reference) < tolerance < 0.2 < nrmse(scale * zero_filled, reference)
