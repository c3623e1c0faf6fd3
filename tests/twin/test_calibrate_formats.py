"""The same synthetic maps, written in every supported format, calibrate to the same twin."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mrbridge.twin.calibrate import calibrate
from mrbridge.twin.readers import MapData, parse_map_spec, read_map, read_stacked
from mrbridge.twin.twin import Twin
from tests.twin.mapfiles import (
    VOXEL_MM,
    affine_m,
    synthetic_maps,
    write_dicom_series,
    write_ismrmrd_images,
    write_mat73,
    write_mat_separate,
    write_mat_stacked,
    write_nifti,
    write_npz,
)

KEYS = ["PD", "T1", "T2", "B0", "B1"]


def _nifti(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: write_nifti(tmp / f"{k}.nii.gz", v) for k, v in maps.items()}


def _npz(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: write_npz(tmp / f"{k}.npz", v) for k, v in maps.items()}


def _mat_separate(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(read_stacked(write_mat_separate(tmp / "maps.mat", maps), KEYS))


def _mat_stacked(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(read_stacked(write_mat_stacked(tmp / "maps.mat", maps), KEYS))


def _mat73(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(read_stacked(write_mat73(tmp / "maps73.mat", maps), KEYS))


def _ismrmrd_slices(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    path = write_ismrmrd_images(tmp / "maps.h5", maps, slices=True)
    return {k: (path, k) for k in maps}


def _ismrmrd_volume(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    path = write_ismrmrd_images(tmp / "maps.h5", maps, slices=False)
    return {k: (path, k) for k in maps}


def _dicom(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    order = [2, 0, 1]  # files not in slice order: the reader sorts by position
    return {k: write_dicom_series(tmp / k, v, description=k, order=order) for k, v in maps.items()}


def _mixed(tmp: Path, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    h5 = write_ismrmrd_images(tmp / "t2.h5", {"t2": maps["t2"]})
    return {
        "pd": write_nifti(tmp / "pd.nii", maps["pd"]),
        "t1": write_dicom_series(tmp / "t1", maps["t1"]),
        "t2": h5,
        "b0": write_npz(tmp / "b0.npz", maps["b0"]),
        "b1": read_stacked(write_mat73(tmp / "b1.mat", {"b1": maps["b1"]}), ["B1"])["B1"],
    }


WRITERS: dict[str, Callable[[Path, dict[str, np.ndarray]], dict[str, Any]]] = {
    "nifti": _nifti, "npz": _npz, "mat-separate": _mat_separate, "mat-stacked": _mat_stacked, "mat-v7.3": _mat73,
    "ismrmrd-slices": _ismrmrd_slices, "ismrmrd-volume": _ismrmrd_volume, "dicom": _dicom, "mixed": _mixed,
}


@pytest.fixture(scope="module")
def reference() -> Twin:
    maps = synthetic_maps()
    return calibrate({k: MapData(v, affine_m(v.shape)) for k, v in maps.items()})


def assert_same_twin(twin: Twin, ref: Twin) -> None:
    assert twin.shape == ref.shape
    np.testing.assert_allclose(twin.fov, ref.fov, rtol=1e-6)
    assert torch.equal(twin.pd > 0, ref.pd > 0)
    for name in ("pd", "t1", "t2", "t2dash", "b0", "b1"):
        a, b = getattr(twin, name), getattr(ref, name)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=2e-3 if name == "b0" else 1e-6, err_msg=name)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_calibrates_to_the_same_twin(tmp_path: Path, fmt: str, reference: Twin) -> None:
    maps = synthetic_maps()
    twin = calibrate(WRITERS[fmt](tmp_path, maps))
    assert_same_twin(twin, reference)
    assert twin.provenance["inputs"]["t1"]["unit"] == "ms"
    np.testing.assert_allclose(twin.fov, [32 * VOXEL_MM[0] / 1e3, 32 * VOXEL_MM[1] / 1e3, 3 * VOXEL_MM[2] / 1e3])
    if fmt in ("nifti", "dicom", "npz"):
        assert len(twin.provenance["inputs"]["pd"]["sha256"]) == 64


def test_reference_twin_has_the_synthetic_values(reference: Twin) -> None:
    maps = synthetic_maps()
    tissue = maps["pd"] > 0
    assert torch.equal(reference.pd > 0, torch.from_numpy(tissue))
    np.testing.assert_allclose(reference.t1.numpy()[tissue], maps["t1"][tissue] / 1e3, rtol=1e-6)
    np.testing.assert_allclose(reference.b0.numpy()[tissue], maps["b0"][tissue], atol=1e-4)
    assert reference.provenance["cleaning"]["counts"] == {}


def test_saved_twin_keeps_provenance_with_hashes(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = _nifti(tmp_path, maps)
    twin = calibrate(files, slice=1, matrix=16)
    twin.save(tmp_path / "twin.h5")
    loaded = Twin.load(tmp_path / "twin.h5")
    prov = loaded.provenance
    assert prov["inputs"]["t1"]["sha256"] == hashlib.sha256(files["t1"].read_bytes()).hexdigest()
    assert prov["geometry"]["slice"] == 1
    assert prov["resampling"]["to_yx"] == [16, 16]
    assert loaded.shape == (1, 16, 16)
    np.testing.assert_allclose(loaded.fov, [0.22, 0.22, 0.005])


def test_slice_picks_one_z_plane(tmp_path: Path, reference: Twin) -> None:
    files = _dicom(tmp_path, synthetic_maps())
    twin = calibrate(files, slice=2)
    assert twin.shape == (1, 32, 32)
    np.testing.assert_allclose(twin.pd.numpy()[0], reference.pd.numpy()[2], rtol=2e-4)


def test_dicom_reader_sorts_slices_and_reads_metadata(tmp_path: Path) -> None:
    data = synthetic_maps()["t1"]
    order = list(range(3))
    random.Random(1).shuffle(order)
    m = read_map(write_dicom_series(tmp_path / "t1", data, description="T1 map [ms]", order=order))
    np.testing.assert_allclose(m.data, data, rtol=1e-4, atol=0.1)
    assert m.meta["field_strength_t"] == "3.0"
    assert m.meta["description"] == "T1 map [ms]"
    # voxel (0, 0, 0) lies at RAS (−16·dx, −16·dy, −1·dz) mm
    np.testing.assert_allclose(m.affine[:3, 3] * 1e3, [-16 * VOXEL_MM[0], -16 * VOXEL_MM[1], -VOXEL_MM[2]], atol=1e-6)


def test_stacked_mat_skips_channels_and_names_variables(tmp_path: Path) -> None:
    maps = synthetic_maps()
    path = write_mat_stacked(tmp_path / "m.mat", maps)
    found = read_stacked(path, ["PD", "_", "T2", "_", "_"])
    assert list(found) == ["PD", "T2"]
    np.testing.assert_array_equal(found["T2"].data, maps["t2"])
    assert "maps[T2]" in found["T2"].source


def test_map_specs_name_a_variable_or_series(tmp_path: Path) -> None:
    assert parse_map_spec("maps.h5:t1") == (Path("maps.h5"), "t1")
    assert parse_map_spec("pd.nii.gz") == Path("pd.nii.gz")
    assert parse_map_spec("C:/maps/pd.nii") == Path("C:/maps/pd.nii")
    path = write_ismrmrd_images(tmp_path / "maps.h5", synthetic_maps())
    spec = parse_map_spec(f"{path}:b1")
    assert spec == (path, "b1")
    assert isinstance(spec, tuple)
    np.testing.assert_allclose(read_map(spec[0], key=spec[1]).data, synthetic_maps()["b1"], rtol=1e-6)
