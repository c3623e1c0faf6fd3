"""Image writers: read back with ismrmrd, nibabel and matplotlib."""

from __future__ import annotations

import math
from pathlib import Path

import ismrmrd
import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.recon.image import Image
from mrbridge.recon.image_io import (
    PNG_MIN_WIDTH,
    extent_mm,
    image_figure,
    write_figure_png,
    write_image_mrd,
    write_nifti,
    write_png,
)


def example(complex_data: bool = True) -> Image:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(2, 1, 3, 8, 6, dtype=torch.complex64, generator=gen)
    return Image(
        data=data if complex_data else data.abs(),
        fov=(0.12, 0.16, 0.015),
        position=(0.01, -0.02, 0.03),
        read_dir=(0.0, 1.0, 0.0),
        phase_dir=(-1.0, 0.0, 0.0),
        slice_dir=(0.0, 0.0, 1.0),
    )


@pytest.mark.parametrize("complex_data", [True, False])
def test_ismrmrd_images_round_trip(tmp_path: Path, complex_data: bool) -> None:
    image = example(complex_data)
    write_image_mrd(image, tmp_path / "img.h5")
    ds = ismrmrd.Dataset(str(tmp_path / "img.h5"), "dataset", create_if_needed=False)
    try:
        assert ds.number_of_images("image_0") == 2
        for i in range(2):
            img = ds.read_image("image_0", i)
            assert np.array_equal(img.data.reshape(3, 8, 6), image.data[i, 0].numpy())
            assert np.allclose(img.field_of_view, (120.0, 160.0, 15.0))
            assert np.allclose(img.position, (10.0, -20.0, 30.0))
            assert np.allclose(img.read_dir, (0.0, 1.0, 0.0))
            assert img.repetition == i
    finally:
        ds.close()


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_nifti_data_and_affine(tmp_path: Path, name: str) -> None:
    image = example()
    write_nifti(image, tmp_path / name)
    nii = nib.load(tmp_path / name)
    data = np.asarray(nii.dataobj)
    assert data.shape == (6, 8, 3, 2)
    assert np.allclose(data[..., 1], image.data[1, 0].abs().numpy().transpose(2, 1, 0))
    # voxel sizes 20, 20, 5 mm; the centre voxel (3, 4, 1) sits at the position, LPS → RAS
    assert np.allclose(nib.affines.voxel_sizes(nii.affine), (20.0, 20.0, 5.0))
    assert np.allclose(nii.affine @ [3, 4, 1, 1], [-10.0, 20.0, 30.0, 1.0])
    # x runs along read_dir (LPS +y → RAS −y)
    assert np.allclose(nii.affine[:3, 0], [0.0, -20.0, 0.0])
    with pytest.raises(InputError, match=r"\.nii"):
        write_nifti(image, tmp_path / "img.png")


def test_png_is_a_grayscale_montage(tmp_path: Path) -> None:
    image = example()
    write_png(image, tmp_path / "img.png")
    png = matplotlib.image.imread(tmp_path / "img.png")
    zoom = math.ceil(PNG_MIN_WIDTH / (3 * 6))  # small montages are enlarged by whole pixels
    assert png.shape[:2] == (2 * 8 * zoom, 3 * 6 * zoom)  # 6 slices in 2 rows of 3
    assert np.array_equal(png[::zoom, ::zoom], png[zoom - 1 :: zoom, zoom - 1 :: zoom])  # blocks, no interpolation
    assert np.allclose(png[..., 0], png[..., 1]) and np.allclose(png[..., 0], png[..., 2])
    assert png[..., 0].max() == pytest.approx(1.0)
    assert list(tmp_path.iterdir()) == [tmp_path / "img.png"]  # no temp files left


def test_png_figure_has_mm_axes_and_a_colorbar(tmp_path: Path) -> None:
    image = example()  # 6 slices of 8 × 6 voxels over 120 × 160 mm: voxels 20 × 20 mm
    fig = image_figure(image)
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_xlabel()]
    assert len(panels) == 6
    left, right, bottom, top = extent_mm((8, 6), image.fov)
    assert (left, right, bottom, top) == pytest.approx((-70.0, 50.0, -90.0, 70.0))  # voxel i at (i − n//2)·20 mm
    for ax in panels:
        assert ax.get_xlim() == pytest.approx((left, right)) and ax.get_ylim() == pytest.approx((bottom, top))
        assert "mm" in ax.get_xlabel() and "mm" in ax.get_ylabel()
        assert ax.get_images()[0].get_clim() == pytest.approx((0.0, float(image.data.abs().max())))
    colorbars = [ax for ax in fig.axes if ax.get_ylabel() == "magnitude (a.u.)"]
    assert len(colorbars) == 1
    write_figure_png(image, tmp_path / "fig.png")
    png = matplotlib.image.imread(tmp_path / "fig.png")
    assert png.shape[1] > 600 and png[..., :3].std() > 0.05
    assert list(tmp_path.iterdir()) == [tmp_path / "fig.png"]
