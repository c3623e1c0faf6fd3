"""protocols/unrolled_r4.yaml, shrunk: the unrolled recon trains jointly with the flip angle through the
simulation, its λₙ move, and the bundle replays it (``mrbridge recon RAW --with BUNDLE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.optimize.task import load_task
from mrbridge.optimize.trainer import optimize
from mrbridge.raw.mrd import write_mrd
from mrbridge.recon.pipeline import Recon
from mrbridge.sequence.builders import build
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO

SMALL = {"matrix": 16, "dummies": 0}


def tiny_task(tmp_path: Path) -> Path:
    task: dict[str, Any] = yaml.safe_load((REPO / "protocols" / "unrolled_r4.yaml").read_text())
    task["sequence"] = {"protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                        "set": {**SMALL, "undersampling": {"acceleration": 2, "acs_lines": 4, "seed": 1}}}
    task["target"]["protocol"] = str(REPO / "protocols" / "gre.yaml")
    task["target"]["set"] = {**SMALL, "undersampling": {"acceleration": 1, "acs_lines": 16}}
    task["recon"]["config"].update(network_features=2, network_depth=1)
    task["recon"]["config"]["unrolled"].update(iterations=2, cg_iterations=3)
    task["data"].update(coils=4, train=2, validation=1)
    task["optimizer"].update(iterations=3, batch=1, validate_every=3, checkpoint_every=3, recon_lr=0.05)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def test_the_shipped_task_validates() -> None:
    task = load_task(REPO / "protocols" / "unrolled_r4.yaml")
    config = task.task.recon.config
    assert config.network == "unrolled" and config.unrolled is not None and config.unrolled.iterations == 6
    assert task.protocol.undersampling is not None and task.protocol.undersampling.acceleration == 4  # type: ignore
    assert task.task.data.coils == 8


@pytest.mark.slow
def test_unrolled_task_trains_and_its_bundle_replays(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    optimize(tiny_task(tmp_path), out, progress=False)
    recon = Recon.load(out)
    assert recon.unrolled is not None
    lambdas = recon.unrolled.lambdas().detach()
    assert lambdas.shape == (2,) and not torch.allclose(lambdas, torch.ones(2))  # the λₙ trained

    task = load_task(tiny_task(tmp_path))
    seq = build(task.protocol)
    raw = to_rawdata(seq, simulate_graph(seq, builtin("brain", matrix=16, coils=4)), noise=1e-3, seed=2)
    write_mrd(raw, tmp_path / "raw.h5")
    done = CliRunner().invoke(app, ["recon", str(tmp_path / "raw.h5"), "--with", str(out), "-o",
                                    str(tmp_path / "image.h5")])
    assert done.exit_code == 0, done.output
    dataset = ismrmrd.Dataset(str(tmp_path / "image.h5"), "dataset", create_if_needed=False)
    try:
        replayed = torch.from_numpy(np.asarray(dataset.read_image("image_0", 0).data)).reshape(-1)
    finally:
        dataset.close()
    with torch.no_grad():
        direct = recon(raw).data.reshape(-1)
    assert torch.allclose(replayed.to(direct.dtype), direct, atol=1e-5 * float(direct.abs().max()))
