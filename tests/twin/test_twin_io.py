"""Twin HDF5 round trip (read back by plain h5py too) and Twin.validate's error messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import MAP_UNITS, Twin


def test_hdf5_round_trip_is_exact(tmp_path: Path) -> None:
    twin = builtin("brain", matrix=24, coils=3)
    twin.diffusion = torch.full(twin.shape, 1e-9)
    path = tmp_path / "twin.h5"
    twin.save(path)
    back = Twin.load(path)
    for name in (*MAP_UNITS, "coil_sens", "labels", "diffusion"):
        assert torch.equal(getattr(back, name), getattr(twin, name)), name
    assert back.coil_sens.dtype == torch.complex64
    assert back.labels is not None and back.labels.dtype == torch.int64
    assert back.fov == twin.fov
    assert back.label_names == twin.label_names
    assert back.provenance == twin.provenance


def test_written_file_is_plain_hdf5_with_units(tmp_path: Path) -> None:
    twin = builtin("spin-brain", matrix=16, coils=2)
    path = tmp_path / "twin.h5"
    twin.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["twin.h5"]  # no temporary file left behind
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "mrbridge.twin"
        np.testing.assert_allclose(f.attrs["fov_m"], [0.064, 0.064, 0.005])
        for name, (unit, _) in MAP_UNITS.items():
            assert f[name].attrs["unit"] == unit
            assert f[name].shape == (1, 16, 16)
        assert f["t1"].attrs["unit"] == "s"
        assert f["coil_sens"].shape == (2, 1, 16, 16)
        np.testing.assert_array_equal(f["t2"][()], twin.t2.numpy())


def test_failed_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "twin.h5"
    builtin("spin-brain", matrix=8).save(path)
    before = path.read_bytes()
    broken = builtin("spin-brain", matrix=8)
    broken.labels = "not a tensor"  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        broken.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["twin.h5"]


def _tiny() -> Twin:
    pd = torch.tensor([[0.0, 0.8], [0.7, 1.0]])
    return Twin.from_maps(pd, torch.full((2, 2), 1.2), torch.full((2, 2), 0.08), (0.01, 0.01, 0.005))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: setattr(t, "t1", t.t1 * 0 + 800.0), ["'t1'", "milliseconds"]),
        (lambda t: setattr(t, "t2", t.t2 * 0 + 80.0), ["'t2'", "milliseconds"]),
        (lambda t: t.b0.__setitem__((0, 1, 1), float("nan")), ["'b0'", "NaN"]),
        (lambda t: setattr(t, "t2", torch.full((1, 3, 2), 0.08)), ["'t2'", "shape"]),
        (lambda t: t.pd.__setitem__((0, 0, 0), -0.1), ["'pd'", "negative"]),
        (lambda t: setattr(t, "pd", torch.zeros_like(t.pd)), ["'pd'", "zero everywhere"]),
    ],
    ids=["t1-in-ms", "t2-in-ms", "nan", "shape", "negative-pd", "empty-pd"],
)
def test_validate_names_the_map(change: Callable[[Twin], object], words: list[str]) -> None:
    twin = _tiny()
    twin.validate()
    change(twin)
    with pytest.raises(InputError) as err:
        twin.validate("maps.h5")
    message = str(err.value)
    assert message.startswith("maps.h5: ")
    for word in words:
        assert word in message


def test_load_rejects_ms_file(tmp_path: Path) -> None:
    twin = builtin("spin-brain", matrix=8)
    twin.t1 = twin.t1 * 1e3  # a file written in ms
    path = tmp_path / "ms.h5"
    twin.save(path)
    with pytest.raises(InputError, match="milliseconds"):
        Twin.load(path)
