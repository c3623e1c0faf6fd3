"""Siemens twix + Pulseq .seq → RawData, on real scanner files (../shared/data) and on .seq files written here."""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pypulseq as pp
import pytest
import torch
import twixtools

from mrbridge.errors import InputError
from mrbridge.raw.convert import convert
from mrbridge.raw.mrd import read_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.raw.twix import read_twix
from mrbridge.recon.pipeline import Recon, ReconConfig
from tests.helpers import nrmse, shared_data

PRISMA_GRE = "11_from_GRE_to_EPI__01_GRE"
DUMMY_GRE = "02_basic_gradient_echo__07_GRE_xSpoil_yRephase_RFspoilADC_dummy"
EPI = "11_from_GRE_to_EPI__05_EPI"
#: (readouts, samples, coils, matrix x/y, trajectory)
EXPECTED = {
    PRISMA_GRE: (256, 256, 1, 256, "cartesian"),
    DUMMY_GRE: (256, 256, 1, 256, "cartesian"),
    EPI: (128, 152, 4, 128, "epi"),
}
#: EPI gradient delay (s) that minimises the N/2 ghost on this scanner (found by a search over ±6 µs)
EPI_DELAY = -3e-6


def _files(name: str) -> tuple[Path, Path]:
    return shared_data(name + ".dat"), shared_data(name + ".seq")


_cache: dict[str, RawData] = {}


def _raw(name: str) -> RawData:
    if name not in _cache:
        _cache[name] = read_twix(*_files(name))
    return _cache[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_real_file_shapes_labels_and_header(name: str) -> None:
    n_ro, n_s, coils, n, trajectory = EXPECTED[name]
    raw = _raw(name)
    dat, seq = _files(name)
    assert raw.kdata.shape == (coils, n_ro, n_s) and raw.kdata.dtype == torch.complex64
    assert raw.traj is not None and raw.traj.shape == (n_ro, n_s, 3)
    assert raw.sample_time is not None and raw.sample_time.shape == (n_ro, n_s)
    assert bool((raw.sample_time.diff(dim=1) > 0).all())
    assert bool((raw.sample_time[1:, 0] > raw.sample_time[:-1, 0]).all())
    assert raw.header.trajectory == trajectory
    assert raw.header.encoded_matrix == (n, n, 1) and raw.header.encoded_fov[:2] == (0.256, 0.256)
    assert raw.header.coils == coils and raw.header.field_strength_t == pytest.approx(2.89, abs=0.01)
    assert raw.header.larmor_hz == pytest.approx(42.577e6 * raw.header.field_strength_t, rel=1e-3)
    assert len(raw.header.te) == 1 and 0 < raw.header.te[0] < 0.1
    # every phase-encode line exactly once, in one contrast and repetition
    lines = raw.labels["kspace_encode_step_1"]
    assert torch.equal(lines.sort().values, torch.arange(n))
    assert int(raw.labels["contrast"].max()) == 0 and int(raw.labels["repetition"].max()) == 0
    assert float(raw.traj[:, raw.center_sample, 0].abs().max()) <= 0.5 / 0.256 + 1e-3  # k_x = 0 within ½ step
    assert raw.noise is None  # these files hold no noise-adjust scan
    assert raw.provenance["dat_sha256"] == hashlib.sha256(dat.read_bytes()).hexdigest()
    assert raw.provenance["seq_sha256"] == hashlib.sha256(seq.read_bytes()).hexdigest()


def test_prisma_gre_trajectory_is_the_cartesian_grid_of_the_fov() -> None:
    raw = _raw(PRISMA_GRE)
    assert raw.traj is not None
    dk = 1 / 0.256
    kx, ky = raw.traj[..., 0].double(), raw.traj[:, raw.center_sample, 1].double()
    assert torch.allclose(kx.diff(dim=1), torch.full_like(kx[:, 1:], dk), atol=1e-3 * dk)
    order = raw.labels["kspace_encode_step_1"].argsort()
    assert torch.allclose(ky[order].diff(), torch.full((255,), dk, dtype=torch.float64), atol=1e-3 * dk)
    assert torch.allclose(ky, (raw.labels["kspace_encode_step_1"] - 128).double() * dk, atol=1e-3 * dk)
    assert float(raw.traj[..., 2].abs().max()) < 0.01 * dk


def test_epi_alternates_readout_direction_with_ramp_sampling() -> None:
    raw = _raw(EPI)
    assert raw.traj is not None
    kx = raw.traj[..., 0]
    direction = torch.sign(kx[:, -1] - kx[:, 0])
    assert torch.equal(direction[1:], -direction[:-1])
    step = kx[0].diff().abs()
    assert float(step[0]) < 0.6 * float(step[len(step) // 2])  # samples on the ramps are closer in k
    ky = raw.traj[:, raw.center_sample, 1]
    assert torch.allclose(ky.diff(), torch.full((127,), -1 / 0.256), atol=1e-3)  # one blip per line, top down


def test_gre_data_with_epi_sequence_names_both_files_and_counts() -> None:
    dat, _ = _files(PRISMA_GRE)
    _, seq = _files(EPI)
    with pytest.raises(InputError) as err:
        read_twix(dat, seq)
    msg = str(err.value)
    assert dat.name in msg and seq.name in msg and "256 readouts" in msg and "128 ADC events" in msg


def test_sample_count_mismatch_is_an_input_error(tmp_path: Path) -> None:
    dat, seq = _files(PRISMA_GRE)
    text = seq.read_text()
    adc = text.index("[ADC]")
    end = text.index("[", adc + 1)
    block = re.sub(r"^(\s*\d+) 256 12500 ", r"\1 128 25000 ", text[adc:end], flags=re.M)
    short = tmp_path / "short_adc.seq"
    short.write_text((text[:adc] + block + text[end:]).split("\n[SIGNATURE]")[0] + "\n")  # edited: unsigned
    with pytest.raises(InputError, match=r"256 samples .* has 128"):
        read_twix(dat, short)


@pytest.mark.parametrize("keep", [0.1, 0.8, 0.999])
def test_truncated_dat_is_a_clear_input_error(tmp_path: Path, keep: float) -> None:
    dat, seq = _files(DUMMY_GRE)
    data = dat.read_bytes()
    cut = tmp_path / dat.name
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=re.escape(str(cut))):
        read_twix(cut, seq)
    assert dat.read_bytes() == data  # input untouched


def test_wrong_kinds_of_file_are_input_errors(tmp_path: Path) -> None:
    dat, seq = _files(PRISMA_GRE)
    empty, junk = tmp_path / "empty.seq", tmp_path / "junk.dat"
    empty.write_text("")
    junk.write_bytes(bytes(100_000))
    cases = [
        (dat, dat, "not a text Pulseq file"),
        (dat, empty, "not a Pulseq file"),
        (tmp_path / "none.dat", seq, "no such twix"),
        (junk, seq, "header could not be parsed"),
        (seq, seq, "header could not be parsed"),
    ]
    for d, s, expected in cases:
        with pytest.raises(InputError, match=expected):
            read_twix(d, s)


def test_convert_writes_ismrmrd_that_reads_back(tmp_path: Path) -> None:
    dat, seq = _files(EPI)
    out = tmp_path / "epi.h5"
    raw = convert(dat, seq, out)
    back = read_mrd(out)
    assert torch.equal(back.kdata, raw.kdata) and back.header.trajectory == "epi"
    assert back.traj is not None and raw.traj is not None
    assert torch.allclose(back.traj, raw.traj, atol=1e-3)
    for name, values in raw.labels.items():
        assert torch.equal(back.labels[name], values), name
    ds = ismrmrd.Dataset(str(out), "dataset", create_if_needed=False)  # the ismrmrd package's own reader
    try:
        assert ds.number_of_acquisitions() == 128
        acq = ds.read_acquisition(5)
        assert np.array_equal(acq.data, raw.kdata[:, 5].numpy())
    finally:
        ds.close()


def _noise_scan(template: Any, rng: np.random.Generator) -> Any:
    """A noise-adjust mdb (seeded Gaussian samples) shaped like ``template``."""
    mdb = template.convert_to_local()
    mdb.data = (rng.standard_normal((1, 128)) + 1j * rng.standard_normal((1, 128))).astype(np.complex64)
    mdb.clear_all_flags()
    mdb.add_flag("NOISEADJSCAN")
    return mdb


@pytest.mark.parametrize("noise_in", ["prescan", "last measurement"])
def test_multi_raid_file_takes_the_last_measurement_and_its_noise(tmp_path: Path, noise_in: str) -> None:
    """A two-measurement VE file written by twixtools: noise-adjust prescan (or noise in the image scan)."""
    dat, seq = _files(PRISMA_GRE)
    scan = twixtools.read_twix(str(dat), verbose=False, parse_pmu=False, parse_geometry=False, keep_acqend=True)[-1]
    rng = np.random.default_rng(7)
    noise = [_noise_scan(scan["mdb"][0], rng) for _ in range(3)]
    image = [m if m.is_flag_set("ACQEND") else m.convert_to_local() for m in scan["mdb"]]
    first = {k: scan[k] for k in ("hdr_str", "raidfile_hdr")}
    last = dict(first)
    if noise_in == "prescan":
        first["mdb"], last["mdb"] = [*noise, scan["mdb"][-1]], image
    else:
        first["mdb"], last["mdb"] = [scan["mdb"][0].convert_to_local(), scan["mdb"][-1]], [*noise, *image]
    multi = tmp_path / "meas_multi.dat"
    twixtools.write_twix([first, last], str(multi))
    raw = read_twix(multi, seq)
    assert torch.equal(raw.kdata, _raw(PRISMA_GRE).kdata)
    assert raw.noise is not None and raw.noise.shape == (1, 3 * 128)
    assert np.array_equal(raw.noise.numpy(), np.concatenate([m.data for m in noise], axis=1))


# ---------------------------------------------------------------- .seq files written here (pypulseq)


def _multi_echo_gre(
    path: Path, *, labels: bool, echoes: int = 3, nx: int = 16, ny: int = 8, slices: int = 1, repeats: int = 1
) -> None:
    """A small 2-D multi-echo GRE (monopolar echoes with fly-back), slices 1 cm apart, repeated;
    with labels: a NOISE readout first and LIN counting the lines down (no ECO label)."""
    system = pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s")
    seq = pp.Sequence(system)
    fov = 0.2
    seq.set_definition("FOV", [fov, fov, 0.005])
    rf, gz, gz_reph = pp.make_sinc_pulse(
        flip_angle=np.deg2rad(15),
        duration=1e-3,
        slice_thickness=0.005,
        apodization=0.5,
        time_bw_product=4,
        system=system,
        return_gz=True,
        delay=system.rf_dead_time,
    )
    gx = pp.make_trapezoid("x", flat_area=nx / fov, flat_time=1.6e-3, system=system)
    adc = pp.make_adc(nx, duration=gx.flat_time, delay=gx.rise_time, system=system)
    pre = pp.make_trapezoid("x", area=-gx.area / 2, duration=1e-3, system=system)
    fly = pp.make_trapezoid("x", area=-gx.area, duration=1e-3, system=system)
    if labels:
        seq.add_block(adc, pp.make_label(type="SET", label="NOISE", value=True))
        seq.add_block(pp.make_delay(1e-3), pp.make_label(type="SET", label="NOISE", value=False))
    for _, s, i in itertools.product(range(repeats), range(slices), range(ny)):
        pe = pp.make_trapezoid("y", area=(i - ny // 2) / fov, duration=1e-3, system=system)
        rf_s = copy.copy(rf)
        rf_s.freq_offset = gz.amplitude * 0.01 * s
        seq.add_block(rf_s, gz)
        seq.add_block(pre, pe, gz_reph)
        for e in range(echoes):
            extra = [pp.make_label(type="SET", label="LIN", value=ny - 1 - i)]
            seq.add_block(gx, adc, *(extra if labels else []))
            if e < echoes - 1:
                seq.add_block(fly)
        seq.add_block(pp.make_delay(5e-3))
    seq.write(str(path))


@pytest.mark.parametrize("labels", [False, True])
def test_multi_echo_gre_sorts_by_sequence(tmp_path: Path, labels: bool) -> None:
    path = tmp_path / "me_gre.seq"
    _multi_echo_gre(path, labels=labels)
    info = read_seq_readouts(path)
    assert info.seq_labels == (("LIN",) if labels else ()) and info.readouts == 24
    assert info.noise_samples.tolist() == ([16] if labels else [])
    assert info.trajectory == "cartesian" and info.matrix == (16, 8, 1) and info.center_sample == 8
    assert np.array_equal(info.labels["contrast"], np.tile(np.arange(3), 8))
    lines = np.arange(8)[::-1] if labels else np.arange(8)  # the sequence's own counter wins
    assert np.array_equal(info.labels["kspace_encode_step_1"], np.repeat(lines, 3))
    assert np.array_equal(info.labels["repetition"], np.zeros(24))
    assert len(info.te) == 3 and np.all(np.diff(info.te) > 1.5e-3)  # one echo time per contrast, increasing
    assert info.flip_angle_deg == pytest.approx([15.0], abs=0.1)


def test_unlabelled_slices_and_repetitions_come_from_excitation_frequency_and_recurrence(tmp_path: Path) -> None:
    path = tmp_path / "me_gre_2slices_2reps.seq"
    _multi_echo_gre(path, labels=False, slices=2, repeats=2)
    info = read_seq_readouts(path)
    assert info.readouts == 96 and len(info.tr) == 1 and info.tr[0] > 5e-3 and len(info.te) == 3
    assert np.array_equal(info.labels["slice"], np.tile(np.repeat(np.arange(2), 24), 2))
    assert np.array_equal(info.labels["repetition"], np.repeat(np.arange(2), 48))
    assert np.array_equal(info.labels["contrast"], np.tile(np.arange(3), 32))


# ---------------------------------------------------------------- reconstructions (Recon of helper E)


def _magnitude(raw: RawData, method: str) -> torch.Tensor:
    return Recon(ReconConfig(method=method, iterations=8))(raw).data.abs().reshape(raw.header.recon_matrix[1], -1)


def _object_checks(image: torch.Tensor) -> None:
    """Bright object in the centre, dark corners, the object's centroid near the FOV centre."""
    n, q = image.shape[0], image.shape[0] // 8
    centre = image[n // 2 - q : n // 2 + q, n // 2 - q : n // 2 + q].mean()
    corners = torch.stack([image[:q, :q], image[:q, -q:], image[-q:, :q], image[-q:, -q:]]).mean()
    assert float(centre) > 10 * float(corners)
    y, x = torch.nonzero(image > 0.2 * image.max(), as_tuple=True)
    assert abs(float(y.float().mean()) - n / 2) < 0.12 * n and abs(float(x.float().mean()) - n / 2) < 0.12 * n


@pytest.mark.slow
@pytest.mark.parametrize("name", [PRISMA_GRE, DUMMY_GRE])
def test_gre_fft_recon_equals_trajectory_recon(name: str) -> None:
    raw = _raw(name)
    fft, exact = _magnitude(raw, "fft"), _magnitude(raw, "adjoint")
    assert nrmse(exact / exact.norm(), fft / fft.norm()) < 1e-4
    _object_checks(fft)


@pytest.mark.slow
def test_epi_recon_shows_the_object_and_the_gradient_delay_reduces_the_ghost() -> None:
    dat, seq = _files(EPI)

    def ghost(image: torch.Tensor) -> float:  # energy in the outer quarters along y, where the N/2 ghost lands
        return float((image[:32].square().sum() + image[-32:].square().sum()) / image.square().sum())

    plain, delayed = (
        _magnitude(_raw(EPI), "adjoint"),
        _magnitude(read_twix(dat, seq, trajectory_delay=EPI_DELAY), "adjoint"),
    )
    assert ghost(delayed) < 0.5 * ghost(plain)
    _object_checks(delayed)
