"""ISMRMRD files: our writer read by the C++ tools and the ismrmrd package; C++-generated files read by us."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch
from ismrmrd import xsd
from ismrmrd.constants import (
    ACQ_FIRST_IN_SLICE,
    ACQ_IS_NOISE_MEASUREMENT,
    ACQ_IS_PARALLEL_CALIBRATION,
    ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING,
    ACQ_IS_REVERSE,
    ACQ_LAST_IN_SLICE,
)

from mrbridge.errors import InputError
from mrbridge.raw.mrd import read_mrd, write_mrd
from mrbridge.raw.rawdata import LABELS, RawData, RawHeader
from tests.helpers import nrmse

GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"
RECON = "ismrmrd_recon_cartesian_2d"
needs_tools = pytest.mark.skipif(
    shutil.which(GENERATOR) is None or shutil.which(RECON) is None,
    reason="Debian ismrmrd-tools not installed",
)


def bit(flag: int) -> int:
    return 1 << (flag - 1)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred inverse FFT over the last two axes (our convention: image = inverse FFT of k-space)."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))), axes=(-2, -1))


def fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1))


def cpp_recon(path: Path, tmp_path: Path) -> np.ndarray:
    """Run ismrmrd_recon_cartesian_2d on a copy of ``path``; its RSS magnitude image (y, x)."""
    work = tmp_path / f"cpp_{path.name}"
    shutil.copy(path, work)  # the tool appends its image to the file it reads
    subprocess.run([RECON, str(work)], check=True, capture_output=True)
    with h5py.File(work, "r") as f:
        return f["dataset/cpp/data"][0, 0, 0].astype(np.float64)


def known_object(ny: int, nx: int) -> np.ndarray:
    """A smooth, asymmetric test object (y, x) that is zero outside the central half in x."""
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    img = (x**2 / 0.2 + (y - 0.1) ** 2 / 0.5 < 1.0) * (1.0 + 0.5 * np.sin(3 * x + 2 * y))
    img += 0.7 * ((x - 0.15) ** 2 + (y + 0.3) ** 2 < 0.02)
    return img


def cartesian_raw(
    coils: int = 2, ny: int = 32, nx_recon: int = 24, noise_samples: int = 0
) -> tuple[RawData, np.ndarray]:
    """2x readout-oversampled Cartesian RawData of a known object, and its coil images (coils, y, x)."""
    nx = 2 * nx_recon
    obj = np.zeros((ny, nx))
    obj[:, nx_recon // 2 : nx_recon // 2 + nx_recon] = known_object(ny, nx_recon)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    sens = np.stack([np.exp(1j * (0.1 * c * xx + 0.05 * yy)) * (1 + 0.3 * c * yy / ny) for c in range(coils)])
    coil_images = obj[None] * sens
    k = fft2c(coil_images)  # (coils, ky, kx): readouts are ky lines, samples kx
    rng = np.random.default_rng(0)
    noise = None
    if noise_samples:
        noise = torch.from_numpy(
            (rng.normal(size=(coils, noise_samples)) + 1j * rng.normal(size=(coils, noise_samples))).astype(
                np.complex64
            )
        )
    flags = torch.zeros(ny, dtype=torch.int64)
    flags[0] = bit(ACQ_FIRST_IN_SLICE)
    flags[-1] = bit(ACQ_LAST_IN_SLICE)
    header = RawHeader(
        sequence_name="gre",
        encoded_fov=(0.4, 0.2, 0.005),
        encoded_matrix=(nx, ny, 1),
        recon_fov=(0.2, 0.2, 0.005),
        recon_matrix=(nx_recon, ny, 1),
        te=[0.004],
        tr=[0.01],
        flip_angle_deg=[15.0],
        coils=coils,
    )
    raw = RawData(
        kdata=torch.from_numpy(k.astype(np.complex64)),
        header=header,
        labels={"kspace_encode_step_1": torch.arange(ny)},
        flags=flags,
        sample_time=(torch.arange(ny, dtype=torch.float64)[:, None] * 0.01 + torch.arange(nx) * 1e-5 + 0.002),
        noise=noise,
        dwell=1e-5,
        center_sample=nx // 2,
    )
    return raw, coil_images


@needs_tools
def test_cpp_recon_of_written_cartesian_file(tmp_path: Path) -> None:
    raw, coil_images = cartesian_raw(coils=3, noise_samples=2 * 48)
    path = tmp_path / "cart.h5"
    write_mrd(raw, path)
    image = cpp_recon(path, tmp_path)
    ny, nx = coil_images.shape[1:]
    nx_recon = raw.header.recon_matrix[0]
    crop = slice((nx - nx_recon) // 2, (nx - nx_recon) // 2 + nx_recon)
    # FFTW's unnormalised backward FFT: N times our inverse FFT; RSS over coils; oversampling cropped
    expected = np.sqrt((np.abs(coil_images[..., crop]) ** 2).sum(0)) * ny * nx
    assert image.shape == (ny, nx_recon)
    assert nrmse(torch.from_numpy(image), torch.from_numpy(expected)) < 1e-5


def test_ismrmrd_package_reads_header_and_acquisitions(tmp_path: Path) -> None:
    raw, _ = cartesian_raw(coils=2, noise_samples=100)
    raw.labels["slice"] = torch.arange(raw.readouts) % 2
    raw.labels["contrast"] = torch.arange(raw.readouts) % 3
    path = tmp_path / "pkg.h5"
    write_mrd(raw, path)

    with ismrmrd.File(str(path), "r") as f:
        hdr = f["dataset"].header
        acqs = list(f["dataset"].acquisitions)
    enc = hdr.encoding[0]
    assert (enc.encodedSpace.matrixSize.x, enc.encodedSpace.matrixSize.y) == (48, 32)
    assert (enc.reconSpace.matrixSize.x, enc.reconSpace.fieldOfView_mm.x) == (24, pytest.approx(200.0))
    assert enc.encodedSpace.fieldOfView_mm.x == pytest.approx(400.0)
    assert enc.trajectory == xsd.trajectoryType.CARTESIAN
    assert enc.encodingLimits.kspace_encoding_step_1.maximum == 31
    assert enc.encodingLimits.slice.maximum == 1 and enc.encodingLimits.contrast.maximum == 2
    assert hdr.sequenceParameters.TR == [pytest.approx(10.0)] and hdr.sequenceParameters.TE == [
        pytest.approx(4.0)
    ]
    assert hdr.sequenceParameters.flipAngle_deg == [pytest.approx(15.0)]
    assert hdr.acquisitionSystemInformation.systemFieldStrength_T == pytest.approx(3.0)
    assert hdr.acquisitionSystemInformation.receiverChannels == 2
    assert hdr.experimentalConditions.H1resonanceFrequency_Hz == round(raw.header.larmor_hz)

    noise = [a for a in acqs if a.is_flag_set(ACQ_IS_NOISE_MEASUREMENT)]
    imaging = [a for a in acqs if not a.is_flag_set(ACQ_IS_NOISE_MEASUREMENT)]
    assert acqs[0].is_flag_set(ACQ_IS_NOISE_MEASUREMENT) and len(noise) == 3  # 100 samples in pieces of 48
    np.testing.assert_array_equal(np.concatenate([a.data for a in noise], axis=1), raw.noise.numpy())
    assert len(imaging) == raw.readouts
    assert imaging[0].is_flag_set(ACQ_FIRST_IN_SLICE) and imaging[-1].is_flag_set(ACQ_LAST_IN_SLICE)
    for r in (0, 5, 31):
        a = imaging[r]
        np.testing.assert_array_equal(a.data, raw.kdata[:, r].numpy())
        assert a.idx.kspace_encode_step_1 == r and a.idx.slice == r % 2 and a.idx.contrast == r % 3
        assert a.center_sample == 24 and a.sample_time_us == pytest.approx(10.0)
        assert a.active_channels == 2 and a.available_channels == 2
        assert a.acquisition_time_stamp == round((0.002 + 0.01 * r) * 1e6)  # µs ticks
        assert a.trajectory_dimensions == 0


def radial_raw() -> RawData:
    """A non-Cartesian (radial) RawData with every optional field set."""
    spokes, n = 12, 32
    fov, matrix = 0.25, 32
    angles = torch.arange(spokes) * torch.pi / spokes
    kr = (torch.arange(n) - n // 2) / fov  # 1/m
    traj = torch.stack(
        [
            kr[None] * torch.cos(angles)[:, None],
            kr[None] * torch.sin(angles)[:, None],
            torch.zeros(spokes, n),
        ],
        dim=-1,
    )
    gen = torch.Generator().manual_seed(1)
    kdata = torch.randn(4, spokes, n, dtype=torch.complex64, generator=gen)
    labels = {name: torch.zeros(spokes, dtype=torch.int64) for name in LABELS}
    labels["kspace_encode_step_1"] = torch.arange(spokes)
    labels["repetition"] = torch.arange(spokes) // 6
    labels["slice"] = torch.arange(spokes) % 3
    labels["contrast"] = torch.arange(spokes) % 2
    return RawData(
        kdata=kdata,
        header=RawHeader(
            sequence_name="radial-gre",
            trajectory="radial",
            encoded_fov=(fov, fov, 0.004),
            encoded_matrix=(matrix, matrix, 1),
            recon_fov=(fov, fov, 0.004),
            recon_matrix=(matrix, matrix, 1),
            field_strength_t=2.89,
            larmor_hz=123.2e6,
            te=[0.003, 0.006],
            tr=[0.012],
            flip_angle_deg=[10.0],
            coils=4,
            system_vendor="mrbridge",
            system_model="simulation",
        ),
        traj=traj,
        labels=labels,
        flags=torch.tensor([bit(ACQ_FIRST_IN_SLICE)] + [0] * (spokes - 2) + [bit(ACQ_LAST_IN_SLICE)]),
        sample_time=torch.arange(spokes, dtype=torch.float64)[:, None] * 0.012
        + torch.arange(n) * 4e-6
        + 1e-3,
        noise=torch.randn(4, 77, dtype=torch.complex64, generator=gen),
        dwell=4e-6,
        center_sample=n // 2,
        provenance={"seed": "3", "engine": "bloch"},
    )


def test_round_trip_radial_with_noise_traj_labels(tmp_path: Path) -> None:
    raw = radial_raw()
    path = tmp_path / "radial.h5"
    write_mrd(raw, path)
    back = read_mrd(path)

    assert torch.equal(back.kdata, raw.kdata)
    assert back.noise is not None and raw.noise is not None and torch.equal(back.noise, raw.noise)
    assert back.traj is not None
    torch.testing.assert_close(back.traj, raw.traj, atol=1e-3, rtol=1e-6)  # float32 in the file
    for name in LABELS:
        assert torch.equal(back.labels[name], raw.labels[name]), name
    assert back.flags is not None and raw.flags is not None and torch.equal(back.flags, raw.flags)
    assert back.sample_time is not None and raw.sample_time is not None
    torch.testing.assert_close(back.sample_time, raw.sample_time, atol=1e-6, rtol=0)
    assert back.dwell == pytest.approx(raw.dwell) and back.center_sample == raw.center_sample
    assert back.provenance == raw.provenance
    assert back.header.xml is not None and "radial" in back.header.xml
    got, want = back.header.model_dump(exclude={"xml"}), raw.header.model_dump(exclude={"xml"})
    for key, value in want.items():
        if isinstance(value, str):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-6), key

    # the stored trajectory is k·FOV/matrix: the encoded grid spans [-0.5, 0.5)
    with h5py.File(path, "r") as f:
        head = f["dataset/data"]["head"]
        first = f["dataset/data"][head["flags"].tolist().index(bit(ACQ_FIRST_IN_SLICE))]
    assert first["head"]["trajectory_dimensions"] == 2
    t = first["traj"].reshape(32, 2)
    np.testing.assert_allclose(t[:, 0], (np.arange(32) - 16) / 32, atol=1e-6)


@needs_tools
def test_cpp_generated_shepp_logan(tmp_path: Path) -> None:
    path = tmp_path / "sl.h5"
    subprocess.run(
        [GENERATOR, "-m", "64", "-c", "4", "-O", "2", "-r", "2", "-C", "-o", str(path)],
        check=True,
        capture_output=True,
    )
    raw = read_mrd(path)
    assert raw.kdata.shape == (4, 128, 128)
    assert raw.noise is not None and raw.noise.shape == (4, 128)
    assert raw.header.encoded_matrix == (128, 64, 1) and raw.header.recon_matrix == (64, 64, 1)
    assert raw.header.encoded_fov == pytest.approx((0.6, 0.3, 0.006))
    assert raw.header.recon_fov == pytest.approx((0.3, 0.3, 0.006))
    assert raw.header.larmor_hz == 63.5e6 and raw.header.coils == 4
    assert raw.dwell == pytest.approx(5e-6) and raw.center_sample == 64
    assert torch.equal(raw.labels["repetition"], torch.arange(128) // 64)
    assert torch.equal(raw.labels["kspace_encode_step_1"], torch.arange(128) % 64)
    assert raw.flags is not None and int(raw.flags[0]) == bit(ACQ_FIRST_IN_SLICE)
    assert int(raw.flags[63]) == bit(ACQ_LAST_IN_SLICE)

    # inverse FFT + RSS of the last repetition (the C++ recon keeps the last line written per encode step)
    k = raw.kdata[:, 64:].numpy()
    coil_images = ifft2c(k)[..., 32:96] * k.shape[-1] * k.shape[-2]
    ours = np.sqrt((np.abs(coil_images) ** 2).sum(0))
    assert nrmse(torch.from_numpy(ours), torch.from_numpy(cpp_recon(path, tmp_path))) < 1e-5


@needs_tools
def test_cpp_generated_accelerated_calibration_flags(tmp_path: Path) -> None:
    path = tmp_path / "acc.h5"
    subprocess.run(
        [GENERATOR, "-m", "32", "-c", "2", "-a", "2", "-w", "8", "-o", str(path)],
        check=True,
        capture_output=True,
    )
    raw = read_mrd(path)
    flags = raw.flags
    assert flags is not None
    step = raw.labels["kspace_encode_step_1"]
    calib = (flags & bit(ACQ_IS_PARALLEL_CALIBRATION)) != 0
    both = (flags & bit(ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)) != 0
    assert calib.any() and both.any()
    assert torch.all(
        (step[calib] >= 12) & (step[calib] <= 19) & (step[calib] % 2 == 1)
        == (raw.labels["repetition"][calib] == 0)
    )
    assert raw.noise is None and torch.equal(torch.unique(raw.labels["repetition"]), torch.tensor([0, 1]))


def test_reversed_lines_are_flipped(tmp_path: Path) -> None:
    """A file written by the ismrmrd package with every odd line reversed (as EPI) reads as forward lines."""
    gen = torch.Generator().manual_seed(2)
    forward = torch.randn(2, 8, 16, dtype=torch.complex64, generator=gen).numpy()
    header = xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=123_000_000),
        encoding=[
            xsd.encodingType(
                encodedSpace=xsd.encodingSpaceType(
                    matrixSize=xsd.matrixSizeType(x=16, y=8, z=1),
                    fieldOfView_mm=xsd.fieldOfViewMm(x=200, y=100, z=5),
                ),
                reconSpace=xsd.encodingSpaceType(
                    matrixSize=xsd.matrixSizeType(x=16, y=8, z=1),
                    fieldOfView_mm=xsd.fieldOfViewMm(x=200, y=100, z=5),
                ),
                encodingLimits=xsd.encodingLimitsType(),
                trajectory=xsd.trajectoryType.EPI,
            )
        ],
    )
    path = tmp_path / "epi.h5"
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    ds.write_xml_header(xsd.ToXML(header))
    for line in range(8):
        data = forward[:, line, ::-1] if line % 2 else forward[:, line]
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data), center_sample=8, sample_time_us=2.5)
        acq.idx.kspace_encode_step_1 = line
        acq.idx.slice = line // 4
        if line % 2:
            acq.set_flag(ACQ_IS_REVERSE)
        ds.append_acquisition(acq)
    ds.close()

    raw = read_mrd(path)
    np.testing.assert_array_equal(raw.kdata.numpy(), forward)
    assert raw.flags is not None and not torch.any(raw.flags & bit(ACQ_IS_REVERSE))
    assert torch.equal(raw.labels["slice"], torch.arange(8) // 4)
    assert raw.header.trajectory == "epi" and raw.dwell == pytest.approx(2.5e-6)


def test_truncated_file(tmp_path: Path) -> None:
    raw, _ = cartesian_raw()
    path = tmp_path / "trunc.h5"
    write_mrd(raw, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"trunc\.h5"):
        read_mrd(path)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("not raw data")
    with pytest.raises(InputError, match=r"notes\.h5.*not an HDF5"):
        read_mrd(path)


def _write_with_header(path: Path, xml: str, samples: tuple[int, ...] = (16, 16)) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("dataset")
        g.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        g["xml"][0] = xml.encode()
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    for n in samples:
        ds.append_acquisition(ismrmrd.Acquisition.from_array(np.ones((1, n), dtype=np.complex64)))
    ds.close()


GOOD_XML = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <experimentalConditions><H1resonanceFrequency_Hz>123000000</H1resonanceFrequency_Hz></experimentalConditions>
 <encoding>
  <encodedSpace><matrixSize><x>16</x><y>2</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>16</x><y>2</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
  <encodingLimits/>
  <trajectory>cartesian</trajectory>
 </encoding>
</ismrmrdHeader>"""


def test_minimal_valid_header_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.h5"
    _write_with_header(path, GOOD_XML)
    raw = read_mrd(path)
    assert raw.kdata.shape == (1, 2, 16) and raw.header.encoded_fov == pytest.approx((0.2, 0.2, 0.005))


@pytest.mark.parametrize(
    ("name", "xml", "message"),
    [
        ("no_encoding", GOOD_XML.split("<encoding>")[0] + "</ismrmrdHeader>", "encoding"),
        (
            "no_fov",
            GOOD_XML.replace(
                "<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>", "</reconSpace>"
            ),
            "fieldOfView_mm|schema",
        ),
        (
            "no_matrix",
            GOOD_XML.replace(
                "<matrixSize><x>16</x><y>2</y><z>1</z></matrixSize>\n   <fieldOfView_mm>"
                "<x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>",
                "</encodedSpace>",
            ),
            "matrixSize|schema",
        ),
    ],
)
def test_header_missing_fields(tmp_path: Path, name: str, xml: str, message: str) -> None:
    path = tmp_path / f"{name}.h5"
    _write_with_header(path, xml)
    with pytest.raises(InputError, match=rf"{name}\.h5.*({message})"):
        read_mrd(path)


def test_differing_sample_counts(tmp_path: Path) -> None:
    path = tmp_path / "ragged.h5"
    _write_with_header(path, GOOD_XML, samples=(16, 12))
    with pytest.raises(InputError, match=r"ragged\.h5.*number_of_samples"):
        read_mrd(path)


def test_missing_dataset_group(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_group("other")
    with pytest.raises(InputError, match=r"empty\.h5"):
        read_mrd(path)
    with pytest.raises(InputError, match=r"empty\.h5.*no group 'dataset'"):
        read_mrd(path, group="dataset")


def test_write_rejects_labels_ismrmrd_cannot_store(tmp_path: Path) -> None:
    raw, _ = cartesian_raw()
    raw.labels["slice"] = raw.labels["slice"] - 1
    path = tmp_path / "bad.h5"
    with pytest.raises(InputError, match=r"bad\.h5.*label slice"):
        write_mrd(raw, path)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_provenance_with_any_text_round_trips(tmp_path: Path) -> None:
    """The XML header is UTF-8: provenance notes with '×', '…' or accented paths read back (Python and C++)."""
    raw = RawData(torch.zeros(1, 4, 4, dtype=torch.complex64), provenance={"fov_source": "220 × 220 mm … é"})
    path = tmp_path / "utf8.h5"
    write_mrd(raw, path)
    assert read_mrd(path).provenance["fov_source"] == "220 × 220 mm … é"
    with h5py.File(path) as f:
        assert f["dataset/xml"][0].startswith(b'<?xml version="1.0" encoding="utf-8"?>')
