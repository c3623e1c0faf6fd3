"""compare(): a simulated pair with a known B1 perturbation, and real scanner data against its simulation."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.read import read_raw
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.report.compare import CompareResult, compare
from mrbridge.report.figures import kspace_centre, ratio_map
from mrbridge.sequence.builders import build
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sequence.safety import SafetyCheck, SafetyReport
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO, shared_data
from tests.report.common import chromium_dom, images_loaded

MATRIX = 16
FLIP_DEG = 90.0


@pytest.fixture(scope="module")
def b1_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CompareResult]:
    """GRE with full recovery (TR 20 s ≫ T1, no dummies) on builtin:brain; "measured" = the twin with B1 × 0.9.

    Every readout then sees M+ ∝ sin(α·B1) after one pulse, so meas / sim = sin(0.9·α·B1) / sin(α·B1) voxel by
    voxel: 0.96 … 1.04 across the phantom's B1 = 0.85 … 1.2 at α = 90°.
    """
    folder = tmp_path_factory.mktemp("b1")
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(
        update={"dummies": 0, "tr_ms": 20000.0, "flip_angle_deg": FLIP_DEG})
    seq = build(protocol, matrix=MATRIX)
    twin = builtin("brain", matrix=MATRIX)
    write_mrd(simulate(seq, twin), folder / "sim.h5")
    write_mrd(simulate(seq, replace(twin, b1=0.9 * twin.b1)), folder / "meas.h5")
    seq.save(folder / "sequence.json")
    result = compare(folder / "sim.h5", folder / "meas.h5", folder / "report", seq_path=folder / "sequence.json",
                     twin_path="builtin:brain")
    return folder, result


def expected_ratio() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expected meas/sim ratio (y, x), interior tissue mask (y, x), labels (y, x)) of the B1 pair's twin."""
    twin = builtin("brain", matrix=MATRIX)
    alpha = math.radians(FLIP_DEG) * twin.b1[0].double()
    ratio = torch.sin(0.9 * alpha) / torch.sin(alpha)
    tissue = twin.pd[0] > 0
    interior = tissue.clone()
    for axis in (0, 1):  # erode by one voxel: edges mix in neighbours through the PSF
        for step in (1, -1):
            interior &= torch.roll(tissue, step, axis)
    assert twin.labels is not None
    return ratio, interior, twin.labels[0]


def test_ratio_map_shows_the_b1_perturbation(b1_pair: tuple[Path, CompareResult]) -> None:
    _, result = b1_pair
    expected, interior, _ = expected_ratio()
    sim = result.sim_image.data.abs()[0, 0, 0].double()
    meas = result.meas_image.data.abs()[0, 0, 0].double()
    ratio = meas / sim
    assert float((ratio - expected)[interior].abs().max()) < 0.015
    # the drawn ratio map is meas / (s·sim): times the fitted scale it is the same map
    drawn = torch.from_numpy(ratio_map((result.metrics.scale * sim).numpy(), meas.numpy(), interior.numpy()))
    assert torch.allclose(drawn[interior] * result.metrics.scale, ratio[interior], rtol=1e-6)
    # it follows B1 across the phantom (not just a global 0.9)
    spread = expected[interior].max() - expected[interior].min()
    assert float(spread) > 0.06
    corr = torch.corrcoef(torch.stack([ratio[interior], expected[interior]]))[0, 1]
    assert float(corr) > 0.98


def test_roi_statistics_and_numbers(b1_pair: tuple[Path, CompareResult]) -> None:
    folder, result = b1_pair
    expected, _, labels = expected_ratio()
    m = result.metrics
    assert 0.9 < m.scale < 1.1
    names = {r.name for r in m.roi}
    assert {"grey_matter", "white_matter", "csf"} <= names
    for roi in m.roi:
        sel = labels == roi.label
        want = float(expected[sel].mean())  # ratio of means ≈ mean ratio where B1 varies slowly
        assert abs(roi.ratio * m.scale - want) < 0.02, (roi.name, roi.ratio * m.scale, want)
    assert m.dc_residual_sim is not None and m.dc_residual_sim < 1e-5  # inverse FFT of one coil: exact
    assert m.dc_residual_meas is not None and m.dc_residual_meas < 1e-5
    assert 0.0 < m.nrmse < 0.1 and 0.9 < m.ssim < 1.0
    record = json.loads((folder / "report" / "metrics.json").read_text())
    assert record["metrics"]["scale"] == pytest.approx(m.scale)
    assert len(record["inputs"]) == 3 and all(len(f["sha256"]) == 64 for f in record["inputs"])
    assert record["provenance"]["simulated"]["engine"] == "graph" and record["provenance"]["simulated"]["seed"] == "0"
    assert record["safety"] is None
    assert {p.name for p in result.figures} == {"images.png", "profiles.png", "kspace_centre.png", "kspace.png",
                                                  "trajectory.png", "sequence.png"}  # no .seq: no waveforms.png


def test_identical_inputs_compare_perfectly(b1_pair: tuple[Path, CompareResult], tmp_path: Path) -> None:
    folder, _ = b1_pair
    result = compare(folder / "sim.h5", folder / "sim.h5", tmp_path / "same")
    m = result.metrics
    assert m.scale == pytest.approx(1.0) and m.nrmse == pytest.approx(0.0, abs=1e-6)
    assert m.ssim == pytest.approx(1.0) and math.isinf(m.psnr_db)
    assert json.loads((tmp_path / "same" / "metrics.json").read_text())["metrics"]["psnr_db"] is None


def test_bundle_gives_recon_sequence_and_safety(b1_pair: tuple[Path, CompareResult], tmp_path: Path) -> None:
    folder, _ = b1_pair
    bundle = tmp_path / "bundle"
    Recon(ReconConfig(coil_combine="sensitivity")).save(bundle)
    shutil.copy(folder / "sequence.json", bundle / "sequence.json")
    report = SafetyReport(source="sequence.seq", system="generic3t", coil="head", patient_kg=70.0, duration_s=0.5,
                          checks=[SafetyCheck(name="peak B1", value=25.0, limit=20.0, unit="µT", passed=False)])
    report.save(bundle / "safety.json")
    result = compare(folder / "sim.h5", folder / "meas.h5", tmp_path / "out", bundle=bundle)
    assert result.sim_image.data.is_complex()  # the bundle's recon ran, on both inputs
    assert result.safety == report and (tmp_path / "out" / "sequence.png").is_file()
    record = json.loads(result.metrics_json.read_text())
    assert record["recon"]["coil_combine"] == "sensitivity"
    assert {f["role"] for f in record["inputs"]} >= {"bundle recon.json", "bundle safety.json"}
    page = result.index.read_text()
    assert "LIMITS EXCEEDED" in page and "peak B1" in page


def test_page_renders_in_chromium(b1_pair: tuple[Path, CompareResult], tmp_path: Path) -> None:
    folder, result = b1_pair
    dom = chromium_dom(result.index)
    assert images_loaded(dom) == (len(result.figures), len(result.figures))
    assert f"{result.metrics.scale:.6g}" in dom and "white_matter" in dom and "No safety summary" in dom
    broken = tmp_path / "broken"
    shutil.copytree(folder / "report", broken)
    (broken / "profiles.png").unlink()
    assert images_loaded(chromium_dom(broken / "index.html")) == (len(result.figures) - 1, len(result.figures))


def test_inputs_of_different_shape_are_refused(b1_pair: tuple[Path, CompareResult], tmp_path: Path) -> None:
    folder, _ = b1_pair
    # other matrix AND other FOV (same FOV only resamples: tests/report/test_compare_warnings.py)
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(update={"dummies": 0, "fov_mm": 150.0})
    write_mrd(simulate(build(protocol, matrix=8), builtin("brain", matrix=8)), tmp_path / "small.h5")
    with pytest.raises(InputError, match="no common grid"):
        compare(folder / "sim.h5", tmp_path / "small.h5", tmp_path / "out")
    (tmp_path / "meas.dat").write_bytes(b"twix")
    with pytest.raises(InputError, match=r"needs the Pulseq \.seq"):
        compare(folder / "sim.h5", tmp_path / "meas.dat", tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()


@pytest.mark.slow
def test_real_scanner_data_against_its_simulation(tmp_path: Path) -> None:
    """3T Prisma GRE (twix + .seq) vs the same .seq simulated on builtin:brain: the report renders."""
    dat = shared_data("11_from_GRE_to_EPI__01_GRE.dat")
    seq_path = dat.with_suffix(".seq")
    sim = simulate(import_seq(seq_path), builtin("brain", matrix=64))
    # this .seq sets no LIN labels: take the ones read_twix derives from its trajectory (import_seq does not)
    derived = read_seq_readouts(seq_path).labels
    sim.labels = {name: torch.from_numpy(derived[name]).to(torch.int64) for name in sim.labels}
    write_mrd(sim, tmp_path / "sim.h5")
    result = compare(tmp_path / "sim.h5", dat, tmp_path / "report", seq_path=seq_path,
                     twin_path="builtin:brain", system="prisma")
    assert result.meas_image.data.shape[-2:] == (256, 256)
    assert result.safety is not None and result.safety.checks
    assert result.metrics.dc_residual_meas is not None and result.metrics.dc_residual_meas < 1e-3
    dom = chromium_dom(result.index)
    assert images_loaded(dom) == (len(result.figures), len(result.figures)) and len(result.figures) == 7
    assert (tmp_path / "report" / "waveforms.png").is_file()  # the .seq's real waveforms
    assert "peak B1" in dom and f"{result.metrics.scale:.6g}" in dom and "prisma" in dom.lower()
    # both k-space-centre curves peak at the centre line, at the same time of the scan
    t_sim, s_sim = kspace_centre(read_raw(tmp_path / "sim.h5"))
    t_meas, s_meas = kspace_centre(read_raw(dat, seq_path))
    assert abs(t_sim[s_sim.argmax()] - t_meas[s_meas.argmax()]) < 0.05
    record = json.loads(result.metrics_json.read_text())
    assert any(f["role"] == "measured raw data" and f["path"].endswith(".dat") for f in record["inputs"])
