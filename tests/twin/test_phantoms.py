"""Built-in twins against their YAML tables, with an independent point-in-ellipse test on Twin.positions()."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml

from mrbridge.errors import ConfigError, InputError
from mrbridge.twin.phantoms import BUILTINS, PHANTOMS_DIR, SpinTable, builtin, load_table, open_twin
from mrbridge.twin.twin import Twin


def _inside(twin: Twin, row: dict, slack: float = 0.0) -> torch.Tensor:
    """Voxels (y, x) whose centre lies in the ellipse ``row`` (normalised coordinates, angle ccw in
    degrees), its boundary moved out by ``slack`` (negative: in) to set aside centres on it (rounding)."""
    pos = twin.positions()[0].double()  # float32 centres: hence the slack
    u = pos[..., 0] / (twin.fov[0] / 2) - row["x"]
    v = pos[..., 1] / (twin.fov[1] / 2) - row["y"]
    c, s = math.cos(math.radians(row["angle_deg"])), math.sin(math.radians(row["angle_deg"]))
    return ((u * c + v * s) / row["a"]) ** 2 + ((-u * s + v * c) / row["b"]) ** 2 <= 1.0 + slack


def _owned(twin: Twin, rows: list[dict]) -> list[torch.Tensor]:
    """For each row, the voxels it surely paints last (later rows overwrite earlier ones)."""
    sure = [_inside(twin, r, -1e-5) for r in rows]
    maybe = [_inside(twin, r, 1e-5) for r in rows]
    return [m & ~torch.stack(maybe[i + 1:]).any(0) if i + 1 < len(rows) else m for i, m in enumerate(sure)]


def _table(name: str) -> dict:
    return yaml.safe_load((PHANTOMS_DIR / name).read_text())


def test_spin_table_is_seeds_table_1() -> None:
    rows = _table("spin_brain.yaml")["ellipses"]
    assert [r["row"] for r in rows] == list(range(1, 13))
    assert [r.get("random", False) for r in rows] == [False] * 4 + [True] * 8
    keys = ("a", "b", "angle_deg", "rho", "t1_ms", "t2_ms", "tissue")
    table = [tuple(r[k] for k in keys) for r in rows]
    assert table == [  # SEEDS.md, SPIN Table 1
        (0.72, 0.95, 0, 0.8, 324, 70, "scalp"),
        (0.69, 0.92, 0, 0.12, 533, 50, "bone & marrow"),
        (0.66, 0.87, 0, 0.98, 4200, 1990, "CSF"),
        (0.63, 0.84, 0, 0.745, 857, 100, "grey matter"),
        (0.35, 0.13, -72, 0.98, 4200, 1990, "CSF"),
        (0.28, 0.09, 72, 0.98, 4200, 1990, "CSF"),
        (0.18, 0.22, 0, 0.617, 583, 80, "white matter"),
        (0.08, 0.08, 0, 0.95, 926, 100, "tumour"),
        (0.08, 0.05, 0, 0.95, 926, 100, "tumour"),
        (0.08, 0.05, -90, 0.95, 926, 100, "tumour"),
        (0.08, 0.08, 0, 0.95, 926, 100, "tumour"),
        (0.08, 0.08, 0, 0.95, 926, 100, "tumour"),
    ]
    assert [(r["x"], r["y"]) for r in rows[:4]] == [(0, 0), (0, 0), (0, -0.0184), (0, -0.0184)]


def test_spin_brain_values_equal_the_table() -> None:
    twin = builtin("spin-brain", matrix=128)
    rows = _table("spin_brain.yaml")["ellipses"]
    assert twin.shape == (1, 128, 128)
    assert twin.fov == pytest.approx((0.064, 0.064, 0.005))
    assert torch.isinf(twin.t2dash).all() and (twin.b0 == 0).all() and (twin.b1 == 1).all()
    assert twin.labels is not None
    for row, owned in zip(rows, _owned(twin, rows), strict=True):
        assert owned.sum() > 0, row["row"]
        for name, value in (("pd", row["rho"]), ("t1", row["t1_ms"] * 1e-3), ("t2", row["t2_ms"] * 1e-3)):
            values = getattr(twin, name)[0][owned]
            assert torch.allclose(values, torch.tensor(value, dtype=values.dtype)), (row["row"], name)
        assert {twin.label_names[int(k)] for k in twin.labels[0][owned].unique()} == {row["tissue"]}
    outside = ~torch.stack([_inside(twin, r, 1e-5) for r in rows]).any(0)
    assert (twin.pd[0][outside] == 0).all() and (twin.labels[0][outside] == 0).all()


def _inner_layout(twin: Twin) -> tuple[list[dict], dict]:
    rows = _table("spin_brain.yaml")["ellipses"]
    inner = [r for r in rows if r.get("random")]
    if "centres" in twin.provenance:
        inner = [r | {"x": x, "y": y} for r, (x, y) in zip(inner, twin.provenance["centres"], strict=True)]
    return inner, rows[3]


@pytest.mark.parametrize("seed", [None, 0, 1, 7, 123])
def test_inner_components_do_not_overlap_and_stay_inside(seed: int | None) -> None:
    """Rasterised on a finer grid than the placement used: pairwise disjoint, inside grey matter."""
    twin = builtin("spin-brain" if seed is None else "spin-random", matrix=16, seed=seed or 0)
    fine = builtin("spin-brain", matrix=400)  # positions only
    inner, grey = _inner_layout(twin)
    masks = [_inside(fine, r) for r in inner]
    region = _inside(fine, grey)
    for m in masks:
        assert m.sum() > 0 and not (m & ~region).any()
    for a, b in itertools.combinations(masks, 2):
        assert not (a & b).any()


def test_spin_random_is_seeded_and_painted_where_drawn() -> None:
    a, b, c = (builtin("spin-random", matrix=64, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.pd, b.pd) and torch.equal(a.labels, b.labels)  # type: ignore[arg-type]
    assert a.provenance["centres"] == b.provenance["centres"]
    assert not torch.equal(a.pd, c.pd)
    assert a.provenance["seed"] == 5
    inner, _ = _inner_layout(a)
    rows = _table("spin_brain.yaml")["ellipses"][:4] + inner
    for row, owned in zip(rows, _owned(a, rows), strict=True):
        if owned.any():
            assert torch.allclose(a.t1[0][owned], torch.tensor(row["t1_ms"] * 1e-3)), row["row"]
    assert not torch.equal(a.pd, builtin("spin-brain", matrix=64).pd)


def test_matrix_change_resamples_the_ellipses() -> None:
    """Voxel centres of a 32² grid are every 4th centre of a 128² grid: the values there agree exactly."""
    for name in BUILTINS:
        coarse, fine = builtin(name, matrix=32, seed=2), builtin(name, matrix=128, seed=2)
        for m in ("pd", "t1", "t2", "t2dash", "b1", "labels"):
            assert torch.equal(getattr(fine, m)[:, ::4, ::4], getattr(coarse, m)), (name, m)


def test_brain_values_and_fields() -> None:
    twin = builtin("brain", matrix=96)
    table = _table("brain3t.yaml")
    assert twin.fov == pytest.approx((0.22, 0.22, 0.005))
    assert twin.labels is not None
    tissue = twin.pd > 0
    for name, t in table["tissues"].items():
        here = twin.labels == t["label"]
        assert here.sum() > 10, name
        assert twin.label_names[t["label"]] == name
        assert torch.allclose(twin.pd[here], torch.tensor(float(t["pd"])))
        if t["pd"] == 0:
            continue
        assert torch.allclose(twin.t1[here], torch.tensor(t["t1_ms"] * 1e-3))
        assert torch.allclose(twin.t2[here], torch.tensor(t["t2_ms"] * 1e-3))
        if "r2dash_per_s" in t:  # T2' = 1/R2'
            assert torch.allclose(1 / twin.t2dash[here], torch.tensor(float(t["r2dash_per_s"])), rtol=1e-5)
        else:
            assert torch.isinf(twin.t2dash[here]).all()
    assert set(twin.label_names.values()) >= {"grey_matter", "white_matter", "csf", "fat"}
    b0 = twin.b0[tissue].double()
    assert abs(b0.mean().item()) < 1e-3
    assert 10 < b0.abs().max().item() < 100
    assert b0.std().item() > 3  # smooth but not flat
    b1 = twin.b1[tissue]
    assert 0.8 <= b1.min().item() and b1.max().item() <= 1.2 + 1e-6
    assert twin.b1[0, 48, 48] > twin.b1[tissue].mean()  # centre brightening


def test_coils_attach_to_builtins() -> None:
    twin = builtin("brain", matrix=32, coils=8)
    assert twin.coil_sens.shape == (8, 1, 32, 32)
    assert twin.provenance["coils"] == 8
    rss = twin.coil_sens.abs().pow(2).sum(0).sqrt()
    assert rss[0, 16, 16].item() == pytest.approx(1.0, abs=1e-6)


def test_open_twin_specs(tmp_path: Path) -> None:
    twin = open_twin("builtin:spin-random", matrix=24, coils=2, seed=4)
    assert twin.shape == (1, 24, 24) and twin.coils == 2 and twin.provenance["seed"] == 4
    assert open_twin("builtin:brain").shape == (1, 64, 64)
    path = tmp_path / "twin.h5"
    twin.save(path)
    same = open_twin(str(path), matrix=64)  # a file keeps its grid
    assert torch.equal(same.pd, twin.pd) and torch.equal(same.coil_sens, twin.coil_sens)
    assert open_twin(str(path), coils=4).coils == 4
    for spec, words in (("builtin:nope", ["'nope'", "spin-brain"]), ("brain", ["'brain'", "builtin:NAME"]),
                        (str(tmp_path / "missing.h5"), ["missing.h5", ".h5"])):
        with pytest.raises(InputError) as err:
            open_twin(spec)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(InputError, match="coils = 0"):
        builtin("brain", coils=0)
    with pytest.raises(InputError, match="matrix"):
        builtin("brain", matrix=2)


def test_bad_table_is_a_config_error(tmp_path: Path) -> None:
    data = _table("spin_brain.yaml")
    data["ellipses"][2]["t1_s"] = 4.2
    bad = tmp_path / "spin.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"spin\.yaml: field 'ellipses\.2\.t1_s'"):
        load_table(bad, SpinTable)
