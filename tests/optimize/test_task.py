"""Task files: the shipped ones load; mistakes give one-line ConfigErrors naming the key and the value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mrbridge.errors import ConfigError
from mrbridge.optimize.task import load_task, parse_task
from tests.helpers import REPO
from tests.optimize.tasks import GRE, gre_from_zero, spin, write

SHIPPED = ["spin_flip_angle.yaml", "mrzero_gre_from_zero.yaml", "mrzero_gre_sar.yaml", "mrzero_t1_mapping.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tasks_load(name: str) -> None:
    task = load_task(REPO / "protocols" / name)
    assert task.task.kind == "task"
    assert len(task.template()) > 0


def test_spin_task_starts_at_30_and_targets_90() -> None:
    task = load_task(REPO / "protocols" / "spin_flip_angle.yaml")
    assert task.protocol.flip_angle_deg == 30  # type: ignore[union-attr]
    assert task.reference is not None and task.reference.flip_angle_deg == 90  # type: ignore[union-attr]


def _error(tmp_path: Path, task: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        load_task(write(tmp_path / "task.yaml", task))
    message = str(err.value)
    assert str(tmp_path / "task.yaml") in message and "\n" not in message
    return message


def test_unknown_parameter_name(tmp_path: Path) -> None:
    task = spin()
    task["parameters"][0]["name"] = "flip_angel"
    message = _error(tmp_path, task)
    assert "parameters.0.name" in message and "'flip_angel'" in message and "flip_angle" in message


def test_unknown_key(tmp_path: Path) -> None:
    task = spin()
    task["parameters"][0]["bound_deg"] = [0, 90]
    message = _error(tmp_path, task)
    assert "parameters.0.bound_deg" in message and "unknown key" in message


@pytest.mark.parametrize("bounds", [[90, 10], [45, 45]])
def test_impossible_bounds(tmp_path: Path, bounds: list[float]) -> None:
    task = spin()
    task["parameters"][0]["bounds_deg"] = bounds
    message = _error(tmp_path, task)
    assert "parameters.0.bounds_deg" in message and "impossible bounds" in message


def test_template_outside_sigmoid_bounds(tmp_path: Path) -> None:
    task = spin()
    task["parameters"][0]["bounds_deg"] = [45, 120]  # the template starts at 30°
    message = _error(tmp_path, task)
    assert "bounds_deg" in message and "30" in message


def test_negative_duration_bound(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["parameters"].append({"name": "event_time", "bounds_ms": [-1, 5], "parametrization": "sigmoid"})
    assert "cannot be negative" in _error(tmp_path, task)


def test_selection_that_selects_nothing(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["parameters"].append({"name": "ti"})  # a GRE has no inversion
    message = _error(tmp_path, task)
    assert "parameters.2.name" in message and "'ti'" in message and "selects nothing" in message


def test_target_file_of_the_wrong_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "target.npy", np.zeros((16, 16)))
    task = gre_from_zero()
    task["target"] = {"kind": "file", "path": "target.npy"}
    message = _error(tmp_path, task)
    assert "target.path" in message and "(16, 16)" in message and "(8, 8)" in message
    np.save(tmp_path / "target.npy", np.ones((8, 8)))
    assert load_task(tmp_path / "task.yaml").target_image is not None


def test_reference_target_of_another_matrix(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["target"]["protocol"] = {**GRE, "matrix": 16}
    message = _error(tmp_path, task)
    assert "target.protocol" in message and "(16, 16)" in message and "(8, 8)" in message


def test_bad_protocol_inside_a_task(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["sequence"]["set"] = {"te_ms": 0.1}
    message = _error(tmp_path, task)
    assert "te_ms" in message and "0.1" in message


def test_t1_target_needs_the_mlp(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["target"] = {"kind": "t1"}
    assert "recon.mlp" in _error(tmp_path, task)


def test_unknown_system(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["losses"].append({"kind": "hardware", "system": "nosuchscanner"})
    message = _error(tmp_path, task)
    assert "losses.1.system" in message and "nosuchscanner" in message


def test_parse_task_without_file() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_task([1, 2], "inline")
