"""A z-resolved twin from a 2D one, for slice-profile simulation."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch

from mrbridge.errors import InputError
from mrbridge.twin.twin import Twin

#: z planes of a z-resolved twin; odd, so that the planes lie symmetrically about the slice centre z = 0
ZRESOLVED_PLANES = 17

#: z extent of a z-resolved twin, in slice thicknesses (±1.5: the profile's transition bands and first side lobes)
ZRESOLVED_EXTENT = 3.0


def zresolved(twin: Twin, *, planes: int = ZRESOLVED_PLANES, extent: float = ZRESOLVED_EXTENT,
              thickness: float | None = None) -> Twin:
    """Replicate a 2D twin (one z plane) over ``planes`` planes spanning ``extent`` slice thicknesses.

    The slice (thickness ``thickness``, default ``twin.fov[2]``) stays centred on z = 0; every map, the coil
    sensitivities and the optional maps are copied to every plane, and PD (signal per voxel) is scaled by the
    plane spacing over the slice thickness, so that an ideal rectangular slice profile gives the 2D twin's
    signal. The input is not modified.

    Returns: Twin  # maps (planes, y, x), fov (x, y, extent·thickness)
    """
    if twin.shape[0] != 1:
        raise InputError(f"twin has {twin.shape[0]} z planes; a z-resolved twin is made from a 2D twin (1 plane)")
    if planes < 1 or extent <= 0:
        raise InputError(f"planes = {planes} and extent = {extent}: expected planes ≥ 1 and extent > 0")
    slab = float(thickness if thickness is not None else twin.fov[2]) * extent
    updates: dict[str, Any] = {}
    for f in fields(twin):
        value = getattr(twin, f.name)
        if isinstance(value, torch.Tensor):
            axis = value.dim() - 3  # the z axis of (z, y, x) and (coils, z, y, x)
            updates[f.name] = value.repeat_interleave(planes, dim=axis).clone()
    updates["pd"] = updates["pd"] * (extent / planes)
    fov = (twin.fov[0], twin.fov[1], slab)
    return replace(twin, fov=fov, provenance={**twin.provenance, "zresolved": f"{planes} planes over {slab} m"},
                   **updates)
