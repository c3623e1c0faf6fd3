"""compare() on comparisons that mean little: it warns (page, metrics.json, result, CLI), resamples or refuses.

Every case is written as real ISMRMRD files (``write_mrd``) and read back by ``compare`` as a user's files are.
"""

from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import ismrmrd
import pytest
import torch
import torch.nn.functional as F

from mrbridge import cli
from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.raw.read import read_raw
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.recon.pipeline import Recon
from mrbridge.report.compare import CompareResult, compare
from mrbridge.report.grid import resample_kspace
from mrbridge.report.validity import THRESHOLDS, encoding_warnings, image_warnings
from mrbridge.sequence.builders import build
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin
from tests.helpers import REPO, shared_data

MATRIX = 16
REAL = "pulseq-tutorials/02_basic_gradient_echo__07_GRE_xSpoil_yRephase_RFspoilADC_dummy"


def gre(matrix: int = MATRIX, **update: float) -> Sequence:
    """The GRE protocol without dummies (fast), FOV 200 mm unless ``fov_mm`` is given."""
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(update={"dummies": 0, **update})
    return build(protocol, matrix=matrix)


def disc_twin(centre_px: tuple[float, float], radius_px: float, matrix: int = MATRIX) -> Twin:
    """A water disc (PD 1, T1 1 s, T2 80 ms) at ``centre_px`` (x, y voxels from the grid centre), FOV 200 mm."""
    idx = torch.arange(matrix, dtype=torch.float32) - matrix // 2
    y, x = torch.meshgrid(idx, idx, indexing="ij")
    pd = (((x - centre_px[0]) ** 2 + (y - centre_px[1]) ** 2) <= radius_px**2).float()
    return Twin.from_maps(pd, torch.full_like(pd, 1.0), torch.full_like(pd, 0.08), fov=(0.2, 0.2, 0.005))


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``mrbridge ARGS`` through the console entry point, in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["mrbridge", "--quiet", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def page_warnings(result: CompareResult) -> str:
    """The warnings block of the page (asserting it heads the page: before the numbers)."""
    page = result.index.read_text()
    start, numbers = page.find('id="warnings"'), page.find('id="metrics"')
    assert 0 <= start < numbers, "no warnings block above the numbers"
    return page[start:page.index("</div>", start)]


def recorded(result: CompareResult) -> dict:
    return json.loads(result.metrics_json.read_text())


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sim.h5 (builtin:brain) and meas.h5 (the same twin with B1 × 0.9): one object, a small real difference."""
    folder = tmp_path_factory.mktemp("brain")
    twin, seq = builtin("brain", matrix=MATRIX), gre()
    write_mrd(simulate(seq, twin), folder / "sim.h5")
    write_mrd(simulate(seq, replace(twin, b1=0.9 * twin.b1)), folder / "meas.h5")
    return folder


def test_a_sound_comparison_has_no_warnings(brain: Path, tmp_path: Path) -> None:
    result = compare(brain / "sim.h5", brain / "meas.h5", tmp_path / "report", twin_path="builtin:brain")
    assert result.warnings == [] and result.notes == []
    m = result.metrics
    assert m.dice is not None and m.dice > 0.9 and m.correlation is not None and m.correlation > 0.95
    record = recorded(result)
    assert record["warnings"] == [] and record["roi_meaningful"] is True and record["metrics"]["dice"] == m.dice
    page = result.index.read_text()
    assert 'id="warnings"' not in page and 'id="roi-not-meaningful"' not in page and "white_matter" in page


def test_degenerate_labels_warn_everywhere(brain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Every readout at kspace_encode_step_1 = 0, as a .seq without line labels simulates: a stripe image."""
    raw = read_raw(brain / "meas.h5")
    raw.labels["kspace_encode_step_1"] = torch.zeros(raw.readouts, dtype=torch.int64)
    write_mrd(raw, tmp_path / "stripes.h5")
    result = compare(brain / "sim.h5", tmp_path / "stripes.h5", tmp_path / "report", twin_path="builtin:brain")
    text = "\n".join(result.warnings)
    assert f"all {MATRIX} imaging readouts are at kspace_encode_step_1 = 0" in text
    assert "measured image is a stripe pattern" in text and "along y" in text
    assert "tissue ratios of builtin:brain are not meaningful" in text
    assert not any(w.startswith("simulated") for w in result.warnings)  # the sound side is not blamed
    record = recorded(result)
    assert record["warnings"] == result.warnings and record["roi_meaningful"] is False
    block = page_warnings(result)
    assert all(html.escape(w) in block for w in result.warnings)
    assert 'id="roi-not-meaningful"' in result.index.read_text()
    # the command line prints each warning after the metrics line, exit 0; --strict makes warnings fail
    code, stdout, stderr = run_cli(monkeypatch, capsys, "compare", "--sim", str(brain / "sim.h5"), "--meas",
                                   str(tmp_path / "stripes.h5"), "-o", str(tmp_path / "cli"), "--twin", "builtin:brain")
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("scale ") and lines[-1].startswith("wrote ")
    assert [line.removeprefix("warning: ") for line in lines[1:-1]] == result.warnings
    code, stdout, _ = run_cli(monkeypatch, capsys, "compare", "--sim", str(brain / "sim.h5"), "--meas",
                              str(tmp_path / "stripes.h5"), "-o", str(tmp_path / "strict"), "--strict")
    assert code == 1 and "warning: " in stdout


def test_objects_that_do_not_overlap_warn(tmp_path: Path) -> None:
    """One disc simulated left of centre, the "measured" disc right of it: the images share no object voxel."""
    seq = gre()
    write_mrd(simulate(seq, disc_twin((-4, 0), 2.5)), tmp_path / "sim.h5")
    write_mrd(simulate(seq, disc_twin((4, 0), 2.5)), tmp_path / "meas.h5")
    result = compare(tmp_path / "sim.h5", tmp_path / "meas.h5", tmp_path / "report")
    assert result.metrics.dice is not None and result.metrics.dice < 0.2
    assert len(result.warnings) == 1 and "barely overlap" in result.warnings[0]
    assert recorded(result)["warnings"] == result.warnings
    assert "barely overlap" in page_warnings(result)
    # half-overlapping discs (shift of one radius) stay above the Dice threshold: the check is not a hair
    # trigger; their magnitudes, though, do not correlate, and that is said (once, not as an overlap)
    write_mrd(simulate(seq, disc_twin((-1, 0), 3.5)), tmp_path / "near.h5")
    write_mrd(simulate(seq, disc_twin((1, 0), 3.5)), tmp_path / "near_meas.h5")
    near = compare(tmp_path / "near.h5", tmp_path / "near_meas.h5", tmp_path / "near")
    assert near.metrics.dice is not None and near.metrics.dice > THRESHOLDS.min_dice
    assert len(near.warnings) == 1 and "do not look alike" in near.warnings[0]


def test_same_fov_other_matrix_is_resampled_and_reported(tmp_path: Path) -> None:
    """One twin imaged at 16² and at 32² (same FOV, full recovery: no history differs): compared at 16², the
    resampling said everywhere, and the 32² image cropped in k-space matches the 16² acquisition."""
    twin = builtin("brain", matrix=32)
    write_mrd(simulate(gre(16, tr_ms=20000.0, flip_angle_deg=90.0), twin), tmp_path / "sim16.h5")
    write_mrd(simulate(gre(32, tr_ms=20000.0, flip_angle_deg=90.0), twin), tmp_path / "meas32.h5")
    result = compare(tmp_path / "sim16.h5", tmp_path / "meas32.h5", tmp_path / "report")
    assert tuple(result.meas_image.data.shape[-2:]) == (16, 16)
    assert result.meas_image.fov == pytest.approx(result.sim_image.fov)
    assert len(result.notes) == 1 and "measured image resampled from 32×32 to 16×16" in result.notes[0]
    assert result.warnings == []  # a factor 2 is not "very different"
    m = result.metrics
    assert m.correlation is not None and m.correlation > 0.98 and m.nrmse < 0.1
    record = recorded(result)
    assert record["notes"] == result.notes and record["images"]["resampled_from"] == {"measured": [1, 1, 1, 32, 32]}
    assert record["images"]["shape"] == [1, 1, 1, 16, 16]
    assert 'id="notes"' in result.index.read_text() and 'id="warnings"' not in result.index.read_text()
    # the other way round the simulation is resampled; a factor 4 is resampled too, with a warning
    swapped = compare(tmp_path / "meas32.h5", tmp_path / "sim16.h5", tmp_path / "swapped")
    assert "simulated image resampled from 32×32" in swapped.notes[0]
    write_mrd(simulate(gre(64, tr_ms=20000.0, flip_angle_deg=90.0), twin), tmp_path / "meas64.h5")
    far = compare(tmp_path / "sim16.h5", tmp_path / "meas64.h5", tmp_path / "far")
    assert "resampled from 64×64" in far.notes[0] and any("very different matrices" in w for w in far.warnings)
    # same matrix over another FOV: voxel for voxel, but not place for place
    write_mrd(simulate(gre(16, tr_ms=20000.0, flip_angle_deg=90.0, fov_mm=160.0), twin), tmp_path / "fov160.h5")
    other = compare(tmp_path / "sim16.h5", tmp_path / "fov160.h5", tmp_path / "fov")
    assert other.notes == [] and any("different fields of view" in w and "20 % apart" in w for w in other.warnings)


def test_resampling_is_a_centred_kspace_crop() -> None:
    """A 32² image band-limited to the central 16² of k-space resamples to exactly the 16² image of that k-space."""
    torch.manual_seed(0)
    k16 = torch.randn(2, 16, 16, dtype=torch.complex128)
    k32 = torch.zeros(2, 32, 32, dtype=torch.complex128)
    k32[:, 8:24, 8:24] = k16

    def image(k: torch.Tensor) -> torch.Tensor:  # the recon's centred inverse FFT, mean-preserving
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))), dim=(-2, -1))

    x16, x32 = image(k16), image(k32) * 4  # ×(32/16)²: the same object intensity on the finer grid
    assert torch.allclose(resample_kspace(x32, (16, 16)), x16, atol=1e-12)
    assert torch.allclose(resample_kspace(x16, (32, 32)), x32, atol=1e-12)  # zero-padding is its inverse
    flat = torch.full((1, 12, 10), 3.0)
    assert torch.allclose(resample_kspace(flat, (6, 5)), torch.full((1, 6, 5), 3.0), atol=1e-5)


def test_incompatible_shapes_are_one_line_errors(brain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Other matrix AND other FOV, or other contrasts/repetitions: no common grid, one line naming both shapes."""
    write_mrd(simulate(gre(32, fov_mm=150.0), builtin("brain", matrix=32)), tmp_path / "other_fov.h5")
    with pytest.raises(InputError) as info:
        compare(brain / "sim.h5", tmp_path / "other_fov.h5", tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "16×16 over FOV 200×200×5 mm" in message and "32×32 over FOV 150×150×5 mm" in message
    assert "field of view" in message
    raw = read_raw(brain / "meas.h5")
    raw.labels["repetition"] = torch.arange(raw.readouts) % 2  # two repetitions of 8 lines each
    write_mrd(raw, tmp_path / "two_reps.h5")
    with pytest.raises(InputError, match=r"\(2, 1, 1\) 16×16 .*repetitions, contrasts or slices differ"):
        compare(brain / "sim.h5", tmp_path / "two_reps.h5", tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()
    code, _, stderr = run_cli(monkeypatch, capsys, "compare", "--sim", str(brain / "sim.h5"), "--meas",
                              str(tmp_path / "other_fov.h5"), "-o", str(tmp_path / "cli"))
    assert code == 2 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and "no common grid" in stderr


def test_image_checks_see_stripes_and_single_lines() -> None:
    """Physics of the image checks: a noisy real-looking object passes; a stripe or a single line does not."""
    torch.manual_seed(1)
    object_ = disc_twin((0, 0), 5, matrix=32).pd[None] + 0.02 * torch.randn(1, 1, 32, 32)
    assert image_warnings(object_.abs(), "measured") == []
    stripes = torch.rand(1, 1, 1, 32).expand(1, 1, 32, 32)  # constant along y
    assert "along y" in image_warnings(stripes, "measured")[0]
    line = torch.zeros(1, 1, 32, 32)
    line[..., 16, 4:28] = torch.linspace(1.0, 2.0, 24)
    line[..., 3, 5] = 0.1  # a little elsewhere, so it is not a pure stripe
    assert any("one row" in w for w in image_warnings(line, "measured"))
    assert image_warnings(torch.zeros(1, 1, 8, 8), "simulated") == ["simulated image is zero everywhere"]


def test_encoding_checks_count_lines_and_repeats() -> None:
    """Labels: a full matrix passes; 4 unlabelled repeats per line or 3 lines of 16 do not."""
    header = RawHeader(encoded_matrix=(16, 16, 1), recon_matrix=(16, 16, 1))

    def raw(lines: torch.Tensor) -> RawData:
        return RawData(kdata=torch.ones(1, lines.numel(), 16, dtype=torch.complex64), header=header,
                       labels={"kspace_encode_step_1": lines})

    assert encoding_warnings(raw(torch.arange(16)), "measured") == []
    averaged = raw(torch.arange(16).repeat(4))
    averaged.labels["average"] = torch.arange(64) // 16
    assert encoding_warnings(averaged, "measured") == []  # labelled averages are fine
    repeated = encoding_warnings(raw(torch.arange(16).repeat(4)), "measured")
    assert len(repeated) == 1 and "64 imaging readouts land on only 16" in repeated[0]
    assert encoding_warnings(raw(torch.arange(16).repeat(3)), "measured") == []  # up to 3 unlabelled averages
    sparse = encoding_warnings(raw(torch.tensor([7, 8, 9])), "measured")
    assert len(sparse) == 1 and "only 3 of 16 kspace_encode_step_1 lines" in sparse[0]
    assert encoding_warnings(raw(torch.tensor([7, 8, 9])), "measured", method="cg") == []  # only zero filling suffers
    dummy = raw(torch.zeros(16, dtype=torch.int64))
    dummy.flags = torch.full((16,), 1 << (ismrmrd.ACQ_IS_DUMMYSCAN_DATA - 1), dtype=torch.int64)
    assert "no imaging readouts" in encoding_warnings(dummy, "simulated")[0]


def test_real_scan_against_derived_simulations(tmp_path: Path) -> None:
    """Trio GRE of a bottle with vials (twix + .seq, 256²) against simulations of that .seq (< 30 s).

    A twin made from the measured image itself (64², PD = the image) gives a sound comparison; the same
    simulation without line labels (what import_seq gives) is a stripe pattern; builtin:brain is not the bottle,
    so its tissue ratios are flagged.
    """
    dat = shared_data(f"{REAL}.dat")
    seq_path = dat.with_suffix(".seq")
    measured = read_raw(dat, seq_path)
    image = Recon()(measured).data.abs()[0, 0]  # (1, 256, 256)
    pd = F.avg_pool2d(image, 4)
    pd = pd / pd.max()
    twin = Twin.from_maps(pd, torch.full_like(pd, 1.0), torch.full_like(pd, 0.1), fov=measured.header.encoded_fov)
    seq = import_seq(seq_path)
    sim = simulate(seq, twin)
    write_mrd(sim, tmp_path / "unlabelled.h5")
    derived = read_seq_readouts(seq_path).labels
    sim.labels = {name: torch.from_numpy(derived[name]).to(torch.int64) for name in sim.labels}
    write_mrd(sim, tmp_path / "sim.h5")

    sound = compare(tmp_path / "sim.h5", dat, tmp_path / "sound", seq_path=seq_path)
    assert sound.warnings == [] and sound.notes == []
    assert sound.metrics.dice is not None and sound.metrics.dice > 0.9
    assert sound.metrics.correlation is not None and sound.metrics.correlation > 0.7

    stripes = compare(tmp_path / "unlabelled.h5", dat, tmp_path / "stripes", seq_path=seq_path)
    assert any("simulated: all 256 imaging readouts are at kspace_encode_step_1" in w for w in stripes.warnings)
    assert any("simulated image is a stripe pattern" in w for w in stripes.warnings)
    assert not any(w.startswith("measured") for w in stripes.warnings)
    assert recorded(stripes)["warnings"] == stripes.warnings and page_warnings(stripes)

    brain_sim = simulate(seq, builtin("brain", matrix=64))
    brain_sim.labels = sim.labels
    write_mrd(brain_sim, tmp_path / "brain.h5")
    wrong_twin = compare(tmp_path / "brain.h5", dat, tmp_path / "brain", seq_path=seq_path,
                         twin_path="builtin:brain")
    assert wrong_twin.metrics.correlation is not None and wrong_twin.metrics.correlation < THRESHOLDS.min_correlation
    assert [w for w in wrong_twin.warnings if "tissue ratios of builtin:brain are not meaningful" in w]
    assert recorded(wrong_twin)["roi_meaningful"] is False
    assert not math.isnan(wrong_twin.metrics.dice or math.nan)
