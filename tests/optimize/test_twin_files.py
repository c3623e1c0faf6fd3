"""Twin files as training data (``data: {kind: files}``): calibrated twins, read relative to the task file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from mrbridge.errors import InputError
from mrbridge.optimize.task import load_task
from mrbridge.optimize.trainer import Trainer, optimize
from mrbridge.twin.calibrate import calibrate
from mrbridge.twin.phantoms import builtin
from tests.optimize.test_learned_sampling import N, tiny


def test_calibrated_twins_train_from_paths_relative_to_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    brain = builtin("brain", matrix=N)
    (tmp_path / "twins").mkdir()
    for name, flip in (("a", False), ("b", True)):
        maps = {k: (v.flip(-1) if flip else v).numpy() for k, v in
                {"pd": brain.pd, "t1": brain.t1 * 1e3, "t2": brain.t2 * 1e3}.items()}
        twin = calibrate(maps, units={"t1": "ms", "t2": "ms"}, voxel_mm=(12.5, 12.5, 5.0))
        twin.save(tmp_path / "twins" / f"{name}.h5")
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump(tiny(data={"kind": "files", "files": ["twins/a.h5", "twins/b.h5"],
                                              "validation": 1, "noise": 0.0005})))
    monkeypatch.chdir(tmp_path / "twins")  # elsewhere: the paths are the task's
    trainer = Trainer(load_task(task), tmp_path / "run", progress=False)
    assert trainer.data.train == [0] and trainer.data.validation == [1]
    assert torch.equal(trainer.data[1].pd[0], brain.pd[0].flip(-1))  # type: ignore[index]
    summary = optimize(task, tmp_path / "run2", progress=False)
    assert all(math.isfinite(v) for v in summary["final"].values())
    task.write_text(task.read_text().replace("twins/b.h5", "twins/c.h5"))
    with pytest.raises(InputError, match=r"field 'data\.files\[1\]' = 'twins/c\.h5'"):
        optimize(task, tmp_path / "run3", progress=False)
