"""Write Images: ISMRMRD images (ismrmrd), NIfTI (nibabel) and PNG (matplotlib), each atomically.

Geometry: ``Image.position`` is the patient-frame (ISMRMRD, LPS) position of voxel (z//2, y//2, x//2) and
``read_dir``/``phase_dir``/``slice_dir`` the directions of the x/y/z image axes; NIfTI affines are RAS.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import ismrmrd
import matplotlib.image
import nibabel as nib
import numpy as np

from mrbridge.atomic import atomic_path, atomic_write_bytes
from mrbridge.errors import InputError
from mrbridge.recon.image import Image

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _frames(image: Image) -> np.ndarray:
    """(frames, z, y, x) numpy array of the image data (leading dims flattened)."""
    data = image.data.detach().cpu().numpy()
    return data.reshape(-1, *data.shape[-3:])


def write_image_mrd(image: Image, path: str | Path, *, group: str = "dataset", series: str = "image_0") -> None:
    """Write ``image`` as ISMRMRD images, one (z, y, x) image per leading index, into ``group``/``series``.

    Complex data are stored as complex float, real data as float; FOV and position in mm, as ISMRMRD expects.
    """
    frames = _frames(image)
    leading = image.data.shape[:-3]
    dtype = np.complex64 if np.iscomplexobj(frames) else np.float32
    with atomic_path(path) as tmp:
        tmp.unlink()
        ds = ismrmrd.Dataset(str(tmp), group, create_if_needed=True)
        try:
            for i, frame in enumerate(frames):
                index = np.unravel_index(i, leading) if leading else ()
                img = ismrmrd.Image.from_array(np.ascontiguousarray(frame.astype(dtype)))
                img.field_of_view = tuple(float(f) * 1e3 for f in image.fov)
                img.position = tuple(float(p) * 1e3 for p in image.position)
                img.read_dir = image.read_dir
                img.phase_dir = image.phase_dir
                img.slice_dir = image.slice_dir
                img.image_index = i + 1
                img.image_series_index = 1
                if len(index) >= 2:
                    img.repetition, img.contrast = int(index[-2]), int(index[-1])
                elif len(index) == 1:
                    img.contrast = int(index[0])
                img.image_type = ismrmrd.IMTYPE_COMPLEX if dtype == np.complex64 else ismrmrd.IMTYPE_MAGNITUDE
                ds.append_image(series, img)
        finally:
            ds.close()


def nifti_affine(image: Image) -> np.ndarray:
    """4×4 voxel (x, y, z) → RAS mm affine; voxel centres at (i − n//2)·Δ from ``image.position``."""
    dirs = np.array([image.read_dir, image.phase_dir, image.slice_dir], dtype=float).T  # columns x, y, z
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    rot = lps_to_ras @ dirs @ np.diag(np.array(image.voxel_size) * 1e3)
    centre = np.array([n // 2 for n in image.matrix], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = rot
    affine[:3, 3] = lps_to_ras @ (np.array(image.position) * 1e3) - rot @ centre
    return affine


def write_nifti(image: Image, path: str | Path) -> None:
    """Write the magnitude of ``image`` as NIfTI-1 (x, y, z[, frames]) float32; ``.nii.gz`` is gzipped."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    frames = np.abs(_frames(image)).astype(np.float32)  # (frames, z, y, x)
    data = frames.transpose(3, 2, 1, 0)
    if data.shape[-1] == 1:
        data = data[..., 0]
    nifti = nib.Nifti1Image(data, nifti_affine(image))
    nifti.header.set_xyzt_units("mm")
    raw = nifti.to_bytes()
    atomic_write_bytes(path, gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)


#: small images are enlarged (by whole pixels, no interpolation) to at least this many pixels across
PNG_MIN_WIDTH = 256


def write_png(image: Image, path: str | Path) -> None:
    """Write the magnitude of every (frame, z) slice as a grayscale montage PNG (+y up), scaled to its max;
    montages narrower than PNG_MIN_WIDTH are enlarged by an integer factor (each voxel a block of pixels)."""
    if image.meta.get("method") == "spectrum":
        _write_spectrum_png(image, path)
        return
    frames = np.abs(_frames(image)).astype(np.float32)
    slices = frames.reshape(-1, *frames.shape[-2:])
    n = slices.shape[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ny, nx = slices.shape[-2:]
    montage = np.zeros((rows * ny, cols * nx), dtype=np.float32)
    for i, s in enumerate(slices):
        r, c = divmod(i, cols)
        montage[(rows - 1 - r) * ny : (rows - r) * ny, c * nx : (c + 1) * nx] = s
    zoom = max(1, math.ceil(PNG_MIN_WIDTH / montage.shape[1]))
    montage = np.kron(montage, np.ones((zoom, zoom), dtype=np.float32))
    vmax = float(montage.max()) or 1.0
    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, montage, cmap="gray", vmin=0.0, vmax=vmax, origin="lower", format="png")
    atomic_write_bytes(path, buffer.getvalue())


def extent_mm(shape_yx: tuple[int, ...], fov_xy: tuple[float, ...]) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) in mm from the image centre: voxel i at (i − n//2)·Δ.

    shape_yx: (…, y, x) voxels; fov_xy: (x, y[, z]) extent in m.
    """
    (ny, nx), (fx, fy) = shape_yx[-2:], fov_xy[:2]
    dx, dy = fx * 1e3 / nx, fy * 1e3 / ny
    return ((-(nx // 2) - 0.5) * dx, (nx - nx // 2 - 0.5) * dx, (-(ny // 2) - 0.5) * dy, (ny - ny // 2 - 0.5) * dy)


#: at most this many (frame, z) slices in a figure PNG (the rest are listed as left out in its title)
FIGURE_MAX_SLICES = 16


def write_figure_png(image: Image, path: str | Path) -> None:
    """Write :func:`image_figure` of ``image`` as PNG; spectra (``method`` "spectrum") as :func:`write_png` does."""
    if image.meta.get("method") == "spectrum":
        _write_spectrum_png(image, path)
        return
    buffer = io.BytesIO()
    image_figure(image).savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def image_figure(image: Image) -> Figure:
    """The magnitude as a figure: every (frame, z) slice (up to FIGURE_MAX_SLICES) on axes in mm from the image
    centre (voxel i at (i − n//2)·Δ, +y up), one grey scale from 0 to the maximum, with its colorbar."""
    from matplotlib.figure import Figure

    frames = np.abs(_frames(image)).astype(np.float32)
    slices = frames.reshape(-1, *frames.shape[-2:])
    shown = slices[:FIGURE_MAX_SLICES]
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    (ny, nx), nz = shown.shape[-2:], frames.shape[1]
    dx, dy = image.voxel_size[0] * 1e3, image.voxel_size[1] * 1e3
    extent = extent_mm((ny, nx), image.fov[:2])
    vmax = float(shown.max()) or 1.0
    fig = Figure(figsize=(1.0 + 3.6 * cols, 0.6 + 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    drawn = None
    for i, ax in enumerate(axes):
        if i >= len(shown):
            ax.set_axis_off()
            continue
        drawn = ax.imshow(shown[i], cmap="gray", vmin=0.0, vmax=vmax, origin="lower", interpolation="nearest",
                          extent=extent)
        if len(slices) > 1:
            ax.set_title(f"frame {i // nz}, slice {i % nz}", fontsize=9)
        ax.set_xlabel("x, read (mm)", fontsize=8)
        ax.set_ylabel("y, phase (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    if drawn is not None:
        fig.colorbar(drawn, ax=list(axes), shrink=0.8).set_label("magnitude (a.u.)")
    left_out = f" (first {len(shown)} of {len(slices)} slices)" if len(slices) > len(shown) else ""
    fig.suptitle(f"{image.meta.get('method', 'image')}: {nx}×{ny} voxels of {dx:.3g}×{dy:.3g} mm{left_out}",
                 fontsize=10)
    return fig


def _write_spectrum_png(image: Image, path: str | Path) -> None:
    """Spectra (rows of an image of ``method`` "spectrum") as magnitude against frequency in Hz."""
    from matplotlib.figure import Figure

    rows = np.abs(_frames(image)).reshape(-1, image.data.shape[-1])
    n = rows.shape[-1]
    hz = image.meta["spectrum_first_hz"] + image.meta["spectrum_step_hz"] * np.arange(n)
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for i, row in enumerate(rows[:8]):
        ax.plot(hz, row, lw=0.8, label=f"readout {i}" if len(rows) > 1 else None)
    strong = hz[(rows > 0.01 * rows.max()).any(0)]  # zoom onto the lines: where any spectrum exceeds 1 % of max
    if strong.size:
        half = max(3 * float(np.abs(strong).max()), 200.0)
        ax.set_xlim(max(-half, float(hz[0])), min(half, float(hz[-1])))
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("|spectrum|")
    if len(rows) > 1:
        ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
