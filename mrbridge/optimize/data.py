"""Training data: indexed, seeded, cached collections of twins, split into training and validation.

Twin ``i`` is always the same object (it depends only on the spec, the matrix and ``i``), so any process can
build any twin: data-parallel runs and resumed runs see identical data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mrbridge.errors import InputError
from mrbridge.optimize.task import DataSpec
from mrbridge.twin.phantoms import builtin, open_twin
from mrbridge.twin.twin import Twin

_MAPS = ("pd", "t1", "t2", "t2dash", "b0", "b1")  # the maps a batch stacks


def sparse_twin(spec: DataSpec, matrix: int, index: int) -> Twin:
    """MRzero's sparse synthetic twin ``index``: a centred block of voxels with uniform random PD, T1, T2, B0
    (seeded by (seed, index)); background pd = 0. Shape (1, matrix, matrix)."""
    s = spec.sparse
    rng = np.random.default_rng([spec.seed, index])
    block = min(s.block, matrix)
    lo = matrix // 2 - block // 2
    inside = (slice(lo, lo + block), slice(lo, lo + block))

    def draw(bounds: tuple[float, float], fill: float) -> torch.Tensor:
        m = np.full((matrix, matrix), fill)
        m[inside] = rng.uniform(bounds[0], bounds[1], (block, block))
        return torch.from_numpy(m).to(torch.float32)[None]

    pd, t1, t2, b0 = draw(s.pd, 0.0), draw(s.t1_s, 1.0), draw(s.t2_s, 1.0), draw(s.b0_hz, 0.0)
    t2 = torch.minimum(t2, t1)
    fov = s.fov_mm * 1e-3
    twin = Twin.from_maps(pd, t1, t2, (fov, fov, 5e-3), b0=b0)
    twin.provenance.update({"sparse": index, "seed": spec.seed})
    return twin


class TwinSet:
    """The twins of a task's ``data`` section on a ``matrix``² grid; twin files relative to ``base`` (the task's
    folder).

    train: indices of the training twins; validation: indices of the validation twins (may be empty).
    """

    def __init__(self, spec: DataSpec, matrix: int, source: str = "task", base: Path | None = None) -> None:
        self.spec, self.matrix, self.source, self.base = spec, matrix, source, base or Path.cwd()
        self._cache: dict[int, Twin] = {}
        if spec.kind == "twin":
            total, n_val = 1 + (1 if spec.validation else 0), min(spec.validation, 1)
        elif spec.kind == "files":
            total, n_val = len(spec.files), spec.validation
        else:
            total, n_val = spec.train + spec.validation, spec.validation
        n_train = max(total - n_val, 1)
        self.train = list(range(n_train))
        self.validation = list(range(n_train, n_train + n_val))

    def __getitem__(self, index: int) -> Twin:
        if index not in self._cache:
            self._cache[index] = self._make(index)
        return self._cache[index]

    def _make(self, index: int) -> Twin:
        spec = self.spec
        field, name = ("data.twin", spec.twin) if spec.kind == "twin" else (f"data.files[{index}]", "")
        try:
            if spec.kind == "twin":
                builtin_twin = spec.twin.startswith("builtin:")
                return open_twin(spec.twin if builtin_twin else str(self.base / spec.twin), matrix=self.matrix,
                                 seed=spec.seed, coils=spec.coils if builtin_twin else None)
            if spec.kind == "files":
                name = spec.files[index]
                return open_twin(str(self.base / name))
        except InputError as err:  # name the task and its field, not only the twin
            raise InputError(f"{self.source}: field '{field}' = {name!r}: {err}") from None
        if spec.kind == "spin_random":
            return builtin("spin-random", matrix=self.matrix, seed=spec.seed + index, coils=spec.coils)
        return sparse_twin(spec, self.matrix, index)

    def batch(self, indices: list[int]) -> Twin:
        """The twins ``indices`` as one batched twin: maps (batch, z, y, x), coil_sens of the first."""
        twins = [self[i] for i in indices]
        maps = {m: torch.stack([getattr(t, m) for t in twins]) for m in _MAPS}
        return replace(twins[0], pd=maps["pd"], t1=maps["t1"], t2=maps["t2"], t2dash=maps["t2dash"],
                       b0=maps["b0"], b1=maps["b1"])
