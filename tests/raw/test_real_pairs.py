"""Every real twix + .seq pair in ../shared/data reconstructs like an independent reference (twix_reference.py),
and what the .seq leaves unsaid (RF use, FOV, ADC segmentation) is inferred, reported, and right."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import twixtools
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.raw.read import read_raw
from mrbridge.raw.twix import read_twix
from mrbridge.recon.pipeline import Recon
from tests.helpers import shared_data
from tests.raw.twix_reference import adjoint_image, correlation, seq_kspace, twix_scans

GRE = "11_from_GRE_to_EPI__01_GRE"
TRIO_GRE = "02_basic_gradient_echo__07_GRE_xSpoil_yRephase_RFspoilADC_dummy"
MULTI_ECHO = "11_from_GRE_to_EPI__02_GRE_3echoes"
SPIN_ECHO = "mr-physics-with-pulseq/MID00243__se_2D_sinc_img"


def _pair(name: str) -> tuple[Path, Path]:
    return shared_data(name + ".dat"), shared_data(name + ".seq")


def _reference(dat: Path, seq_path: Path) -> list[np.ndarray]:
    """One RSS image per echo of the excitation, from twixtools + pypulseq + numpy only."""
    data = twix_scans(dat)
    k, t_adc, t_exc, seq = seq_kspace(seq_path)
    n_s = data.shape[2]
    k = k[:2].T.reshape(-1, n_s, 2)
    fov = tuple(float(v) for v in np.atleast_1d(seq.definitions["FOV"])[:2])
    excitation = np.searchsorted(t_exc, t_adc.reshape(-1, n_s)[:, 0]) - 1
    echo = np.array([np.count_nonzero(excitation[:i] == excitation[i]) for i in range(len(excitation))])
    images = []
    for e in range(echo.max() + 1):
        mine = echo == e
        n = len(np.unique(np.round(k[mine, n_s // 2, 1] * fov[1])))
        images.append(adjoint_image(data[:, mine], k[mine], fov, (n, n)))  # type: ignore[arg-type]
    return images


@pytest.mark.slow
@pytest.mark.parametrize("name", [GRE, TRIO_GRE, MULTI_ECHO, SPIN_ECHO])
def test_real_pair_reconstructs_like_the_independent_reference(name: str) -> None:
    dat, seq = _pair(name)
    reference = _reference(dat, seq)
    with torch.no_grad():
        image = Recon()(read_raw(dat, seq)).data.numpy()  # the `recon` defaults: (reps, contrasts, z, y, x)
    assert image.shape[1] == len(reference)
    for echo, ref in enumerate(reference):
        assert image[0, echo, 0].shape == ref.shape
        assert correlation(image[0, echo, 0], ref) >= 0.99, f"{name} echo {echo}"


def test_pulseq_14_spin_echo_infers_refocusing_and_encodes_every_line(tmp_path: Path) -> None:
    """No RF use in the file: 180° pulses refocus (k → −k), so k_y survives and the lines fill 64 × 64."""
    dat, seq = _pair(SPIN_ECHO)
    raw = read_twix(dat, seq)
    assert raw.provenance["rf_use_inferred"].startswith("64 excitation, 64 refocusing")
    assert raw.header.encoded_matrix == (64, 64, 1)
    lines = raw.labels["kspace_encode_step_1"]
    assert sorted(lines.tolist()) == list(range(64))  # every line once: the 180° did not erase k_y
    result = CliRunner().invoke(app, ["convert", str(dat), "--seq", str(seq), "-o", str(tmp_path / "se.h5")])
    assert result.exit_code == 0, result.output
    assert "64 excitation, 64 refocusing" in result.output


def test_adc_split_by_the_scanner_is_rejoined(tmp_path: Path) -> None:
    """The Prisma GRE rewritten (twixtools) with each 256-sample readout split in two 128-sample scans, as a
    scanner splits ADCs longer than its segment length: the reader rejoins them into the .seq's ADC events."""
    dat, seq = _pair(GRE)
    scan = twixtools.read_twix(str(dat), verbose=False, parse_pmu=False, parse_geometry=False, keep_acqend=True)[-1]
    split = []
    for mdb in scan["mdb"]:
        if not mdb.is_image_scan():
            split.append(mdb if mdb.is_flag_set("ACQEND") else mdb.convert_to_local())
            continue
        for half in (slice(0, 128), slice(128, 256)):
            part = mdb.convert_to_local()
            part.data = np.ascontiguousarray(mdb.data[:, half])
            split.append(part)
    out = tmp_path / "split.dat"
    twixtools.write_twix([{"hdr_str": scan["hdr_str"], "raidfile_hdr": scan["raidfile_hdr"], "mdb": split}], str(out))
    raw = read_twix(out, seq)
    assert raw.provenance["adc_segments_rejoined"] == "256"
    assert torch.equal(raw.kdata, read_twix(dat, seq).kdata)


def test_seq_without_fov_takes_it_from_the_kspace_step(tmp_path: Path) -> None:
    dat, seq = _pair(GRE)
    text = seq.read_text()
    stripped = re.sub(r"^FOV .*\n", "", text.split("\n[SIGNATURE]")[0], flags=re.MULTILINE)
    no_fov = tmp_path / "gre_no_fov.seq"
    no_fov.write_text(stripped + "\n")
    raw = read_twix(dat, no_fov)
    assert "k-space step" in raw.provenance["fov_source"]
    np.testing.assert_allclose(raw.header.encoded_fov[:2], (0.256, 0.256), rtol=1e-4)
    assert raw.header.encoded_fov[2] == pytest.approx(0.003, rel=0.05)  # the 3-mm slice, from the RF bandwidth
    with torch.no_grad():
        np.testing.assert_allclose(Recon()(raw).data.numpy(), Recon()(read_twix(dat, seq)).data.numpy(), rtol=1e-4,
                                   atol=1e-6)
