"""Read one measured map (or a stack of named maps) from a file into an array, its geometry and unit hints.

Supported: NIfTI (``.nii``, ``.nii.gz``; nibabel), NumPy (``.npy``, ``.npz``), MATLAB (``.mat`` v5 via scipy,
v7.3 via h5py), ISMRMRD images (``.h5``, ``.mrd``; ismrmrd) and DICOM series (a folder, or one file of the
series; pydicom), where one series is one map.

Array order of each format, turned into (z, y, x):

- NIfTI: data[i, j, k] with i along x (as the affine says); the affine maps (i, j, k) to RAS mm.
- NumPy: (z, y, x) or (y, x) (C order); stacked maps put the channel axis first (or last).
- MATLAB: (y, x) or (y, x, z) (rows are y, as ``imagesc`` shows them); stacked maps put channels last (or
  first). v7.3 files are HDF5 and hold the same arrays with their axes reversed.
- ISMRMRD: each image (channels, z, y, x); the images of a series are stacked along z.
- DICOM: each file (rows = y, columns = x); files sorted by position along the slice normal.

Geometry: ``MapData.affine`` maps the voxel index (x, y, z) to a RAS position in metres (DICOM and ISMRMRD
patient coordinates, LPS, are converted). NumPy and MATLAB files may carry ``affine`` (4×4, RAS mm, NIfTI
style), ``voxel_size_mm`` (x, y[, z]) or ``fov_mm`` (x, y[, z]) variables; without any, the affine is None.

Unit hints go to ``MapData.meta``: ``unit`` (stated by the file), ``name`` (variable or series name),
``description`` (NIfTI descrip, DICOM series description), ``field_strength_t``, ``nominal_flip_deg``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import nibabel as nib
import numpy as np
import pydicom
import scipy.io
from pydicom.errors import InvalidDicomError

from mrbridge.errors import InputError

#: variables of NumPy/MATLAB files that describe geometry or units, never maps
GEOMETRY_KEYS = ("affine", "voxel_size_mm", "fov_mm")
#: LPS (DICOM, ISMRMRD patient frame) → RAS (NIfTI)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class MapData:
    """One map as read from a file.

    data: ndarray          # (z, y, x) float64 values as stored (no unit conversion)
    affine: ndarray | None # (4, 4) voxel index (x, y, z, 1) → RAS position (m); None: the file has no geometry
    meta: dict[str, str]   # unit hints: unit, name, description, field_strength_t, nominal_flip_deg
    source: str            # the file (and variable) it came from, for messages
    sha256: str | None     # of the file (None for in-memory arrays)
    """

    data: np.ndarray
    affine: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)
    source: str = "array"
    sha256: str | None = None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, or of a folder's files in name order (a DICOM series)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for p in files:
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def affine_from_voxels(shape_zyx: Sequence[int], voxel_m: Sequence[float] | np.ndarray) -> np.ndarray:
    """Axis-aligned affine (4, 4) with voxel (n//2) of every axis at the origin (the twin's convention)."""
    nz, ny, nx = shape_zyx
    affine = np.diag([*voxel_m, 1.0]).astype(np.float64)
    affine[:3, 3] = -np.array([nx // 2, ny // 2, nz // 2]) * np.asarray(voxel_m)
    return affine


def parse_map_spec(spec: str) -> Path | tuple[Path, str]:
    """A command-line map argument: 'FILE' or 'FILE:KEY' (a variable or image series inside FILE).

    >>> parse_map_spec("maps.h5:t1")
    (PosixPath('maps.h5'), 't1')
    """
    path, sep, key = spec.rpartition(":")
    if not sep or Path(spec).exists() or not path or "/" in key or "\\" in key:
        return Path(spec)
    return Path(path), key


def read_map(path: str | Path, *, key: str | None = None) -> MapData:
    """Read one map from ``path``; ``key`` picks a variable (NumPy, MATLAB) or image series (ISMRMRD)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    reader = _reader(path)
    found = reader(path, [key] if key else None)
    ((_, m),) = found.items()
    m.sha256 = sha256_file(path)
    return m


def read_stacked(path: str | Path, keys: Sequence[str]) -> dict[str, MapData]:
    """Read several named maps from one NumPy or MATLAB file: one variable per key, or one stacked array.

    A stacked array has one axis of length ``len(keys)`` (channels, in the order of ``keys``); ``"_"`` in
    ``keys`` skips a channel. Returns {key: MapData} in the order of ``keys``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if _kind(path) not in ("numpy", "matlab"):
        raise InputError(f"{path}: stacked maps (--keys) need a .npz or .mat file, got '{path.suffix}'")
    found = _reader(path)(path, list(keys))
    digest = sha256_file(path)
    for m in found.values():
        m.sha256 = digest
    return found


# ---- format dispatch ------------------------------------------------------------------------------------
def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm") or name.endswith(".ima"):
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".npz", ".npy")):
        return "numpy"
    if name.endswith(".mat"):
        return "matlab"
    if name.endswith((".h5", ".mrd", ".ismrmrd", ".hdf5")):
        return "ismrmrd"
    raise InputError(
        f"{path}: unknown map format '{path.suffix}'; expected .nii/.nii.gz, .npz/.npy, .mat, "
        "ISMRMRD .h5/.mrd, or a DICOM series (folder or .dcm)"
    )


def _reader(path: Path) -> Any:
    return {
        "nifti": _read_nifti, "numpy": _read_numpy, "matlab": _read_matlab,
        "ismrmrd": _read_ismrmrd, "dicom": _read_dicom,
    }[_kind(path)]


def _as_zyx_from_c(a: np.ndarray, source: str) -> np.ndarray:
    """(y, x) or (z, y, x) numeric → (z, y, x) float64."""
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"{source}: array of shape {a.shape}, expected a 2D (y, x) or 3D (z, y, x) map")
    return _real(a, source)


def _real(a: np.ndarray, source: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise InputError(f"{source}: array of type {a.dtype}, expected real numbers")
    return np.ascontiguousarray(a, dtype=np.float64)


# ---- NIfTI ----------------------------------------------------------------------------------------------
def _read_nifti(path: Path, keys: list[str] | None) -> dict[str, MapData]:
    try:
        img: Any = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float64))
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as err:
        raise InputError(f"{path}: not a readable NIfTI file ({err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise InputError(f"{path}: NIfTI of shape {data.shape}, expected one 2D or 3D map (no time series)")
    affine = np.asarray(img.affine, dtype=np.float64).copy()
    affine[:3] /= 1e3
    hdr = img.header
    meta = {"name": path.name}
    descrip = hdr["descrip"].item().decode(errors="replace").strip("\x00 ")
    intent = hdr["intent_name"].item().decode(errors="replace").strip("\x00 ")
    if descrip:
        meta["description"] = descrip
    if intent:
        meta["unit"] = intent
    return {(keys or ["map"])[0]: MapData(data.transpose(2, 1, 0).copy(), affine, meta, str(path))}


# ---- NumPy and MATLAB -----------------------------------------------------------------------------------
def _read_numpy(path: Path, keys: list[str] | None) -> dict[str, MapData]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable NumPy file ({err})") from None
    if isinstance(loaded, np.ndarray):
        variables = {"array": loaded}
    else:
        variables = {}
        with loaded:
            for k in loaded.files:
                try:
                    variables[k] = loaded[k]
                except ValueError as err:  # object arrays are pickles: never loaded
                    raise InputError(f"{path}: variable '{k}' is not a numeric array ({err}); expected numbers "
                                     "(object/pickled arrays are never loaded)") from None
    return _split(path, variables, keys, matlab=False)


def _read_matlab(path: Path, keys: list[str] | None) -> dict[str, MapData]:
    try:
        major, _ = scipy.io.matlab.matfile_version(str(path))
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: not a MATLAB .mat file ({err})") from None
    if major == 2:
        return _split(path, _read_mat73(path), keys, matlab=True)
    try:
        raw = scipy.io.loadmat(str(path), squeeze_me=False, chars_as_strings=True)
    except (ValueError, OSError, TypeError) as err:
        raise InputError(f"{path}: not a readable MATLAB file ({err})") from None
    variables = {k: v for k, v in raw.items() if not k.startswith("__")}
    return _split(path, variables, keys, matlab=True)


def _read_mat73(path: Path) -> dict[str, np.ndarray]:
    """Top-level variables of a v7.3 (HDF5) .mat file, axes back in MATLAB order; char arrays as str."""
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            for name, obj in f.items():
                if not isinstance(obj, h5py.Dataset) or name.startswith("#"):
                    continue
                value = np.asarray(obj[()])
                cls = obj.attrs.get("MATLAB_class", b"")
                cls = cls.decode() if isinstance(cls, bytes) else str(cls)
                if cls == "char":
                    out[name] = np.array("".join(map(chr, value.T.ravel())))
                elif value.dtype.names:  # complex stored as (real, imag)
                    out[name] = (value["real"] + 1j * value["imag"]).T
                else:
                    out[name] = value.T
    except OSError as err:
        raise InputError(f"{path}: not a readable v7.3 MATLAB file ({err})") from None
    return out


def _text(v: np.ndarray) -> str | None:
    if v.dtype.kind in "US":
        return str(v.item() if v.size == 1 else "".join(v.ravel().astype(str)))
    return None


def _geometry(path: Path, variables: dict[str, np.ndarray], shape_zyx: tuple[int, ...]) -> np.ndarray | None:
    """Affine (m) from the file's geometry variables, or None."""
    if "affine" in variables:
        a = np.asarray(variables["affine"], dtype=np.float64)
        if a.shape != (4, 4):
            raise InputError(f"{path}: variable 'affine' has shape {a.shape}, expected (4, 4) in RAS mm")
        a = a.copy()
        a[:3] /= 1e3
        return a
    nz, ny, nx = shape_zyx
    for name, per in (("voxel_size_mm", (1, 1, 1)), ("fov_mm", (nx, ny, nz))):
        if name in variables:
            v = np.asarray(variables[name], dtype=np.float64).ravel()
            if v.size not in (2, 3) or not np.all(v > 0):
                raise InputError(
                    f"{path}: variable '{name}' is {v.tolist()}, expected 2 or 3 positive lengths (x, y[, z]) in mm"
                )
            if v.size == 2:  # no z: as thick as x is wide (per voxel)
                v = np.append(v, v[0] if name == "voxel_size_mm" else v[0] / nx * nz)
            return affine_from_voxels(shape_zyx, v / np.asarray(per) / 1e3)
    return None


def _to_zyx(a: np.ndarray, matlab: bool, source: str) -> np.ndarray:
    if matlab:
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise InputError(f"{source}: array of shape {a.shape}, expected a MATLAB (y, x) or (y, x, z) map")
        a = a.transpose(2, 0, 1)
    return _as_zyx_from_c(a, source)


def _split(path: Path, variables: dict[str, np.ndarray], keys: list[str] | None, *, matlab: bool) -> dict[str, MapData]:
    """Pick maps out of a NumPy/MATLAB file's variables: by name, or channels of one stacked array."""
    texts = {k: t for k, v in variables.items() if (t := _text(np.asarray(v))) is not None}
    arrays = {
        k: np.asarray(v) for k, v in variables.items()
        if k not in texts and k not in GEOMETRY_KEYS and np.asarray(v).ndim >= 2
    }
    if not arrays:
        raise InputError(f"{path}: no 2D or 3D numeric array found (variables: {', '.join(variables) or 'none'})")
    lower = {k.lower(): k for k in arrays}
    wanted = [k for k in (keys or []) if k != "_"]
    if keys is None or all(k.lower() in lower for k in wanted):
        if keys is None:
            if len(arrays) > 1:
                raise InputError(f"{path}: holds several arrays ({', '.join(arrays)}); name the one to use")
            names = {"map": next(iter(arrays))}
        else:
            names = {k: lower[k.lower()] for k in wanted}
        out = {}
        for key, var in names.items():
            source = f"{path}:{var}"
            data = _to_zyx(arrays[var], matlab, source)
            meta = {"name": var}
            unit = texts.get(f"{var}_unit")
            if unit:
                meta["unit"] = unit
            out[key] = MapData(data, _geometry(path, variables, data.shape), meta, source)
        return out
    if len(keys) == 1:
        raise InputError(f"{path}: no variable '{keys[0]}' (variables: {', '.join(arrays)})")
    return _channels(path, variables, arrays, keys, matlab=matlab)


def _channels(
    path: Path, variables: dict[str, np.ndarray], arrays: dict[str, np.ndarray], keys: list[str], *, matlab: bool
) -> dict[str, MapData]:
    n = len(keys)
    stacked = {k: a for k, a in arrays.items() if a.ndim in (3, 4) and n in (a.shape[0], a.shape[-1])}
    if len(stacked) != 1:
        raise InputError(
            f"{path}: keys {','.join(keys)} are neither variables of the file ({', '.join(arrays)}) nor the "
            f"channels of exactly one array with an axis of length {n} (found {len(stacked)} such arrays)"
        )
    ((var, a),) = stacked.items()
    last_first = (-1, 0) if matlab else (0, -1)
    axis = next(ax for ax in last_first if a.shape[ax] == n)
    other = last_first[1] if axis == last_first[0] else None
    if other is not None and a.shape[other] == n and a.ndim == 3:
        raise InputError(
            f"{path}:{var} has shape {a.shape}: both end axes have length {n}; cannot tell the channel axis"
        )
    channels = np.moveaxis(a, axis, 0)
    out = {}
    for key, ch in zip(keys, channels, strict=True):
        if key == "_":
            continue
        source = f"{path}:{var}[{key}]"
        data = _to_zyx(ch, matlab, source)
        out[key] = MapData(data, _geometry(path, variables, data.shape), {"name": key}, source)
    return out


# ---- ISMRMRD images -------------------------------------------------------------------------------------
def _image_series(path: Path) -> tuple[str, list[str]]:
    """(group, image series names) of an ISMRMRD file."""
    try:
        with h5py.File(path, "r") as f:
            for group in f.values():
                if not isinstance(group, h5py.Group):
                    continue
                series = [k for k, v in group.items() if isinstance(v, h5py.Group) and {"header", "data"} <= set(v)]
                if series:
                    return group.name.strip("/"), series
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5/ISMRMRD file ({err})") from None
    raise InputError(f"{path}: no ISMRMRD image series found (expected a group with images, as ismrmrd writes)")


def _read_ismrmrd(path: Path, keys: list[str] | None) -> dict[str, MapData]:
    group, series = _image_series(path)
    key = keys[0] if keys else None
    if key is None and len(series) > 1:
        raise InputError(f"{path}: holds image series {', '.join(series)}; name the one to use")
    name = key or series[0]
    if name not in series:
        raise InputError(f"{path}: no image series '{name}' (series: {', '.join(series)})")
    ds = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    try:
        images = [ds.read_image(name, i) for i in range(ds.number_of_images(name))]
    finally:
        ds.close()
    images.sort(key=lambda im: (im.slice, float(np.dot(im.position, im.slice_dir))))
    first = images[0]
    if any(im.data.shape[0] != 1 for im in images):
        raise InputError(f"{path}:{name}: images have {first.data.shape[0]} channels, expected one map per image")
    if len(images) > 1 and any(im.data.shape[1] != 1 for im in images):
        raise InputError(f"{path}:{name}: several 3D images; expected one 3D image or a stack of 2D slices")
    data = np.concatenate([im.data[0] for im in images], axis=0)
    source = f"{path}:{name}"
    if np.iscomplexobj(data):
        raise InputError(f"{source}: complex image; a map must be real (magnitude or parameter values)")
    nz, ny, nx = data.shape
    fov = np.asarray(first.field_of_view, dtype=np.float64) / 1e3
    dirs = np.array([first.read_dir, first.phase_dir, first.slice_dir], dtype=np.float64).T  # columns x, y, z
    if len(images) > 1:
        dz = float(np.dot(np.subtract(images[1].position, first.position), first.slice_dir)) / 1e3
        centre = np.asarray(first.position, dtype=np.float64) / 1e3
        steps = np.array([fov[0] / nx, fov[1] / ny, dz])
        offset = np.array([nx // 2, ny // 2, 0])
    else:
        steps = fov / np.array([nx, ny, nz])
        centre = np.asarray(first.position, dtype=np.float64) / 1e3
        offset = np.array([nx // 2, ny // 2, nz // 2])
    affine = np.eye(4)
    affine[:3, :3] = dirs * steps
    affine[:3, 3] = centre - affine[:3, :3] @ offset
    meta = {"name": name}
    for k, v in first.meta.items():
        if k.lower() in ("units", "unit"):
            meta["unit"] = str(v[0] if isinstance(v, list) else v)
        if k.lower() in ("seriesdescription", "imagecomment", "imagecomments"):
            meta["description"] = str(v[0] if isinstance(v, list) else v)
    return {key or "map": MapData(data.astype(np.float64), LPS_TO_RAS @ affine, meta, source)}


# ---- DICOM ----------------------------------------------------------------------------------------------
def _read_dicom(path: Path, keys: list[str] | None) -> dict[str, MapData]:
    folder = path if path.is_dir() else path.parent
    files = sorted(p for p in folder.iterdir() if p.is_file())
    slices = []
    for p in files:
        try:
            slices.append(pydicom.dcmread(p))
        except InvalidDicomError:
            if path.is_dir():
                continue
            raise InputError(f"{p}: not a DICOM file") from None
    if not slices:
        raise InputError(f"{folder}: no DICOM files found")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        if path.is_dir():
            raise InputError(f"{folder}: holds {len(series)} DICOM series; one map is one series (one folder each)")
        slices = [ds for ds in slices if ds.get("SeriesInstanceUID") == pydicom.dcmread(path).get("SeriesInstanceUID")]
    try:
        iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
        spacing = np.asarray(slices[0].PixelSpacing, dtype=np.float64)  # (between rows = y, between columns = x)
        normal = np.cross(iop[:3], iop[3:])
        slices.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)))
        planes = [
            ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1.0))
            + float(ds.get("RescaleIntercept", 0.0))
            for ds in slices
        ]
        first = np.asarray(slices[0].ImagePositionPatient, dtype=np.float64)
        if len(slices) > 1:
            step_z = (np.asarray(slices[-1].ImagePositionPatient, dtype=np.float64) - first) / (len(slices) - 1)
        else:
            step_z = normal * float(slices[0].get("SliceThickness", 1.0))
    except AttributeError as err:
        raise InputError(f"{folder}: DICOM without image geometry ({err}); expected MR images of one map") from None
    if len({p.shape for p in planes}) != 1:
        raise InputError(f"{folder}: DICOM images of different sizes {sorted({p.shape for p in planes})}")
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * spacing[1]
    affine[:3, 1] = iop[3:] * spacing[0]
    affine[:3, 2] = step_z
    affine[:3, 3] = first
    affine[:3] /= 1e3
    ds0 = slices[0]
    meta = {"name": str(ds0.get("SeriesDescription", folder.name))}
    if ds0.get("SeriesDescription"):
        meta["description"] = str(ds0.SeriesDescription)
    unit = ds0.get("Units") or ds0.get("RescaleType")
    if unit and str(unit).upper() != "US":
        meta["unit"] = str(unit)
    if ds0.get("MagneticFieldStrength"):
        meta["field_strength_t"] = str(float(ds0.MagneticFieldStrength))
    if ds0.get("FlipAngle"):
        meta["nominal_flip_deg"] = str(float(ds0.FlipAngle))
    return {(keys or ["map"])[0]: MapData(np.stack(planes), LPS_TO_RAS @ affine, meta, str(folder))}
