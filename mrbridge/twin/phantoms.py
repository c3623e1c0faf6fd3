"""Built-in twins: SPIN's Shepp–Logan brain (fixed and randomised) and a 3T brain-like phantom.

The tissue tables live in ``calibration/phantoms/*.yaml`` (units named in the keys); ellipses are
rasterised analytically at the voxel centres of any matrix (see :mod:`mrbridge.twin.ellipses` for the
coordinate convention: row index grows with y, as in :meth:`Twin.positions`).

>>> twin = builtin("spin-brain", matrix=64)
>>> twin.shape
(1, 64, 64)
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrbridge.errors import ConfigError, InputError, validation_message
from mrbridge.twin.coils import simulated_coils
from mrbridge.twin.ellipses import Ellipse, grid, paint
from mrbridge.twin.twin import Twin
from mrbridge.yamlfile import load_yaml

PHANTOMS_DIR = Path(__file__).resolve().parent.parent.parent / "calibration" / "phantoms"
BUILTINS: tuple[str, ...] = ("spin-brain", "spin-random", "brain")

#: T1 and T2 (s) outside tissue (pd = 0): placeholders that keep every map finite and positive
BACKGROUND_T1_S = 1.0
BACKGROUND_T2_S = 1.0
#: random placement: fine grid of the overlap test, and the clearance kept around each component
PLACEMENT_GRID = 256
PLACEMENT_MARGIN = 0.02
PLACEMENT_TRIES = 10_000

T = TypeVar("T", bound=BaseModel)


# ---- table schemas ---------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SpinRow(_Strict):
    """One row of SPIN's Table 1 (normalised coordinates; ms)."""

    row: int
    x: float
    y: float
    a: float = Field(gt=0)
    b: float = Field(gt=0)
    angle_deg: float
    rho: float = Field(ge=0)
    t1_ms: float = Field(gt=0)
    t2_ms: float = Field(gt=0)
    tissue: str
    random: bool = False

    @property
    def ellipse(self) -> Ellipse:
        return Ellipse(self.x, self.y, self.a, self.b, self.angle_deg)


class SpinTable(_Strict):
    """calibration/phantoms/spin_brain.yaml."""

    source: str
    fov_mm: tuple[float, float]
    slice_thickness_mm: float = Field(gt=0)
    region_row: int
    ellipses: list[SpinRow]


class Tissue(_Strict):
    """One tissue of brain3t.yaml (ms, 1/s; no T1/T2 for a tissue without signal, pd = 0)."""

    label: int = Field(gt=0)
    pd: float = Field(ge=0)
    t1_ms: float | None = Field(default=None, gt=0)
    t2_ms: float | None = Field(default=None, gt=0)
    r2dash_per_s: float | None = Field(default=None, gt=0)


class BrainEllipse(_Strict):
    x: float
    y: float
    a: float = Field(gt=0)
    b: float = Field(gt=0)
    angle_deg: float
    tissue: str


class BrainTable(_Strict):
    """calibration/phantoms/brain3t.yaml."""

    source: str
    field_strength_t: float = Field(gt=0)
    tissues: dict[str, Tissue]
    fov_mm: tuple[float, float]
    slice_thickness_mm: float = Field(gt=0)
    ellipses: list[BrainEllipse]


def load_table(path: Path, schema: type[T]) -> T:
    """Read and validate a phantom table; ConfigError naming the file and field otherwise."""
    data = load_yaml(path) or {}
    try:
        return schema(**data)
    except ValidationError as err:
        raise ConfigError(validation_message(err, str(path))) from None


# ---- SPIN phantoms ---------------------------------------------------------------------------------
def spin_table() -> SpinTable:
    """SPIN's Table 1 from calibration/phantoms/spin_brain.yaml."""
    path = PHANTOMS_DIR / "spin_brain.yaml"
    table = load_table(path, SpinTable)
    rows = [r.row for r in table.ellipses]
    if table.region_row not in rows:
        raise ConfigError(f"{path}: field 'region_row' = {table.region_row}: expected one of the rows {rows}")
    return table


def random_layout(table: SpinTable, seed: int) -> list[tuple[float, float]]:
    """Centres for the table's random rows, uniform inside the region ellipse, no two overlapping.

    Each component is drawn in table order and redrawn until it, grown by ``PLACEMENT_MARGIN``, lies
    inside the region and clear of every component placed before (tested on a fine grid, so the
    layout does not depend on the matrix). ``numpy.random.default_rng(seed)``: deterministic.
    """
    rng = np.random.default_rng(seed)
    points = grid(PLACEMENT_GRID)
    region_row = next(r for r in table.ellipses if r.row == table.region_row)
    region = region_row.ellipse.mask(points)
    taken = np.zeros_like(region)
    centres: list[tuple[float, float]] = []
    for row in (r for r in table.ellipses if r.random):
        for _ in range(PLACEMENT_TRIES):
            x = region_row.x + rng.uniform(-region_row.a, region_row.a)
            y = region_row.y + rng.uniform(-region_row.b, region_row.b)
            footprint = row.ellipse.moved(x, y).grown(PLACEMENT_MARGIN).mask(points)
            if not (footprint & ~region).any() and not (footprint & taken).any():
                taken |= footprint
                centres.append((float(x), float(y)))
                break
        else:
            raise InputError(f"spin-random seed {seed}: could not place row {row.row} without overlap")
    return centres


def spin_twin(matrix: int, centres: list[tuple[float, float]] | None = None) -> Twin:
    """SPIN's phantom on a ``matrix``² grid; ``centres`` replace the default positions of the random rows.

    Returns a Twin of shape (1, matrix, matrix) with pd, T1, T2, labels and label names from the table;
    no T2' (inf), B0 = 0, B1 = 1, one uniform coil.
    """
    table = spin_table()
    rows = list(table.ellipses)
    if centres is not None:
        moving = iter(centres)
        rows = [r.model_copy(update=dict(zip(("x", "y"), next(moving), strict=True))) if r.random else r
                for r in rows]
    names = list(dict.fromkeys(r.tissue for r in rows))
    ellipses = [r.ellipse for r in rows]
    pd = paint(ellipses, [r.rho for r in rows], matrix, 0.0)
    t1 = paint(ellipses, [r.t1_ms * 1e-3 for r in rows], matrix, BACKGROUND_T1_S)
    t2 = paint(ellipses, [r.t2_ms * 1e-3 for r in rows], matrix, BACKGROUND_T2_S)
    labels = paint(ellipses, [names.index(r.tissue) + 1.0 for r in rows], matrix, 0.0)
    fov = (table.fov_mm[0] * 1e-3, table.fov_mm[1] * 1e-3, table.slice_thickness_mm * 1e-3)
    return Twin.from_maps(
        _tensor(pd), _tensor(t1), _tensor(t2), fov,
        labels=_tensor(labels).to(torch.int64),
        label_names={0: "background"} | {i + 1: n for i, n in enumerate(names)},
        provenance={"source": table.source, "table": "calibration/phantoms/spin_brain.yaml"},
    )


# ---- 3T brain --------------------------------------------------------------------------------------
def brain_table() -> BrainTable:
    """3T tissue values and layout from calibration/phantoms/brain3t.yaml."""
    path = PHANTOMS_DIR / "brain3t.yaml"
    table = load_table(path, BrainTable)
    for i, e in enumerate(table.ellipses):
        if e.tissue not in table.tissues:
            raise ConfigError(f"{path}: field 'ellipses.{i}.tissue' = {e.tissue!r}: expected one of "
                              f"{sorted(table.tissues)}")
    labels = [t.label for t in table.tissues.values()]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: field 'tissues': labels {labels} repeat; expected one label per tissue")
    for name, t in table.tissues.items():
        if t.pd > 0 and (t.t1_ms is None or t.t2_ms is None):
            raise ConfigError(f"{path}: field 'tissues.{name}': pd {t.pd} > 0 needs t1_ms and t2_ms")
    return table


def brain_twin(matrix: int) -> Twin:
    """The 3T brain-like phantom on a ``matrix``² grid with smooth B0 and B1+ (see :func:`brain_fields`).

    Returns a Twin of shape (1, matrix, matrix); T2' = 1/R2' (inf where the table gives no R2').
    """
    table = brain_table()
    ellipses = [Ellipse(e.x, e.y, e.a, e.b, e.angle_deg) for e in table.ellipses]
    tissues = [table.tissues[e.tissue] for e in table.ellipses]

    def seconds(ms: float | None, default: float) -> float:
        return default if ms is None else ms * 1e-3

    def t2dash(t: Tissue) -> float:
        return float("inf") if t.r2dash_per_s is None else 1.0 / t.r2dash_per_s

    pd = paint(ellipses, [t.pd for t in tissues], matrix, 0.0)
    t1 = paint(ellipses, [seconds(t.t1_ms, BACKGROUND_T1_S) for t in tissues], matrix, BACKGROUND_T1_S)
    t2 = paint(ellipses, [seconds(t.t2_ms, BACKGROUND_T2_S) for t in tissues], matrix, BACKGROUND_T2_S)
    t2d = paint(ellipses, [t2dash(t) for t in tissues], matrix, float("inf"))
    labels = paint(ellipses, [float(t.label) for t in tissues], matrix, 0.0)
    b0, b1 = brain_fields(matrix, pd > 0)
    fov = (table.fov_mm[0] * 1e-3, table.fov_mm[1] * 1e-3, table.slice_thickness_mm * 1e-3)
    return Twin.from_maps(
        _tensor(pd), _tensor(t1), _tensor(t2), fov, t2dash=_tensor(t2d), b0=_tensor(b0), b1=_tensor(b1),
        labels=_tensor(labels).to(torch.int64),
        label_names={0: "background"} | {t.label: name for name, t in table.tissues.items()},
        provenance={"source": table.source, "table": "calibration/phantoms/brain3t.yaml",
                    "field_strength_t": table.field_strength_t},
    )


def brain_fields(matrix: int, tissue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth B0 (Hz) and B1+ (relative) maps of the brain phantom, in normalised coordinates (x, y).

    B0: a frontal-sinus-like Gaussian bump (+40 Hz at (0, 0.75), σ 0.2) plus a low-order polynomial
    (8x + 5y + 6(x² − y²)) Hz, minus its mean over ``tissue``, so it is zero-mean in the head.
    B1+: centre brightening typical of a 3T head, 0.8 + 0.4·exp(−r²/(2·0.4²)): 1.2 at the centre,
    ≈ 0.85 at the skull.

    tissue: ndarray  # (matrix, matrix) bool, where the mean of B0 is taken
    Returns: (b0, b1), each  # (matrix, matrix) float64
    """
    x, y = grid(matrix)
    b0 = 40.0 * np.exp(-(x**2 + (y - 0.75) ** 2) / (2 * 0.2**2)) + 8.0 * x + 5.0 * y + 6.0 * (x**2 - y**2)
    b0 -= b0[tissue].mean()
    b1 = 0.8 + 0.4 * np.exp(-(x**2 + y**2) / (2 * 0.4**2))
    return b0, b1


# ---- public entry points ---------------------------------------------------------------------------
def builtin(name: str, *, matrix: int = 64, coils: int = 1, seed: int = 0) -> Twin:
    """A built-in twin on a ``matrix``² grid with ``coils`` simulated receive coils.

    name: one of :data:`BUILTINS`: "spin-brain" (SPIN's Table 1, default positions), "spin-random"
    (its 8 inner components placed at random, seeded by ``seed``), "brain" (3T brain-like phantom).
    Returns a validated Twin of shape (1, matrix, matrix) whose provenance records name, matrix, coils
    and (spin-random) the seed and the drawn centres.
    """
    if name not in BUILTINS:
        raise InputError(f"builtin twin {name!r}: unknown; expected one of {', '.join(BUILTINS)}")
    if isinstance(matrix, bool) or not isinstance(matrix, int) or matrix < 4:
        raise InputError(f"builtin:{name}: matrix = {matrix!r}, expected an integer >= 4")
    if isinstance(coils, bool) or not isinstance(coils, int) or coils < 1:
        raise InputError(f"builtin:{name}: coils = {coils!r}, expected an integer >= 1")
    extra: dict[str, object] = {}
    if name == "spin-brain":
        twin = spin_twin(matrix)
    elif name == "spin-random":
        centres = random_layout(spin_table(), seed)
        twin = spin_twin(matrix, centres)
        extra = {"seed": seed, "centres": [list(c) for c in centres]}
    else:
        twin = brain_twin(matrix)
    twin.coil_sens = simulated_coils(twin.shape, twin.fov, coils)
    twin.provenance.update({"builtin": name, "matrix": matrix, "coils": coils, **extra})
    return twin.validate(f"builtin:{name}")


def open_twin(spec: str, *, matrix: int | None = None, coils: int | None = None, seed: int = 0) -> Twin:
    """Open ``"builtin:NAME"`` or a twin HDF5 file.

    A built-in is built at ``matrix`` (default 64) with ``coils`` (default 1) and ``seed``. A file keeps its
    own grid (``matrix`` is ignored: the simulation grid need not equal the sequence matrix); ``coils``,
    when given and different from the file's, replaces its sensitivities with simulated ones.
    Raises InputError for any other spec.
    """
    if spec.startswith("builtin:"):
        return builtin(spec.removeprefix("builtin:"), matrix=64 if matrix is None else matrix,
                       coils=1 if coils is None else coils, seed=seed)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"twin {spec!r}: expected 'builtin:NAME' (NAME one of {', '.join(BUILTINS)}) "
                         "or the path of a twin .h5 file")
    twin = Twin.load(path)
    if coils is not None and coils != twin.coils:
        if coils < 1:
            raise InputError(f"{path}: coils = {coils}, expected an integer >= 1")
        twin.coil_sens = simulated_coils(twin.shape, twin.fov, coils)
        twin.provenance["coils"] = f"{coils} simulated (replacing the file's)"
    return twin


def _tensor(a: np.ndarray) -> torch.Tensor:
    """(y, x) float64 array → (1, y, x) float32 tensor."""
    return torch.from_numpy(a).to(torch.float32)[None]
