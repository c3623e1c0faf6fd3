"""User mistakes in calibration are clear InputErrors naming the map and file; cleaning is counted, never silent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrbridge.errors import InputError
from mrbridge.twin.calibrate import calibrate, otsu_threshold
from mrbridge.twin.readers import read_map
from tests.twin.mapfiles import affine_mm, synthetic_maps, write_nifti, write_npz


def nifti_maps(tmp: Path, maps: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    maps = maps or synthetic_maps()
    return {k: write_nifti(tmp / f"{k}.nii.gz", v) for k, v in maps.items()}


def test_t1_in_ms_declared_as_seconds_is_caught(tmp_path: Path) -> None:
    files = nifti_maps(tmp_path)
    with pytest.raises(InputError, match=r"t1\.nii\.gz.*'t1'.*830 s.*--t1-unit ms"):
        calibrate(files, units={"t1": "s"})
    twin = calibrate(files, units={"t1": "ms"})
    assert twin.provenance["inputs"]["t1"] == {**twin.provenance["inputs"]["t1"], "unit": "ms", "unit_how": "stated"}


def test_unit_recorded_in_the_file_is_checked(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    files["t1"] = write_nifti(tmp_path / "t1s.nii.gz", maps["t1"], unit="s")  # the file says s, the values are ms
    with pytest.raises(InputError, match=r"t1s\.nii\.gz.*unit 's' in the file.*--t1-unit ms"):
        calibrate(files)
    files["t1"] = write_nifti(tmp_path / "t1ms.nii.gz", maps["t1"], unit="msec")
    assert calibrate(files).provenance["inputs"]["t1"]["unit_how"].startswith("metadata")


def test_flipped_affine_is_an_error_unless_reoriented(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    reference = calibrate(files)
    nx = maps["t1"].shape[2]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, nx - 1  # index i' → i = nx − 1 − i': the same voxels, x stored backwards
    flipped = affine_mm(maps["t1"].shape) @ flip
    files["t1"] = write_nifti(tmp_path / "t1_flipped.nii.gz", maps["t1"][:, :, ::-1], flipped)
    flipped_msg = r"'t1' \(.*t1_flipped\.nii\.gz\) is flipped along x relative to map 'pd'.*--reorient"
    with pytest.raises(InputError, match=flipped_msg):
        calibrate(files)
    twin = calibrate(files, reorient=True)
    np.testing.assert_array_equal(twin.t1.numpy(), reference.t1.numpy())
    assert "flipped along x" in twin.provenance["geometry"]["reoriented"][0]


def test_swapped_axes_are_reoriented(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    reference = calibrate(files)
    swap = np.eye(4)[[1, 0, 2, 3]]  # stored (x, y) swapped
    swapped = affine_mm(maps["b0"].shape) @ swap
    files["b0"] = write_nifti(tmp_path / "b0_t.nii.gz", maps["b0"].transpose(0, 2, 1), swapped)
    with pytest.raises(InputError, match="its x axis is y"):
        calibrate(files)
    np.testing.assert_array_equal(calibrate(files, reorient=True).b0.numpy(), reference.b0.numpy())


def test_mismatched_grids_are_errors(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    files["t2"] = write_nifti(tmp_path / "t2_small.nii.gz", maps["t2"][:, :30])
    with pytest.raises(InputError, match=r"'t2' \(.*t2_small\.nii\.gz: 32×30×3 voxels.*not on the grid of map 'pd'"):
        calibrate(files)
    shifted = affine_mm(maps["t2"].shape)
    shifted[0, 3] += 2.0  # 2 mm off: not a voxel shift
    files["t2"] = write_nifti(tmp_path / "t2_shift.nii.gz", maps["t2"], shifted)
    with pytest.raises(InputError, match=r"t2_shift\.nii\.gz.*maps must share one grid"):
        calibrate(files, reorient=True)
    files["t2"] = write_npz(tmp_path / "t2.npz", maps["t2"][:, :, :31])
    with pytest.raises(InputError, match=r"'t2' \(.*t2\.npz.*31×32×3"):
        calibrate(files)


def test_nans_are_counted_and_masked_or_refused(tmp_path: Path) -> None:
    maps = synthetic_maps()
    t1 = maps["t1"].copy()
    t1[1, 16, 10:15] = np.nan  # 5 voxels in the head
    t1[1, 0, 0] = np.nan  # background: not counted
    maps["t1"] = t1
    files = nifti_maps(tmp_path, maps)
    twin = calibrate(files)
    cleaning = twin.provenance["cleaning"]
    assert cleaning["counts"] == {"nonfinite:t1": 5}
    assert cleaning["voxels_masked"] == 5
    assert (twin.pd.numpy()[1, 16, 10:15] == 0).all()
    assert int((twin.pd > 0).sum()) == int((maps["pd"] > 0).sum()) - 5
    with pytest.raises(InputError, match=r"t1\.nii\.gz: map 't1' has 5 voxel\(s\) in the mask failing 'nonfinite'"):
        calibrate(files, clean="error")


def test_inconsistent_values_are_masked_or_clipped(tmp_path: Path) -> None:
    maps = synthetic_maps()
    maps["t2"] = maps["t2"].copy()
    maps["t2"][1, 16, 16] = 2.0  # T2 2 s > T1 1.3 s
    maps["t2"][1, 16, 17] = -0.01
    maps["b1"] = maps["b1"].copy()
    maps["b1"][0, 16, 16] = 9.0  # outside the plausible range
    files = nifti_maps(tmp_path, maps)
    masked = calibrate(files, clean="mask").provenance["cleaning"]
    assert masked["counts"] == {"nonpositive:t2": 1, "outlier:b1": 1, "t2>t1:t2": 1}
    clipped = calibrate(files, clean="clip")
    c = clipped.provenance["cleaning"]
    assert c["voxels_clipped"] == 3 and c["voxels_masked"] == 0
    assert clipped.t2[1, 16, 16] == clipped.t1[1, 16, 16]
    assert clipped.b1[0, 16, 16] == pytest.approx(5.0)


def test_empty_mask_is_an_error(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    mask = write_nifti(tmp_path / "mask.nii.gz", np.zeros_like(maps["pd"]))
    with pytest.raises(InputError, match=r"mask\.nii\.gz: the mask is empty"):
        calibrate(files, mask=mask)
    maps["pd"] = np.zeros_like(maps["pd"])
    with pytest.raises(InputError, match=r"pd\.nii\.gz: map 'pd' is constant"):
        calibrate(nifti_maps(tmp_path, maps))


def test_given_mask_limits_the_twin(tmp_path: Path) -> None:
    maps = synthetic_maps()
    files = nifti_maps(tmp_path, maps)
    m = np.zeros_like(maps["pd"])
    m[:, 10:20, 10:20] = 1
    twin = calibrate(files, mask=write_nifti(tmp_path / "mask.nii.gz", m))
    assert int((twin.pd > 0).sum()) == 300
    assert twin.provenance["mask"]["voxels"] == 300


def test_bad_requests_name_what_is_wrong(tmp_path: Path) -> None:
    files = nifti_maps(tmp_path)
    with pytest.raises(InputError, match="maps t2 are required"):
        calibrate({k: v for k, v in files.items() if k != "t2"})
    with pytest.raises(InputError, match="T2\\* or T2′, not both"):
        calibrate({**files, "t2star": files["t2"], "t2dash": files["t2"]})
    with pytest.raises(InputError, match="slice 7 is outside the maps' 3 slices"):
        calibrate(files, slice=7)
    with pytest.raises(InputError, match="map name 'T3' is unknown"):
        calibrate({**files, "T3": files["t1"]})
    with pytest.raises(InputError, match=r"voxel_mm .* is for maps without geometry.*pd\.nii\.gz"):
        calibrate(files, voxel_mm=(1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="units given for maps that were not given: t2star"):
        calibrate(files, units={"t2star": "ms"})
    bad = tmp_path / "maps.xyz"
    bad.write_text("not a map")
    with pytest.raises(InputError, match=r"maps\.xyz: unknown map format"):
        read_map(bad)
    with pytest.raises(InputError, match="no such file"):
        read_map(tmp_path / "missing.nii.gz")


def test_otsu_separates_two_classes() -> None:
    values = np.concatenate([np.full(500, 0.05), np.full(300, 0.8)])
    assert 0.05 < otsu_threshold(values) < 0.8
