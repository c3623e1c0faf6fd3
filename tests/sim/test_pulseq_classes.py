"""Issue 12: one pypulseq-written ``.seq`` of each class real scanners run, simulated and reconstructed.

Each class goes the way a user goes: ``mrbridge simulate --seq X.seq --twin T.h5 -o sim.h5`` then
``mrbridge recon sim.h5 -o img.h5`` (through typer's CliRunner), and its magnitude image must correlate
(Pearson, ≥ 0.95) with the same twin imaged by a reference Cartesian protocol of the same contrast
(``mrbridge simulate --protocol ref.yaml``, built by mrbridge's own builders). The FID's spectrum must peak at
the twin's (uniform) off-resonance.

The first group of tests checks the files themselves with pypulseq only (timing, signature, k-space coverage,
RF use of the 1.4 files), so that a failure of the second group is mrbridge's, not the sequence's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ismrmrd
import numpy as np
import pypulseq as pp
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.raw.read import read_raw
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin
from tests import pulseq_classes as pc

N = pc.MATRIX
MIN_CORRELATION = 0.95
OFF_RESONANCE_HZ = 50.0

WRITERS: dict[str, Callable[[Path], pc.Written]] = {
    "multi_echo_gre": lambda p: pc.multi_echo_gre(p, echoes=3),
    "segmented_gre": lambda p: pc.segmented_gre(p, segments=8, lines_per_excitation=4),
    "epi": pc.epi,
    "spin_echo": lambda p: pc.spin_echo(p, version="1.4"),
    "tse": lambda p: pc.tse(p, echo_train=4),
    "fid": lambda p: pc.fid(p, samples=8192),
    "gre_without_fov": pc.gre_without_fov,
}


# ---- helpers ---------------------------------------------------------------------------------------------------
def _cli(*args: str | Path) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        message = (result.output or "").strip() or repr(result.exception)
        raise AssertionError(f"`mrbridge {' '.join(map(str, args[:1]))} …` exited {result.exit_code}: {message}")


def _images(raw_path: Path, out: Path) -> np.ndarray:
    """`mrbridge recon RAW -o img.h5`, then the magnitude of every image it wrote, shaped (images, y, x)."""
    _cli("recon", raw_path, "-o", out)
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)
    try:
        frames = [np.abs(ds.read_image("image_0", i).data) for i in range(ds.number_of_images("image_0"))]
    finally:
        ds.close()
    data = np.stack(frames)
    return data.reshape(-1, *data.shape[-2:])


def _simulate(source: list[str], twin: Path, out: Path) -> Path:
    raw = out / "sim.h5"
    _cli("--quiet", "simulate", *source, "--twin", twin, "-o", raw)
    return raw


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"image shape {a.shape}, reference {b.shape}"
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pulseq_classes")


def asymmetric_brain(matrix: int) -> Twin:
    """The built-in brain with a hole on one side: the phantom is nearly left-right symmetric, so a readout
    left un-reversed would barely change its magnitude image (correlation 0.98); with the hole it drops to 0.86."""
    twin = builtin("brain", matrix=matrix)
    y, x = slice(matrix // 8, 7 * matrix // 16), slice(9 * matrix // 16, 13 * matrix // 16)
    twin.pd[..., y, x] = 0.0
    return twin


@pytest.fixture(scope="module")
def twin(work: Path) -> Path:
    path = work / "brain32.h5"
    asymmetric_brain(N).save(path)
    return path


_references: dict[str, np.ndarray] = {}


def reference(work: Path, twin: Path, **protocol: object) -> np.ndarray:
    """|image| of ``twin`` through a protocol YAML (mrbridge's builders), simulated and reconstructed via the CLI."""
    base: dict[str, object] = {"matrix": N, "fov_mm": pc.FOV * 1e3, "slice_mm": pc.SLICE * 1e3, "dwell_us": 40}
    spec = base | protocol
    key = repr((str(work), sorted(spec.items())))
    if key not in _references:
        folder = work / f"ref{len(_references)}"
        folder.mkdir()
        (folder / "ref.yaml").write_text(yaml.safe_dump(spec))
        raw = _simulate(["--protocol", str(folder / "ref.yaml")], twin, folder)
        _references[key] = _images(raw, folder / "img.h5")[0]
    return _references[key]


def gre_reference(work: Path, twin: Path, w: pc.Written, te: float) -> np.ndarray:
    return reference(work, twin, kind="gre", te_ms=round(te * 1e3, 3), tr_ms=round(w.tr * 1e3, 3),
                     flip_angle_deg=w.flip_deg, rf_spoiling_deg=pc.RF_SPOIL_DEG, dummies=w.dummies,
                     spoiler_cycles_per_voxel=2)


def write(name: str, work: Path) -> pc.Written:
    folder = work / name
    folder.mkdir(exist_ok=True)
    return WRITERS[name](folder / f"{name}.seq")


def simulated(name: str, work: Path, twin: Path) -> tuple[pc.Written, np.ndarray]:
    w = write(name, work)
    raw = _simulate(["--seq", str(w.path)], twin, w.path.parent)
    return w, _images(raw, w.path.parent / "img.h5")


# ---- the files themselves (pypulseq only) -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(WRITERS))
def test_file_is_a_valid_pulseq_sequence(name: str, tmp_path: Path) -> None:
    w = WRITERS[name](tmp_path / f"{name}.seq")  # each writer asserts check_timing()
    assert pc.signature_ok(w.path)
    seq = pp.Sequence()
    seq.read(str(w.path), detect_rf_use="minor 4" in w.path.read_text())
    ok, errors = seq.check_timing()
    assert ok, errors[:3]
    text = w.path.read_text()
    assert "[LABELSET]" not in text and "[LABELINC]" not in text, "no labels"


def _lines(ky: np.ndarray, samples_per_line: int) -> np.ndarray:
    per_line = ky.reshape(-1, samples_per_line)
    assert np.ptp(per_line, axis=1).max() < 1e-3, "k_y changes during a readout"
    lines = per_line[:, 0] * pc.FOV
    assert np.abs(lines - np.rint(lines)).max() < 1e-3, "k_y on the 1/FOV grid"
    return np.rint(lines).astype(int)


@pytest.mark.parametrize("name", ["multi_echo_gre", "segmented_gre", "spin_echo", "tse", "gre_without_fov"])
def test_cartesian_kspace_covers_the_grid(name: str, tmp_path: Path) -> None:
    w = WRITERS[name](tmp_path / f"{name}.seq")
    kx, ky = pc.kspace(w.path)
    lines = _lines(ky, N)
    echoes = len(w.te) if name == "multi_echo_gre" else 1
    expected = np.arange(N) - N // 2
    assert sorted(lines) == sorted(np.repeat(expected, echoes)), "each line once (per echo)"
    samples = kx.reshape(-1, N) * pc.FOV
    grid = np.arange(N) - N / 2 + 0.5  # pypulseq's symmetric sampling: k_x = (i − N/2 + ½)·dk
    forward = np.abs(samples - grid).max(axis=1) < 1e-3
    reversed_ = np.abs(samples - grid[::-1]).max(axis=1) < 1e-3
    assert np.all(forward | reversed_), "every readout on the Cartesian k_x grid"
    if name == "segmented_gre":
        per_shot = w.extra["lines_per_excitation"]
        shots = lines.reshape(-1, int(per_shot))
        assert np.all(reversed_.reshape(-1, int(per_shot)) == [False, True, False, True]), "bipolar train"
        assert np.all(np.diff(shots, axis=1) == -w.extra["segments"]), "blips of −`segments` lines"
        assert sorted(shots[:, 0]) == list(expected[-int(w.extra["segments"]):]), "interleaved start lines"
        centre = np.argwhere(shots == 0)[0]
        assert reversed_.reshape(shots.shape)[tuple(centre)], "the k-space centre is read by a reversed readout"
    else:
        assert not reversed_.any(), "monopolar readouts"


def test_epi_kspace_is_ramp_sampled_and_alternating(tmp_path: Path) -> None:
    w = pc.epi(tmp_path / "epi.seq")
    kx, ky = pc.kspace(w.path)
    samples = int(w.extra["samples"])
    lines = _lines(ky, samples)
    assert list(lines) == list(np.arange(N) - N // 2), "k_y steps by 1/FOV, one line per readout"
    rows = kx.reshape(-1, samples) * pc.FOV
    slopes = np.sign(rows[:, -1] - rows[:, 0])
    assert np.all(slopes == np.where(np.arange(N) % 2 == 0, 1, -1)), "k_x alternates"
    steps = np.abs(np.diff(rows, axis=1))
    assert steps.max() < 1.0, "largest k_x step below dk (no aliasing)"
    assert steps.max() / steps.min() > 2, "non-uniform k_x: samples on the ramps"
    assert rows.max() > N / 2 - 1 and rows.min() < -N / 2 + 1, "covers the k_x extent of the grid"


@pytest.mark.parametrize("name", ["spin_echo", "tse"])
def test_pulseq_14_file_without_rf_use(name: str, tmp_path: Path) -> None:
    w = WRITERS[name](tmp_path / f"{name}.seq")
    text = w.path.read_text()
    assert "[VERSION]\nmajor 1\nminor 4\n" in text
    rf_header = text.split("[RF]")[0].strip().splitlines()[-2]
    assert rf_header.split()[1:] == ["id", "amplitude", "mag_id", "phase_id", "time_shape_id", "delay", "freq",
                                     "phase"], rf_header
    rf_rows = text.split("[RF]\n")[1].split("\n\n")[0].splitlines()
    assert all(len(row.split()) == 8 for row in rf_rows), "1.4 RF rows have 8 columns, no use"
    seq = pp.Sequence()
    seq.read(str(w.path), detect_rf_use=True)
    uses = [seq.get_block(b).rf.use for b in seq.block_events if seq.get_block(b).rf is not None]
    train = int(w.extra.get("echo_train", 1))
    assert uses[: train + 1] == ["excitation"] + ["refocusing"] * train


def test_fid_file(tmp_path: Path) -> None:
    w = pc.fid(tmp_path / "fid.seq")
    seq = pp.Sequence()
    seq.read(str(w.path))
    adcs = [seq.get_block(b).adc for b in seq.block_events if seq.get_block(b).adc is not None]
    assert len(adcs) == 1 and adcs[0].num_samples == 8192
    assert "FOV" not in seq.definitions
    kx, ky = pc.kspace(w.path)
    assert np.abs(kx).max() == 0 and np.abs(ky).max() == 0


def test_gre_without_fov_has_no_fov(tmp_path: Path) -> None:
    w = pc.gre_without_fov(tmp_path / "g.seq")
    definitions = w.path.read_text().split("[DEFINITIONS]")[1].split("\n\n")[0]
    assert "FOV" not in definitions


# ---- simulated and reconstructed through mrbridge ----------------------------------------------------------------
def test_multi_echo_gre(work: Path, twin: Path) -> None:
    w, images = simulated("multi_echo_gre", work, twin)
    assert images.shape[0] == len(w.te), f"expected one image per echo ({len(w.te)}), got {images.shape}"
    references = [gre_reference(work, twin, w, te) for te in w.te]
    for echo, te in enumerate(w.te):
        r = _correlation(images[echo], references[echo])
        assert r >= MIN_CORRELATION, f"echo {echo + 1} (TE {te * 1e3:.2f} ms): correlation {r:.3f}"
    # each echo its own contrast, in TE order: the T2* decay matches the references' (8.6 % by echo 3; the
    # sequences agree to 0.2 %)
    decay = images.sum(axis=(1, 2)) / images[0].sum()
    expected = np.array([ref.sum() for ref in references]) / references[0].sum()
    assert np.abs(decay - expected).max() < 0.02, f"echo signal ratios {decay.round(3)}, expected {expected.round(3)}"


def test_segmented_gre(work: Path, twin: Path) -> None:
    w, images = simulated("segmented_gre", work, twin)
    assert images.shape[0] == 1, f"expected one image, got {images.shape}"
    r = _correlation(images[0], gre_reference(work, twin, w, w.effective_te))
    assert r >= MIN_CORRELATION, f"correlation {r:.3f}"


def test_epi(work: Path, twin: Path) -> None:
    w, images = simulated("epi", work, twin)
    assert images.shape[0] == 1, f"expected one image, got {images.shape}"
    # single shot from equilibrium: the reference has a TR long against every T1 of the twin
    ref = reference(work, twin, kind="gre", te_ms=round(w.effective_te * 1e3, 3), tr_ms=20000,
                    flip_angle_deg=90, rf_spoiling_deg=pc.RF_SPOIL_DEG, dummies=0)
    r = _correlation(images[0], ref)
    assert r >= MIN_CORRELATION, f"correlation {r:.3f}"


def test_spin_echo_pulseq_14(work: Path, twin: Path) -> None:
    w, images = simulated("spin_echo", work, twin)
    assert images.shape[0] == 1, f"expected one image, got {images.shape}"
    ref = reference(work, twin, kind="se", te_ms=w.te[0] * 1e3, tr_ms=w.tr * 1e3, flip_angle_deg=90,
                    refocusing_angle_deg=180, rf_ms=1.5, refocusing_rf_ms=3)
    r = _correlation(images[0], ref)
    assert r >= MIN_CORRELATION, f"correlation {r:.3f}"


def test_tse_pulseq_14(work: Path, twin: Path) -> None:
    w, images = simulated("tse", work, twin)
    assert images.shape[0] == 1, f"expected one image, got {images.shape}"
    ref = reference(work, twin, kind="tse", echo_spacing_ms=w.extra["echo_spacing"] * 1e3,
                    echo_train_length=int(w.extra["echo_train"]), order="linear",
                    te_ms=round(w.effective_te * 1e3, 3), tr_ms=w.tr * 1e3, flip_angle_deg=90,
                    refocusing_angle_deg=180, rf_ms=1.5, refocusing_rf_ms=3)
    r = _correlation(images[0], ref)
    assert r >= MIN_CORRELATION, f"correlation {r:.3f}"


def test_gre_without_fov(work: Path, twin: Path) -> None:
    w, images = simulated("gre_without_fov", work, twin)
    assert images.shape[0] == 1, f"expected one image, got {images.shape}"
    r = _correlation(images[0], gre_reference(work, twin, w, w.effective_te))
    assert r >= MIN_CORRELATION, f"correlation {r:.3f}"


def test_fid_spectrum_peaks_at_the_off_resonance(work: Path) -> None:
    twin16 = builtin("brain", matrix=16)
    twin16.b0 = torch.full_like(twin16.b0, OFF_RESONANCE_HZ)
    twin_path = work / "brain16_b0_50hz.h5"
    twin16.save(twin_path)
    w = write("fid", work)
    raw_path = _simulate(["--seq", str(w.path)], twin_path, w.path.parent)
    samples, dwell = int(w.extra["samples"]), w.extra["dwell"]
    raw = read_raw(raw_path)
    assert raw.kdata.shape[-1] == samples and raw.readouts == 1, f"raw data {tuple(raw.kdata.shape)}"
    # the project's convention: s = Σ m·exp(−i2π(k·r + Δf·t)), an image is the inverse FFT, so is a spectrum
    fid_signal = raw.kdata[0, 0].cpu().numpy()
    spectrum = np.abs(np.fft.fftshift(np.fft.ifft(fid_signal)))
    hz = np.fft.fftshift(np.fft.fftfreq(samples, dwell))
    peak = float(hz[np.argmax(spectrum)])
    assert abs(peak - OFF_RESONANCE_HZ) < 2.0, f"raw spectrum peaks at {peak:.1f} Hz, twin {OFF_RESONANCE_HZ} Hz"
    # `mrbridge recon` gives the spectrum as the image: one centred axis of `samples` points
    image = _images(raw_path, w.path.parent / "img.h5").ravel()
    assert image.size == samples, f"recon image has {image.size} values, expected a {samples}-point spectrum"
    peak_image = float(hz[np.argmax(image)])
    assert abs(peak_image - OFF_RESONANCE_HZ) < 2.0, f"recon spectrum peaks at {peak_image:.1f} Hz"
