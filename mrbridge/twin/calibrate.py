"""Calibrate a Twin from measured maps: read, align, decide units, mask, clean, derive T2′, resample, add coils.

>>> twin = calibrate({"pd": "pd.nii.gz", "t1": "t1.nii.gz", "t2": "t2.nii.gz", "b0": "b0.nii.gz"},
...                  units={"t1": "ms"}, matrix=64)  # doctest: +SKIP

Steps (each recorded in ``twin.provenance``):

1. Read every map (:mod:`mrbridge.twin.readers`; paths, (path, variable) pairs, arrays or MapData).
2. Geometry: every map must lie on PD's grid (same shape, affines equal within 1e-3 voxel). A map that is
   the same grid flipped or with axes swapped is an error unless ``reorient=True``, which reorders it onto
   PD's grid; any other difference is an error. Maps without geometry take PD's grid when their shape
   matches; if no map has geometry, ``voxel_mm`` (default 1 mm isotropic, as NIfTI's identity affine) sets it.
3. ``slice`` keeps one z index of 3D maps; without it every slice is kept.
4. Mask: given (non-zero voxels), or PD above Otsu's threshold.
5. Units (:mod:`mrbridge.twin.units`) decided from tissue values and converted to SI.
6. PD already relative (99th percentile in tissue ≤ 1.5) is kept, otherwise scaled so that percentile is 1.
7. Cleaning (:mod:`mrbridge.twin.clean`), counted; outside the mask PD = 0 and the other maps are neutral.
8. T2′: given, or from T2* (1/T2′ = 1/T2* − 1/T2; T2* = T2 → T2′ = inf), else :func:`default_t2dash`.
9. ``matrix``: in-plane resampling over the same FOV (:mod:`mrbridge.twin.resample`).
10. Coils: sensitivities from a multi-coil calibration scan (:mod:`mrbridge.twin.coil_scan`), or one
    uniform coil.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrbridge.errors import InputError
from mrbridge.twin.clean import CleanMode, clean_maps
from mrbridge.twin.coil_scan import sensitivities_from_scan
from mrbridge.twin.phantoms import BACKGROUND_T1_S, BACKGROUND_T2_S, brain_table
from mrbridge.twin.readers import MapData, affine_from_voxels, read_map
from mrbridge.twin.resample import resample_maps
from mrbridge.twin.twin import Twin
from mrbridge.twin.units import decide_unit, to_si

#: canonical map names and the spellings accepted for them (case-insensitive)
MAP_NAMES: dict[str, tuple[str, ...]] = {
    "pd": ("pd", "m0", "rho", "proton_density"),
    "t1": ("t1",),
    "t2": ("t2",),
    "t2star": ("t2star", "t2*", "t2s"),
    "t2dash": ("t2dash", "t2'", "t2prime", "t2′"),
    "b0": ("b0", "df", "fieldmap", "off_resonance"),
    "b1": ("b1", "b1+", "b1plus", "fa_ratio"),
}
REQUIRED = ("pd", "t1", "t2")
#: affines of maps on one grid agree within this fraction of a voxel
GRID_TOLERANCE = 1e-3
#: a PD whose 99th percentile in tissue is at most this is taken as relative already
PD_RELATIVE_MAX = 1.5
#: values outside the mask (PD = 0 there)
NEUTRAL = {"t1": BACKGROUND_T1_S, "t2": BACKGROUND_T2_S, "t2star": BACKGROUND_T2_S, "t2dash": math.inf,
           "b0": 0.0, "b1": 1.0}

MapInput = str | Path | tuple[str | Path, str] | np.ndarray | torch.Tensor | MapData


def canonical_name(name: str) -> str:
    """'PD' → 'pd', 'T2*' → 't2star', …; InputError for unknown names."""
    key = name.strip().lower()
    for canon, spellings in MAP_NAMES.items():
        if key in spellings:
            return canon
    known = ", ".join(s for v in MAP_NAMES.values() for s in v)
    raise InputError(f"map name '{name}' is unknown; expected one of: {known}")


def default_t2dash() -> tuple[float, str]:
    """(T2′ in s, source) used when neither T2* nor T2′ is given.

    The mean of the in-vivo R2′ values in calibration/phantoms/brain3t.yaml (Gelman et al., Radiology 1999:
    grey matter 3.4/s, white matter 3.9/s → R2′ = 3.65/s, T2′ ≈ 274 ms).
    """
    rates = [t.r2dash_per_s for t in brain_table().tissues.values() if t.r2dash_per_s is not None]
    r2dash = float(np.mean(rates))
    return 1.0 / r2dash, (f"default: mean in-vivo R2' {r2dash:g}/s of calibration/phantoms/brain3t.yaml "
                          "(Gelman et al., Radiology 1999)")


def _load(name: str, value: MapInput) -> MapData:
    if isinstance(value, MapData):
        return value
    if isinstance(value, (str, Path)):
        return read_map(value)
    if isinstance(value, tuple):
        return read_map(value[0], key=value[1])
    a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"map '{name}': array of shape {a.shape}, expected (y, x) or (z, y, x)")
    return MapData(a.astype(np.float64), source=f"array '{name}'")


# ---- geometry ---------------------------------------------------------------------------------------------
def _describe_grid(m: MapData) -> str:
    nz, ny, nx = m.data.shape
    if m.affine is None:
        return f"{nx}×{ny}×{nz} voxels, no geometry"
    vox = np.linalg.norm(m.affine[:3, :3], axis=0) * 1e3
    origin = m.affine[:3, 3] * 1e3
    return (f"{nx}×{ny}×{nz} voxels of {'×'.join(f'{v:.3g}' for v in vox)} mm, "
            f"first voxel at ({', '.join(f'{o:.3g}' for o in origin)}) mm")


def _align(name: str, m: MapData, ref: MapData, ref_name: str, reorient: bool) -> tuple[np.ndarray, str | None]:
    """m's data on ref's grid (and a note if it was reoriented); InputError on a mismatch."""
    mismatch = (f"map '{name}' ({m.source}: {_describe_grid(m)}) is not on the grid of map '{ref_name}' "
                f"({ref.source}: {_describe_grid(ref)})")
    if m.affine is None or ref.affine is None:
        if m.data.shape != ref.data.shape:
            raise InputError(f"{mismatch}; maps must share one grid")
        return m.data, None
    t = np.linalg.solve(ref.affine, m.affine)  # m's voxel index (x, y, z) → ref's
    if m.data.shape == ref.data.shape and np.allclose(t, np.eye(4), atol=GRID_TOLERANCE):
        return m.data, None
    perm = np.round(t[:3, :3])
    is_perm = (np.allclose(t[:3, :3], perm, atol=GRID_TOLERANCE) and np.all(np.abs(perm).sum(0) == 1)
               and np.all(np.abs(perm).sum(1) == 1) and np.allclose(t[:3, 3], np.round(t[:3, 3]), atol=GRID_TOLERANCE))
    shape_xyz = np.array(m.data.shape[::-1])
    ref_xyz = np.array(ref.data.shape[::-1])
    if is_perm:
        box = np.array(np.meshgrid(*[[0, n - 1] for n in shape_xyz], indexing="ij")).reshape(3, -1)
        corners = perm @ box + np.round(t[:3, 3])[:, None]
        is_perm = bool(np.all(corners.min(1) == 0) and np.all(corners.max(1) == ref_xyz - 1))
    if not is_perm:
        raise InputError(f"{mismatch}; maps must share one grid (resample them onto one grid first)")
    axes = "xyz"
    what = []
    for i in range(3):
        j = int(np.argmax(np.abs(perm[:, i])))
        if j != i:
            what.append(f"its {axes[i]} axis is {axes[j]}")
        if perm[j, i] < 0:
            what.append(f"flipped along {axes[i]}")
    note = f"map '{name}' ({m.source}) is {', '.join(what)} relative to map '{ref_name}'"
    if not reorient:
        raise InputError(f"{note}; pass reorient=True (--reorient) to reorder it onto '{ref_name}''s grid")
    # ref voxel v = P u + t  →  u = Pᵀ (v − t)
    grid = np.array(np.meshgrid(*[np.arange(n) for n in ref_xyz], indexing="ij")).reshape(3, -1)
    u = np.round(perm.T @ (grid - np.round(t[:3, 3])[:, None])).astype(int)
    values = m.data[u[2], u[1], u[0]].reshape(*ref_xyz).transpose(2, 1, 0)
    return np.ascontiguousarray(values), note + " (reoriented)"


# ---- mask -------------------------------------------------------------------------------------------------
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of finite ``values``."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][np.argmax(between[:-1])])


def _mask(pd: np.ndarray, given: np.ndarray | None, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    if given is not None:
        mask = np.isfinite(given) & (given != 0)
        info: dict[str, Any] = {"from": source}
        if not mask.any():
            raise InputError(f"{source}: the mask is empty (no non-zero voxel)")
    else:
        finite = pd[np.isfinite(pd)]
        if finite.size == 0 or finite.max() <= finite.min():
            raise InputError(f"{source}: map 'pd' is constant or not finite; cannot find tissue (give a mask)")
        threshold = otsu_threshold(finite)
        mask = np.isfinite(pd) & (pd > threshold)
        info = {"from": f"Otsu threshold of PD ({threshold:.4g})"}
        if not mask.any():
            raise InputError(f"{source}: the mask from PD (Otsu threshold {threshold:.4g}) is empty; give a mask")
    info["voxels"] = int(mask.sum())
    return mask, info


def _geometry(
    data: dict[str, MapData], mask: MapInput | None, slice: int | None, reorient: bool,
    voxel_mm: tuple[float, float, float] | None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str, tuple[float, float, float], dict[str, Any]]:
    """Maps (and mask) on PD's grid, the chosen slice, the FOV (x, y, z) m and the geometry provenance."""
    with_affine = [n for n in data if data[n].affine is not None]
    ref_name = "pd" if data["pd"].affine is not None or not with_affine else with_affine[0]
    ref = data[ref_name]
    arrays: dict[str, np.ndarray] = {}
    notes = []
    for name, m in data.items():
        arrays[name], note = _align(name, m, ref, ref_name, reorient)
        if note:
            notes.append(note)
    if ref.affine is None:
        voxel = np.asarray(voxel_mm if voxel_mm is not None else (1.0, 1.0, 1.0), dtype=np.float64) / 1e3
        affine = affine_from_voxels(ref.data.shape, voxel)
        geometry_from = f"no geometry in the files: voxel {'×'.join(f'{v * 1e3:g}' for v in voxel)} mm " + (
            "(stated)" if voxel_mm is not None else "(assumed, as NIfTI's identity affine; state voxel_mm)")
    elif voxel_mm is not None:
        raise InputError(f"voxel_mm {voxel_mm} is for maps without geometry, but map '{ref_name}' ({ref.source}) "
                         "has an affine; leave voxel_mm out")
    else:
        affine = ref.affine
        geometry_from = f"affine of map '{ref_name}' ({ref.source})"
    mask_data: np.ndarray | None = None
    mask_source = data["pd"].source
    if mask is not None:
        mask_map = _load("mask", mask)
        mask_source = mask_map.source
        mask_data, note = _align("mask", mask_map, ref, ref_name, reorient)
        if note:
            notes.append(note)
    nz = ref.data.shape[0]
    if slice is not None:
        if not -nz <= slice < nz:
            raise InputError(f"slice {slice} is outside the maps' {nz} slices (0…{nz - 1})")
        keep = np.s_[slice % nz:slice % nz + 1]
        arrays = {k: v[keep] for k, v in arrays.items()}
        mask_data = None if mask_data is None else mask_data[keep]
    voxel_m = np.linalg.norm(affine[:3, :3], axis=0)
    shape = arrays["pd"].shape
    fov = (float(voxel_m[0] * shape[2]), float(voxel_m[1] * shape[1]), float(voxel_m[2] * shape[0]))
    info = {"from": geometry_from, "affine_m": np.round(affine, 9).tolist(), "slice": slice,
            "reoriented": notes, "maps_shape_zyx": list(shape), "fov_m": list(fov)}
    return arrays, mask_data, mask_source, fov, info


def _t2dash(cleaned: dict[str, np.ndarray], tissue: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """T2′ (s, (z, y, x); inf outside tissue) as given, from T2*, or the default; and its provenance."""
    if "t2dash" in cleaned:
        return cleaned["t2dash"], {"from": "map 't2dash'"}
    if "t2star" in cleaned:
        with np.errstate(divide="ignore"):
            r2dash = 1.0 / cleaned["t2star"] - 1.0 / cleaned["t2"]
        positive = tissue & (r2dash > 0)
        t2dash = np.where(positive, 1.0 / np.where(positive, r2dash, 1.0), math.inf)
        return t2dash, {"from": "1/T2' = 1/T2* - 1/T2 (T2* = T2: T2' = inf)"}
    default_s, source = default_t2dash()
    return np.where(tissue, default_s, math.inf), {"from": source, "value_s": default_s}


# ---- the whole thing --------------------------------------------------------------------------------------
def calibrate(
    maps: Mapping[str, MapInput],
    *,
    units: Mapping[str, str] | None = None,
    mask: MapInput | None = None,
    slice: int | None = None,
    matrix: int | tuple[int, int] | None = None,
    coils: str | Path | None = None,
    clean: CleanMode = "mask",
    reorient: bool = False,
    voxel_mm: tuple[float, float, float] | None = None,
    field_strength_t: float | None = None,
    b1_nominal_deg: float | None = None,
) -> Twin:
    """A validated Twin from measured maps.

    Parameters
    ----------
    maps : {name: path | (path, variable) | array (z, y, x) or (y, x) | MapData}; names pd, t1, t2 (required),
        t2star or t2dash, b0, b1 (spellings of :data:`MAP_NAMES`, case-insensitive)
    units : {name: unit} stated by the user (e.g. {"t1": "ms", "b0": "rad/s", "b1": "percent"})
    mask : tissue mask (non-zero = tissue) on the maps' grid; None: Otsu threshold of PD
    slice : z index kept of 3D maps (None: all)
    matrix : in-plane (y, x) size of the twin (an int: square); None: the maps' own
    coils : ISMRMRD raw multi-coil calibration scan for receive sensitivities; None: one uniform coil
    clean : "mask", "clip" or "error" (see :mod:`mrbridge.twin.clean`)
    reorient : reorder maps whose grid is PD's flipped or transposed (otherwise an error)
    voxel_mm : (x, y, z) voxel size for maps that carry no geometry at all
    field_strength_t, b1_nominal_deg : for B0 in ppm and B1 as a measured flip angle (or from file metadata)

    Returns
    -------
    Twin  # maps (z, y, x) in SI, float32; provenance records inputs, units, geometry, cleaning, resampling
    """
    named: dict[str, MapInput] = {}
    for key, value in maps.items():
        canon = canonical_name(key)
        if canon in named:
            raise InputError(f"map '{canon}' given twice (as '{key}')")
        named[canon] = value
    missing = [k for k in REQUIRED if k not in named]
    if missing:
        raise InputError(f"maps {', '.join(missing)} are required (given: {', '.join(named) or 'none'})")
    if "t2star" in named and "t2dash" in named:
        raise InputError("give T2* or T2′, not both (T2′ is derived from T2* and T2)")
    stated = {canonical_name(k): v for k, v in (units or {}).items()}
    unknown = set(stated) - set(named)
    if unknown:
        raise InputError(f"units given for maps that were not given: {', '.join(sorted(unknown))}")
    data = {name: _load(name, value) for name, value in named.items()}
    sources = {name: m.source for name, m in data.items()}
    prov: dict[str, Any] = {"calibrated_by": "mrbridge.twin.calibrate"}

    arrays, mask_data, mask_source, fov, prov["geometry"] = _geometry(data, mask, slice, reorient, voxel_mm)
    shape = arrays["pd"].shape

    # mask, units
    tissue, prov["mask"] = _mask(arrays["pd"], mask_data, mask_source)
    prov["inputs"] = {}
    si: dict[str, np.ndarray] = {}
    for name, values in arrays.items():
        m = data[name]
        nominal = b1_nominal_deg or _meta_float(m.meta, "nominal_flip_deg")
        field_t = field_strength_t or _meta_float(m.meta, "field_strength_t")
        inside = values[tissue]
        choice = decide_unit(name, inside[np.isfinite(inside)], m.meta, stated=stated.get(name),
                             nominal_flip_deg=nominal, source=m.source)
        si[name] = to_si(name, values, choice.unit, field_strength_t=field_t, nominal_flip_deg=nominal, source=m.source)
        prov["inputs"][name] = {"source": m.source, "sha256": m.sha256, "unit": choice.unit, "unit_how": choice.how,
                                "shape_zyx": list(m.data.shape)}

    # PD scale
    pd_in = si["pd"][tissue & np.isfinite(si["pd"])]
    p99 = float(np.percentile(pd_in, 99)) if pd_in.size else 0.0
    scale = 1.0 if 0 < p99 <= PD_RELATIVE_MAX else (1.0 / p99 if p99 > 0 else 1.0)
    si["pd"] = si["pd"] * scale
    how = "kept (already relative)" if scale == 1.0 else "scaled: 99th percentile in tissue → 1"
    prov["pd"] = {"scale": scale, "how": how}

    # cleaning
    cleaned, tissue, report = clean_maps(si, tissue, mode=clean, sources=sources)
    if not tissue.any():
        raise InputError(f"{sources['pd']}: no tissue voxel is left after cleaning ({report.counts}); check the maps")
    prov["cleaning"] = report.as_dict()
    for name, value in cleaned.items():
        value[~tissue] = 0.0 if name == "pd" else NEUTRAL[name]

    t2dash, prov["t2dash"] = _t2dash(cleaned, tissue)
    twin_maps = {"pd": cleaned["pd"], "t1": cleaned["t1"], "t2": cleaned["t2"], "t2dash": t2dash,
                 "b0": cleaned.get("b0", np.zeros(shape)), "b1": cleaned.get("b1", np.ones(shape))}
    for name in ("b0", "b1"):
        if name not in cleaned:
            prov["inputs"][name] = {"source": "default", "unit": "Hz" if name == "b0" else "relative",
                                    "unit_how": f"not given: {name.upper()} = {0 if name == 'b0' else 1} everywhere"}

    # resampling
    if matrix is not None:
        target = (matrix, matrix) if isinstance(matrix, int) else tuple(matrix)
        if len(target) != 2 or min(target) < 1:
            raise InputError(f"matrix {matrix}: expected a positive size (or (y, x) sizes)")
        twin_maps = resample_maps(twin_maps, (int(target[0]), int(target[1])))
        prov["resampling"] = {"from_yx": list(shape[1:]), "to_yx": list(target), "fov_m": list(fov),
                              "method": "area-weighted voxel overlap; PD area mean, R1/R2/R2'/B0/B1 PD-weighted means"}
    else:
        prov["resampling"] = {"method": "none (the maps' own grid)"}
    out_shape = twin_maps["pd"].shape

    # coils
    sens = None
    if coils is not None:
        sens, prov["coils"] = sensitivities_from_scan(coils, out_shape, fov)
    else:
        prov["coils"] = {"from": "none: one uniform coil"}

    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in twin_maps.items()}
    twin = Twin.from_maps(t["pd"], t["t1"], t["t2"], fov, t2dash=t["t2dash"], b0=t["b0"], b1=t["b1"], coil_sens=sens,
                          provenance=prov)
    return twin.validate("calibrated twin")


def _meta_float(meta: dict[str, str], key: str) -> float | None:
    return float(meta[key]) if key in meta else None
