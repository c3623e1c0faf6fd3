"""The Twin: a voxel grid of tissue properties, with HDF5 save/load (units recorded) and validation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from mrbridge.atomic import atomic_path
from mrbridge.errors import InputError

FORMAT_VERSION = 1

#: map name -> (unit written to HDF5, plausible range of tissue values (where pd > 0))
MAP_UNITS: dict[str, tuple[str, tuple[float, float]]] = {
    "pd": ("relative", (0.0, 1e3)),
    "t1": ("s", (1e-3, 20.0)),
    "t2": ("s", (1e-4, 10.0)),
    "t2dash": ("s", (1e-4, float("inf"))),
    "b0": ("Hz", (-5e3, 5e3)),
    "b1": ("relative", (0.05, 5.0)),
}


@dataclass
class Twin:
    """Voxel grid of tissue properties, indexed (z, y, x); voxel centres at (i − n//2)·Δ along each axis.

    pd: Tensor         # (z, y, x) proton density, relative
    t1: Tensor         # (z, y, x) s
    t2: Tensor         # (z, y, x) s
    t2dash: Tensor     # (z, y, x) s, reversible dephasing, 1/T2* = 1/T2 + 1/T2' (inf: none)
    b0: Tensor         # (z, y, x) Hz off-resonance
    b1: Tensor         # (z, y, x) relative B1+ (flip angles scale by it)
    coil_sens: Tensor  # (coils, z, y, x) complex64 receive sensitivities
    fov: (x, y, z) m
    diffusion: Tensor | None  # (z, y, x) m²/s apparent diffusion coefficient, optional
    labels: Tensor | None     # (z, y, x) int64 tissue label (0 = background), optional
    """

    pd: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    t2dash: torch.Tensor
    b0: torch.Tensor
    b1: torch.Tensor
    coil_sens: torch.Tensor
    fov: tuple[float, float, float]
    diffusion: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_maps(
        cls,
        pd: torch.Tensor,
        t1: torch.Tensor,
        t2: torch.Tensor,
        fov: tuple[float, float, float],
        *,
        t2dash: torch.Tensor | None = None,
        b0: torch.Tensor | None = None,
        b1: torch.Tensor | None = None,
        coil_sens: torch.Tensor | None = None,
        **extra: Any,
    ) -> Twin:
        """A twin from PD/T1/T2 (any shape up to 3D; promoted to (z, y, x)); other maps default to ideal
        (no T2', B0 = 0, B1 = 1, one uniform coil)."""
        pd = _as_zyx(pd)
        shape = pd.shape

        def fill(m: torch.Tensor | None, value: float) -> torch.Tensor:
            return torch.full(shape, value, dtype=pd.dtype) if m is None else _as_zyx(m)

        coils = torch.ones((1, *shape), dtype=torch.complex64) if coil_sens is None else coil_sens
        if coils.dim() == 3:
            coils = coils[:, None]
        twin = cls(
            pd=pd, t1=_as_zyx(t1), t2=_as_zyx(t2), t2dash=fill(t2dash, float("inf")), b0=fill(b0, 0.0),
            b1=fill(b1, 1.0), coil_sens=coils, fov=(float(fov[0]), float(fov[1]), float(fov[2])), **extra,
        )
        return twin

    # ---- geometry -----------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x)."""
        return tuple(self.pd.shape)  # type: ignore[return-value]

    @property
    def coils(self) -> int:
        return int(self.coil_sens.shape[0])

    @property
    def voxel_size(self) -> torch.Tensor:
        """(3,) m, (x, y, z)."""
        nz, ny, nx = self.shape
        return torch.tensor(self.fov, dtype=torch.float64) / torch.tensor([nx, ny, nz], dtype=torch.float64)

    def span_note(self, fov: tuple[float, float]) -> str | None:
        """A note when this twin spans under half of an image's field of view ``fov`` (x, y; m) along x or y: the
        object then fills only that share of the image (SPIN's phantoms span 64 mm, the protocols' images 200 mm).
        None otherwise."""
        share = min(self.fov[0] / fov[0], self.fov[1] / fov[1])
        if share >= 0.5:
            return None
        return (f"the twin spans {1e3 * self.fov[0]:g} × {1e3 * self.fov[1]:g} mm, {100 * share:.0f} % of the "
                f"sequence's {1e3 * fov[0]:g} × {1e3 * fov[1]:g} mm field of view, and fills only that share of the "
                "image (a protocol's fov_mm sets the field of view)")

    def positions(self) -> torch.Tensor:
        """Voxel centres. Returns: Tensor  # (z, y, x, 3) m, last axis (x, y, z)."""
        nz, ny, nx = self.shape
        dx, dy, dz = self.voxel_size.tolist()
        dtype = self.pd.dtype

        def centres(n: int, step: float) -> torch.Tensor:
            return (torch.arange(n, dtype=dtype) - n // 2) * step

        z, y, x = torch.meshgrid(centres(nz, dz), centres(ny, dy), centres(nx, dx), indexing="ij")
        return torch.stack([x, y, z], dim=-1)

    # ---- conversions --------------------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Twin:
        """A copy on ``device`` with real maps cast to ``dtype``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            cast = dtype if t.is_floating_point() else None
            if t.is_complex() and dtype is not None:
                cast = torch.complex128 if dtype == torch.float64 else torch.complex64
            return t.to(device=device, dtype=cast)

        tensors = [f.name for f in fields(self) if _is_tensor_field(f.name)]
        updates: dict[str, Any] = {name: move(getattr(self, name)) for name in tensors}
        return replace(self, **updates)

    # ---- validation ---------------------------------------------------------------------------------
    def validate(self, source: str | None = None) -> Twin:
        """Check shapes, finiteness and plausibility; raise InputError naming the map and value."""
        where = source or "twin"
        shape = self.shape
        for name in ("pd", "t1", "t2", "t2dash", "b0", "b1"):
            m = getattr(self, name)
            if tuple(m.shape) != shape:
                raise InputError(f"{where}: map '{name}' has shape {tuple(m.shape)}, expected {shape} like 'pd'")
            bad = torch.isnan(m) | (torch.isinf(m) if name != "t2dash" else torch.isneginf(m))
            if bad.any():
                count = int(bad.sum())
                raise InputError(f"{where}: map '{name}' has {count} NaN/inf values; clean the map first")
        if tuple(self.coil_sens.shape[1:]) != shape:
            got, want = tuple(self.coil_sens.shape), ", ".join(map(str, shape))
            raise InputError(f"{where}: 'coil_sens' has shape {got}, expected (coils, {want})")
        for name, m in (("diffusion", self.diffusion), ("labels", self.labels)):
            if m is not None and tuple(m.shape) != shape:
                raise InputError(f"{where}: map '{name}' has shape {tuple(m.shape)}, expected {shape}")
        if (self.pd < 0).any():
            raise InputError(f"{where}: map 'pd' has negative values (min {self.pd.min().item():.3g}); expected >= 0")
        tissue = self.pd > 0
        if not tissue.any():
            raise InputError(f"{where}: map 'pd' is zero everywhere; the twin is empty")
        for name, (unit, (lo, hi)) in MAP_UNITS.items():
            if name == "pd":
                continue
            vals = getattr(self, name)[tissue]
            vmin, vmax = vals.min().item(), vals.max().item()
            if vmin < lo or vmax > hi:
                hint = ""
                if name in ("t1", "t2") and vmax > hi:
                    hint = " (values look like milliseconds; twins store seconds)"
                raise InputError(
                    f"{where}: map '{name}' spans [{vmin:.4g}, {vmax:.4g}] {unit} in tissue, "
                    f"expected within [{lo:g}, {hi:g}] {unit}{hint}"
                )
        if any(not np.isfinite(f) or f <= 0 for f in self.fov):
            raise InputError(f"{where}: fov {self.fov} m, expected three positive lengths in metres")
        return self

    # ---- HDF5 ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write HDF5 atomically: one dataset per map with its unit as attribute."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["format"] = "mrbridge.twin"
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["fov_m"] = np.asarray(self.fov)
            f.attrs["axes"] = "z, y, x"
            f.attrs["provenance"] = json.dumps(self.provenance)
            f.attrs["label_names"] = json.dumps({str(k): v for k, v in self.label_names.items()})
            for name, (unit, _) in MAP_UNITS.items():
                ds = f.create_dataset(name, data=getattr(self, name).detach().cpu().numpy())
                ds.attrs["unit"] = unit
            ds = f.create_dataset("coil_sens", data=self.coil_sens.detach().cpu().numpy())
            ds.attrs["unit"] = "relative (complex)"
            if self.diffusion is not None:
                f.create_dataset("diffusion", data=self.diffusion.detach().cpu().numpy()).attrs["unit"] = "m^2/s"
            if self.labels is not None:
                f.create_dataset("labels", data=self.labels.detach().cpu().numpy()).attrs["unit"] = "label"

    @classmethod
    def load(cls, path: str | Path) -> Twin:
        """Read a twin written by :meth:`save` and validate it."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != "mrbridge.twin":
                    found = f.attrs.get("format")
                    raise InputError(f"{path}: attribute 'format' is {found!r}, expected 'mrbridge.twin'")
                for name, (unit, _) in MAP_UNITS.items():
                    if name not in f:
                        raise InputError(f"{path}: dataset '{name}' is missing")
                    found = f[name].attrs.get("unit")
                    if found != unit:
                        raise InputError(f"{path}: dataset '{name}' has unit {found!r}, expected {unit!r}")
                maps = {name: torch.from_numpy(f[name][()]) for name in MAP_UNITS}
                optional = {k: torch.from_numpy(f[k][()]) for k in ("diffusion", "labels") if k in f}
                twin = cls(
                    **maps,
                    coil_sens=torch.from_numpy(f["coil_sens"][()]),
                    fov=tuple(float(v) for v in f.attrs["fov_m"]),  # type: ignore[arg-type]
                    label_names={int(k): v for k, v in json.loads(f.attrs.get("label_names", "{}")).items()},
                    provenance=json.loads(f.attrs.get("provenance", "{}")),
                    **optional,
                )
        except OSError as err:
            raise InputError(f"{path}: not a readable HDF5 file ({err})") from None
        except KeyError as err:
            raise InputError(f"{path}: missing {err}") from None
        return twin.validate(str(path))

    # ---- front doors (``mb.Twin.builtin(...)``) -----------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> Twin:
        """Read a twin HDF5 file (as written by ``save``, ``mrbridge twin`` or ``mrbridge calibrate``).

        The same as ``load``; raises InputError naming the file and the dataset when it is not one.
        """
        return cls.load(path)

    @classmethod
    def builtin(cls, name: str, *, matrix: int = 64, coils: int = 1, seed: int = 0) -> Twin:
        """A built-in phantom (``mrbridge.twin.phantoms.builtin``) on a ``matrix``² grid.

        Parameters
        ----------
        name
            ``"brain"`` (3T brain-like, smooth B0 and B1+), ``"spin-brain"`` (SPIN's Shepp–Logan brain) or
            ``"spin-random"`` (its inner components placed at random by ``seed``); ``"builtin:"`` may prefix it.
        matrix
            Grid size in x and y; the twin has shape (1, matrix, matrix) (z, y, x).
        coils
            Simulated receive coils (``coil_sens`` is (coils, 1, matrix, matrix) complex64).

        Examples
        --------
        >>> twin = Twin.builtin("brain", matrix=16, coils=2)
        >>> twin.shape, twin.coils, twin.fov[0] > 0
        ((1, 16, 16), 2, True)
        """
        from mrbridge.twin.phantoms import builtin

        return builtin(name.removeprefix("builtin:"), matrix=matrix, coils=coils, seed=seed)


def _is_tensor_field(name: str) -> bool:
    return name not in ("fov", "label_names", "provenance")


def _as_zyx(m: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(m)
    while m.dim() < 3:
        m = m[None]
    return m
