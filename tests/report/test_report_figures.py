"""The report's physicist figures: log k-space, the exported .seq's real waveforms, images in mm, SNR per region,
the optimization history — each checked against the physics that produced it, and the page in headless Chromium."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.read import read_raw
from mrbridge.recon.image_io import extent_mm
from mrbridge.recon.pipeline import Recon
from mrbridge.report.compare import CompareResult, compare
from mrbridge.report.kspace import kspace_plane
from mrbridge.report.snr import NEIGHBOUR_DIFFERENCE, NOISE_SCAN, noise_change, roi_snr
from mrbridge.report.waveforms import GAMMA_HZ_PER_T, read_waveforms
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO
from tests.report.common import chromium_dom, chromium_screenshot, images_loaded
from tests.test_cli import assert_user_error, run_cli

MATRIX = 16
FLIP_DEG = 15.0
FOV_MM = 200.0
DWELL_US = 50.0
HISTORY = "step,phase,loss,mse,hardware,flip_angle_mean,val_loss\n" + "".join(
    f"{s},joint,{0.2 / s:.6g},{0.2 / s:.6g},0.0,{0.1 + 0.01 * s:.4g},{'' if s % 5 else 0.21 / s}\n"
    for s in range(1, 21))


def _protocol():  # type: ignore[no-untyped-def]
    return load_protocol(REPO / "protocols" / "gre.yaml").model_copy(
        update={"dummies": 0, "flip_angle_deg": FLIP_DEG, "fov_mm": FOV_MM, "dwell_us": DWELL_US})


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CompareResult]:
    """GRE 16² on builtin:brain: noise-free simulation vs a noisy one with B1+ 10 % low (it has a noise scan),
    the .seq exported for prisma, and a bundle with a recon and a history."""
    folder = tmp_path_factory.mktemp("figures")
    seq = build(_protocol(), matrix=MATRIX)
    twin = builtin("brain", matrix=MATRIX)
    write_mrd(simulate(seq, twin), folder / "sim.h5")
    write_mrd(simulate(seq, replace(twin, b1=0.9 * twin.b1), noise=0.01, seed=1), folder / "meas.h5")
    export_seq(seq, System.load("prisma"), path=folder / "gre.seq")
    bundle = folder / "bundle"
    Recon().save(bundle)
    (bundle / "history.csv").write_text(HISTORY)
    result = compare(folder / "sim.h5", folder / "meas.h5", folder / "report", seq_path=folder / "gre.seq",
                     bundle=bundle, twin_path="builtin:brain", system="prisma")
    return folder, result


def _not_blank(path: Path) -> None:
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300, path
    assert pixels.std() > 0.05 and (pixels.min(axis=-1) < 0.5).mean() > 0.01, f"{path} is (nearly) blank"


def test_every_new_figure_is_written_and_drawn(report: tuple[Path, CompareResult]) -> None:
    _, result = report
    names = [p.name for p in result.figures]
    assert names == ["images.png", "profiles.png", "kspace_centre.png", "kspace.png", "trajectory.png",
                     "waveforms.png", "sequence.png", "history.png"]
    for path in result.figures:
        _not_blank(path)
    page = result.index.read_text()
    assert all(f'src="{name}"' in page for name in names)
    assert "log-magnitude k-space" in page and "read back with pypulseq" in page and "optimization history" in page


def test_kspace_peaks_at_the_centre_and_identical_data_differ_by_nothing(report: tuple[Path, CompareResult]) -> None:
    folder, _ = report
    sim = read_raw(folder / "sim.h5")
    plane = kspace_plane(Recon(), sim)
    assert plane.gridded and plane.magnitude.shape == (MATRIX, MATRIX)
    assert np.isfinite(plane.magnitude).all()  # fully sampled Cartesian: every grid point holds a sample
    # a non-negative object (PD) has its largest |k| at k = 0: grid index (n//2, n//2)
    assert np.unravel_index(np.argmax(plane.magnitude), plane.magnitude.shape) == (MATRIX // 2, MATRIX // 2)
    # |k| on the grid is |k| of the samples: the RSS over coils of the acquired centre sample
    centre = sim.kdata[:, :, sim.center_sample].abs().square().sum(0).sqrt().max()
    assert plane.magnitude[MATRIX // 2, MATRIX // 2] == pytest.approx(float(centre), rel=1e-5)


def test_waveforms_are_those_of_the_file(report: tuple[Path, CompareResult]) -> None:
    folder, _ = report
    waves = read_waveforms(folder / "gre.seq")
    start, end = waves.window
    assert 0.0 <= start < end <= waves.duration
    assert len(waves.adc_windows) == 2  # the default window: two repetitions
    # the readout samples MATRIX points at the protocol's dwell
    length = waves.adc_windows[:, 1] - waves.adc_windows[:, 0]
    assert length == pytest.approx(np.full(2, MATRIX * DWELL_US * 1e-6), rel=1e-6)
    # during the ADC, Gx is the readout plateau: Δk = γ·Gx·dwell = 1/FOV
    t, gx = waves.gradients[0]
    middle = waves.adc_windows[0].mean()
    expected_mt_per_m = 1.0 / (FOV_MM * 1e-3 * DWELL_US * 1e-6) / GAMMA_HZ_PER_T * 1e3
    assert float(np.interp(middle, t, gx)) == pytest.approx(expected_mt_per_m, rel=1e-3)
    # the first pulse's flip: 360° · γ · ∫B1 dt (the waveform is the pulse's real B1, shape and phase included)
    first = waves.rf_time < (waves.rf_time[0] + 0.5 * (waves.adc_windows[0, 0] - waves.rf_time[0]))
    t_rf, b1 = waves.rf_time[first], waves.rf[first] * 1e-6  # T
    flip = 360.0 * GAMMA_HZ_PER_T * abs(np.sum(b1[:-1] * np.diff(t_rf)))
    assert flip == pytest.approx(FLIP_DEG, rel=0.02)
    # a chosen window: only what lies in it
    chosen = read_waveforms(folder / "gre.seq", (waves.adc_windows[1, 0] - 1e-4, waves.adc_windows[1, 1] + 1e-4))
    assert len(chosen.adc_windows) == 1
    with pytest.raises(InputError, match="time window"):
        read_waveforms(folder / "gre.seq", (waves.duration + 1.0, waves.duration + 2.0))


def test_images_are_drawn_in_mm() -> None:
    left, right, bottom, top = extent_mm((4, 8), (0.2, 0.1))  # x: 8 voxels over 200 mm, y: 4 over 100 mm
    assert (left, right) == pytest.approx((-112.5, 87.5)) and (bottom, top) == pytest.approx((-62.5, 37.5))
    assert right - left == pytest.approx(200.0) and top - bottom == pytest.approx(100.0)


def test_snr_from_the_noise_scan_matches_two_repeated_scans() -> None:
    """σ from the noise scan, propagated through the recon, is the NEMA two-scan difference σ — per unit of k-space
    noise: the bootstrap draws from the noise scan's 256 samples, whose rms differs from the imaging noise's σ by
    a few per cent, and the image σ follows it."""
    matrix = 32
    seq = build(_protocol(), matrix=matrix)
    twin = builtin("brain", matrix=matrix)
    clean = simulate(seq, twin)
    first, second = (simulate(seq, twin, noise=0.02, seed=s) for s in (3, 4))
    recon = Recon()

    def magnitude(raw):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return recon(raw).data.abs().float()

    one, two = magnitude(first), magnitude(second)
    region = {"object": one[0, 0] > 0.3 * float(one.max())}
    sigma_two_scans = float((one - two)[..., region["object"]].double().std()) / math.sqrt(2.0)
    change = noise_change(first, magnitude, one)
    assert change is not None and first.noise is not None
    sigma_noise_scan = float(change[..., region["object"]].double().std())
    true_rms = math.sqrt(2.0) * 0.02 * float(clean.kdata.abs().max())  # complex noise: σ on each of re and im
    scan_rms = float(first.noise.abs().square().mean().sqrt())
    assert sigma_noise_scan / scan_rms == pytest.approx(sigma_two_scans / true_rms, rel=0.1)
    snr = roi_snr(one, two, region, sim_change=change)
    assert (snr.sim_method, snr.meas_method) == (NOISE_SCAN, NEIGHBOUR_DIFFERENCE)
    mean = float(one[..., region["object"]].double().mean())
    assert snr.rows[0].sim == pytest.approx(mean / sigma_noise_scan, rel=1e-6)
    assert noise_change(clean, magnitude, one) is None  # no noise scan: the neighbour difference, stated


def test_snr_table_states_its_methods(report: tuple[Path, CompareResult]) -> None:
    _, result = report
    assert result.snr is not None
    assert result.snr.meas_method == NOISE_SCAN and result.snr.sim_method == NEIGHBOUR_DIFFERENCE
    names = [r.name for r in result.snr.rows]
    assert names[0].startswith("object") and {"grey_matter", "white_matter"} <= set(names)
    assert all(r.meas is not None and 0 < r.meas < 1e3 for r in result.snr.rows)
    page = result.index.read_text()
    assert 'id="snr"' in page and "noise scan" in page and "neighbour difference" in page


def test_page_renders_with_every_figure_in_chromium(report: tuple[Path, CompareResult], tmp_path: Path) -> None:
    _, result = report
    assert images_loaded(chromium_dom(result.index)) == (len(result.figures), len(result.figures))
    shot = chromium_screenshot(result.index, tmp_path / "page.png", size=(1400, 9000))
    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = pixels.min(axis=-1) < 0.6  # dark pixels: text, axes, images
    rows_with_ink = ink.any(axis=1).mean()
    assert ink.mean() > 0.02 and rows_with_ink > 0.5, (ink.mean(), rows_with_ink)


def test_cli_refuses_a_bad_window(report: tuple[Path, CompareResult], tmp_path: Path) -> None:
    folder, _ = report
    done = run_cli("compare", "--sim", str(folder / "sim.h5"), "--meas", str(folder / "meas.h5"), "--seq",
                   str(folder / "gre.seq"), "--seq-window-ms", "5,2", "-o", str(tmp_path / "r"))
    assert_user_error(done, "--seq-window-ms", "START < END")
    with pytest.raises(InputError, match=r"no \.seq to draw"):
        compare(folder / "sim.h5", folder / "meas.h5", tmp_path / "r", seq_window=(0.0, 0.01))
    assert not (tmp_path / "r").exists()
