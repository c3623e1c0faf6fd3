"""Synthetic measured maps, and writers that store them as real files in every format calibration reads.

World geometry (RAS, mm): voxel (i, j, k) of an (nz, ny, nx) map at ((i − nx//2)·dx, (j − ny//2)·dy,
(k − nz//2)·dz); DICOM and ISMRMRD store the same points in LPS.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import ismrmrd
import nibabel as nib
import numpy as np
import scipy.io
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

VOXEL_MM = (220 / 32, 220 / 32, 5.0)
NAMES = ("pd", "t1", "t2", "b0", "b1")


def synthetic_maps(nz: int = 3, n: int = 32) -> dict[str, np.ndarray]:
    """Head-like maps (z, y, x): PD, T1 [ms], T2 [s], B0 [Hz], B1 [relative]; zero PD outside an ellipse."""
    z, y, x = np.meshgrid(np.arange(nz) - nz // 2, (np.arange(n) - n // 2) / (n / 2),
                          (np.arange(n) - n // 2) / (n / 2), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 < 1
    inner = (x / 0.3) ** 2 + ((y - 0.1) / 0.4) ** 2 < 1
    pd = np.where(head, np.where(inner, 0.8, 0.65) + 0.02 * z, 0.0)
    t1 = np.where(head, np.where(inner, 1300.0, 830.0), 0.0)  # ms
    t2 = np.where(head, np.where(inner, 0.110, 0.080), 0.0)  # s
    b0 = 40.0 * x - 25.0 * y + 5.0 * z  # Hz
    b1 = 1.0 + 0.15 * np.exp(-(x**2 + y**2) / 0.3) - 0.05
    return {"pd": pd, "t1": t1, "t2": t2, "b0": b0, "b1": b1}


def affine_mm(shape_zyx: tuple[int, ...], voxel_mm: tuple[float, float, float] = VOXEL_MM) -> np.ndarray:
    nz, ny, nx = shape_zyx
    a = np.diag([*voxel_mm, 1.0])
    a[:3, 3] = -np.array([nx // 2, ny // 2, nz // 2]) * np.asarray(voxel_mm)
    return a


def affine_m(shape_zyx: tuple[int, ...]) -> np.ndarray:
    """The same affine in metres (as MapData holds it)."""
    a = affine_mm(shape_zyx)
    a[:3] /= 1e3
    return a


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None, *, unit: str = "") -> Path:
    affine = affine if affine is not None else affine_mm(data.shape)
    img = nib.Nifti1Image(data.transpose(2, 1, 0).astype(np.float32), affine)
    if unit:
        img.header["intent_name"] = unit.encode()
    nib.save(img, str(path))
    return path


def write_npz(path: Path, data: np.ndarray) -> Path:
    np.savez(path, map=data, voxel_size_mm=np.asarray(VOXEL_MM))
    return path


def matlab_order(data: np.ndarray) -> np.ndarray:
    """(z, y, x) → MATLAB (y, x, z)."""
    return np.ascontiguousarray(data.transpose(1, 2, 0))


def write_mat_separate(path: Path, maps: dict[str, np.ndarray]) -> Path:
    variables = {k.upper(): matlab_order(v) for k, v in maps.items()}
    scipy.io.savemat(path, {**variables, "voxel_size_mm": np.asarray(VOXEL_MM)})
    return path


def write_mat_stacked(path: Path, maps: dict[str, np.ndarray], names: tuple[str, ...] = NAMES, *,
                      geometry: bool = True) -> Path:
    """One array (y, x[, z], channels); with ``geometry`` also a voxel_size_mm variable."""
    stacked = np.stack([matlab_order(maps[k]) for k in names], axis=-1)
    if stacked.shape[2] == 1:
        stacked = stacked[:, :, 0]  # a 2D slice: (y, x, channels)
    scipy.io.savemat(path, {"maps": stacked, **({"voxel_size_mm": np.asarray(VOXEL_MM)} if geometry else {})})
    return path


def write_mat73(path: Path, maps: dict[str, np.ndarray]) -> Path:
    """A v7.3 .mat file (HDF5 with MATLAB's 512-byte header), written as MATLAB does: axes reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, data in {**{k.upper(): matlab_order(v) for k, v in maps.items()},
                           "voxel_size_mm": np.asarray(VOXEL_MM)[None]}.items():
            ds = f.create_dataset(name, data=np.asarray(data, dtype=np.float64).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with path.open("r+b") as f:
        f.write(header.ljust(512, b"\x00"))
    return path


def write_ismrmrd_images(path: Path, maps: dict[str, np.ndarray], *, slices: bool = True) -> Path:
    """One image series per map; ``slices``: one 2D image per z (else one 3D image)."""
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    dx, dy, dz = VOXEL_MM
    for name, data in maps.items():
        nz, ny, nx = data.shape
        frames = [(data[k:k + 1], k) for k in range(nz)] if slices else [(data, 0)]
        for frame, k in frames:
            img = ismrmrd.Image.from_array(np.ascontiguousarray(frame.astype(np.float32)))
            img.field_of_view = (nx * dx, ny * dy, frame.shape[0] * dz)
            img.position = (0.0, 0.0, ((k - nz // 2) if slices else 0) * dz)  # LPS of voxel (x//2, y//2, z//2)
            img.read_dir, img.phase_dir, img.slice_dir = (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)
            img.slice = k
            img.image_type = ismrmrd.IMTYPE_MAGNITUDE
            ds.append_image(name, img)
    ds.close()
    return path


def write_dicom_series(folder: Path, data: np.ndarray, *, description: str = "map", units: str | None = None,
                       order: list[int] | None = None) -> Path:
    """One DICOM MR image per z slice (int16 with a rescale slope); files written in ``order``."""
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = data.shape
    dx, dy, dz = VOXEL_MM
    slope = float(np.abs(data).max()) / 30000 or 1.0
    series = generate_uid()
    for n, k in enumerate(order or range(nz)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = "1.2.3"
        ds.SeriesInstanceUID = series
        ds.Modality = "MR"
        ds.SeriesDescription = description
        ds.ContentDate = datetime.date(2024, 1, 1).strftime("%Y%m%d")
        ds.MagneticFieldStrength = 3.0
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.ImagePositionPatient = [(nx // 2) * dx, (ny // 2) * dy, (k - nz // 2) * dz]  # LPS of voxel (0, 0)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        if units:
            ds.Units = units
        ds.PixelData = np.round(data[k] / float(f"{slope:.10g}")).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
    return folder
