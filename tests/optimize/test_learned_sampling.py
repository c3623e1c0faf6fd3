"""Learned sampling (protocols/learned_sampling_r4.yaml, shrunk): the line logits learn through the recon, the
bundle holds exactly the budget of lines (ACS included), and its export acquires those lines, REF/IMA on the ACS
ones, and reconstructs with ``recon --with``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mrbridge.cli import app
from mrbridge.errors import ConfigError
from mrbridge.optimize.data import TwinSet
from mrbridge.optimize.model import JointModel
from mrbridge.optimize.sampling import LineSampling, SamplingParam, select_lines
from mrbridge.optimize.task import load_task, parse_task
from mrbridge.optimize.trainer import Trainer, optimize
from mrbridge.raw.seqreadouts import read_seq_readouts
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.undersampling import ACS_FLAGS, Undersampling, acquired_lines, acs_range
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO

N, ACS, BUDGET = 16, 4, 8  # 16 lines at R = 2: 8 lines, 4 of them ACS
SMALL = {"matrix": N, "dummies": 0}


def tiny(**changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = yaml.safe_load((REPO / "protocols" / "learned_sampling_r4.yaml").read_text())
    task["sequence"] = {"protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                        "set": {**SMALL, "undersampling": {"acceleration": 2, "acs_lines": ACS}}}
    task["target"]["protocol"] = str(REPO / "protocols" / "gre.yaml")
    task["target"]["set"] = {**SMALL, "undersampling": {"acceleration": 1, "acs_lines": N}}
    task["recon"]["config"].update(network_features=2, network_depth=1)
    task["recon"]["config"]["unrolled"].update(iterations=2, cg_iterations=3)
    task["data"].update(coils=4, train=2, validation=1)
    task["optimizer"].update(iterations=2, final_recon_steps=1, batch=1, validate_every=3, checkpoint_every=3)
    task.update(changes)
    return task


def write(tmp_path: Path, task: dict[str, Any]) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def test_the_shipped_task_validates() -> None:
    task = load_task(REPO / "protocols" / "learned_sampling_r4.yaml")
    assert task.sampling is not None and task.sequence_specs == []
    readouts = task.template().readouts()  # fully sampled: the lines to choose from, the ACS ones flagged
    assert [lab.kspace_encode_step_1 for *_, lab in readouts] == list(range(32))
    assert [lab.kspace_encode_step_1 for *_, lab in readouts if lab.flags == ACS_FLAGS] == list(acs_range(32, 4))


@pytest.mark.parametrize(("change", "message"), [
    ({"sequence": {"protocol": str(REPO / "protocols" / "gre.yaml"), "set": SMALL}},
     r"field 'parameters\.0\.name' = 'sampling': needs a Cartesian protocol with an 'undersampling' key"),
    ({"sequence": {"protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                   "set": {**SMALL, "undersampling": {"acceleration": 4, "acs_lines": 4}}}},
     r"budget round\(matrix/acceleration\) = 4 lines leaves none to learn beside undersampling\.acs_lines = 4"),
    ({"recon": {"config": {"method": "cg", "network": "unet"}}},
     r"field 'recon\.config\.method' = 'cg': .* expected 'sense' or 'fft'"),
    ({"parameters": [{"name": "sampling", "slope": 0}]}, r"field 'parameters\.0\.slope' = 0: .*greater than 0"),
    ({"parameters": [{"name": "sampling", "budget": 3}]}, r"field 'parameters\.0\.budget' = 3: unknown key"),
    ({"parameters": [{"name": "sampling", "init": "pattern"}],
      "sequence": {"protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                   "set": {**SMALL, "undersampling": {"acceleration": 4, "acs_lines": 2, "pattern": "uniform"}}}},
     r"field 'parameters\.0\.init' = 'pattern': the protocol's 'uniform' lines \(5\) are not the budget"),
    ({"parameters": [{"name": "sampling", "train": False}]},
     r"field 'parameters\.0\.train' = false with init 'zero': every line is equally likely"),
    ({"recon": {"config": {"method": "sense"}}},
     r"field 'optimizer\.final_recon_steps' = 1: needs a recon that trains \(a network, train_tikhonov or an MLP\)"),
    ({"parameters": [{"name": "sampling"}, {"name": "sampling"}]},
     r"field 'parameters\.1\.name' = 'sampling': expected at most one"),
])
def test_mistakes_name_the_field_and_the_expectation(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_task(tiny(**change), "task.yaml", REPO)


def test_the_line_weights_enter_the_encoding_as_the_binary_mask_does() -> None:
    """SENSE of the fully sampled data with 0/1 line weights = SENSE of the data of only those lines."""
    task = parse_task(tiny(), "task.yaml", REPO)
    full = task.template()
    lines = sorted({1, 4, 12, 13} | set(acs_range(N, ACS)))
    part = select_lines(full, lines)
    assert [lab.kspace_encode_step_1 for *_, lab in part.readouts()] == lines
    twin = builtin("brain", matrix=N, coils=4)
    recon = Recon(ReconConfig(method="sense", coil_combine="sensitivity", iterations=8))
    raw_full = to_rawdata(full, simulate_graph(full, twin))
    weights = torch.zeros(N)
    weights[lines] = 1.0
    weighted = recon(raw_full, weights=weights[raw_full.labels["kspace_encode_step_1"]]).data
    direct = recon(to_rawdata(part, simulate_graph(part, twin))).data
    assert torch.allclose(weighted, direct, atol=1e-4 * float(direct.abs().max()))
    with pytest.raises(ValueError, match=r"expected \(16,\) \(one per readout\) and method 'fft' or 'sense'"):
        Recon(ReconConfig(method="cg"))(raw_full, weights=torch.ones(N))


def test_the_logits_learn_through_the_training_mask() -> None:
    torch.manual_seed(0)
    task = parse_task(tiny(), "task.yaml", REPO)
    model = JointModel(task, TwinSet(task.task.data, N, "task.yaml"))
    sampling = model.sampling
    assert sampling is not None and model.sequence_parameters() == [sampling.logits]
    drawn = sampling.weights(binary=False)
    assert drawn.shape == (N,) and bool((drawn[list(acs_range(N, ACS))] == 1).all())
    assert 0 < float(drawn.detach().sum()) < N
    binary = sampling.weights(binary=True)
    assert int(binary.sum()) == BUDGET and set(binary.nonzero().flatten().tolist()) >= set(acs_range(N, ACS))
    model.loss_terms(model([0], [1]))["loss"].backward()
    grad = sampling.logits.grad
    assert grad is not None and grad.shape == (N - ACS,)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0


def test_straight_through_trains_on_binary_draws() -> None:
    """The default training mask is binary in value (the recon sees masks like the exported one) while the
    logits still get the relaxed mask's gradient; the LOUPE mask of ``estimator: relaxed`` is fractional."""
    spec = SamplingParam(name="sampling", init="random")
    sampling = LineSampling(spec, N, Undersampling(acceleration=2, acs_lines=ACS))
    drawn = sampling.weights(binary=False, seed=3)
    assert set(drawn.detach().unique().tolist()) <= {0.0, 1.0}
    (drawn * torch.arange(N)).sum().backward()
    assert sampling.logits.grad is not None and float(sampling.logits.grad.abs().max()) > 0
    relaxed = LineSampling(spec.model_copy(update={"estimator": "relaxed"}), N,
                           Undersampling(acceleration=2, acs_lines=ACS)).weights(binary=False, seed=3)
    assert bool(((relaxed > 0) & (relaxed < 1)).any())


def test_final_recon_steps_train_the_recon_alone_for_the_binary_mask(tmp_path: Path) -> None:
    """``optimizer.final_recon_steps``: after the joint steps the logits stop and the recon trains on the mask
    the bundle exports, not on drawn ones."""
    torch.set_num_threads(1)
    spec = tiny()
    spec["optimizer"].update(iterations=2, final_recon_steps=2)
    task = parse_task(spec, "task.yaml", REPO)
    trainer = Trainer(task, tmp_path / "run", progress=False)
    sampling = trainer.model.sampling
    assert sampling is not None and trainer.total == 4
    seen: list[bool] = []
    weights = sampling.weights

    def spy(*, binary: bool, seed: int = 0) -> torch.Tensor:
        seen.append(binary)
        return weights(binary=binary, seed=seed)

    sampling.weights = spy  # type: ignore[method-assign]
    logits, recon = [], []
    for _ in range(4):
        row = trainer._one_step()
        trainer.step += 1
        logits.append(sampling.logits.detach().clone())
        recon.append(torch.cat([p.detach().flatten() for p in trainer.model.recon_parameters()]))
        assert row["phase"] == ("joint" if trainer.step <= 2 else "recon")
    assert seen == [False, False, True, True]
    assert not torch.equal(logits[0], logits[1])  # joint: the mask learns
    assert torch.equal(logits[1], logits[2]) and torch.equal(logits[2], logits[3])  # final: it stays
    assert not torch.equal(recon[2], recon[3])  # while the recon trains


@pytest.mark.parametrize("pattern", ["variable_density", "poisson_disc"])
def test_pattern_start_is_the_protocols_mask_and_stays_when_not_trained(pattern: str) -> None:
    undersampling = Undersampling(acceleration=4, acs_lines=4, pattern=pattern, seed=5)
    own = acquired_lines(32, undersampling)[0]
    fixed = LineSampling(SamplingParam(name="sampling", init="pattern", train=False), 32, undersampling)
    assert fixed.chosen() == own and not fixed.logits.requires_grad
    expected = torch.zeros(32)
    expected[own] = 1.0
    assert torch.equal(fixed.weights(binary=False, seed=1), expected)  # training sees the mask itself
    learned = LineSampling(SamplingParam(name="sampling", init="pattern"), 32, undersampling)
    assert learned.chosen() == own and learned.logits.requires_grad
    p = learned.probabilities().detach()
    inside = torch.tensor([int(i) in own for i in learned.outer])
    assert float(p[inside].min()) > 5 * float(p[~inside].max())  # the start favours the pattern, not only it
    assert float(p.mean()) == pytest.approx(learned.extra / len(p))


def _image(path: Path) -> np.ndarray:
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        return np.asarray(dataset.read_image("image_0", 0).data)
    finally:
        dataset.close()


@pytest.mark.slow
def test_a_run_exports_the_learned_lines_and_its_bundle_reconstructs_them(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "run"
    summary = optimize(write(tmp_path, tiny()), out, progress=False)
    mask = json.loads((out / "sampling.json").read_text())
    lines, acs = mask["lines"], list(acs_range(N, ACS))
    assert len(lines) == BUDGET == mask["budget"] and set(acs) <= set(lines) and mask["acs_lines"] == acs
    assert summary["sampling"] == lines and len(mask["probability"]) == N
    outer = [p for i, p in enumerate(mask["probability"]) if i not in acs]
    assert abs(np.mean(outer) - (BUDGET - ACS) / (N - ACS)) < 1e-3  # LOUPE's rescaling to the budget
    saved = Sequence.load(out / "sequence.json")
    assert [lab.kspace_encode_step_1 for *_, lab in saved.readouts()] == lines
    # the protocol with only those lines: the lines left out take no time
    assert len(saved) == len(load_task(out / "task.yaml").template()) - (N - BUDGET)

    runner = CliRunner()
    done = runner.invoke(app, ["export", str(out), "-o", str(tmp_path / "learned.seq")])
    assert done.exit_code == 0, done.output
    read = read_seq_readouts(tmp_path / "learned.seq")
    assert read.labels["kspace_encode_step_1"].tolist() == lines  # the ADC lines are the mask's
    assert [line for line, flags in zip(lines, read.flags.tolist(), strict=True) if flags & ACS_FLAGS] == acs
    assert all(flags & ACS_FLAGS in (0, ACS_FLAGS) for flags in read.flags.tolist())  # REF+IMA together or neither

    done = runner.invoke(app, ["simulate", "--seq", str(tmp_path / "learned.seq"), "--twin", "builtin:brain",
                               "--coils", "4", "--noise", "0.001", "-o", str(tmp_path / "raw.h5")])
    assert done.exit_code == 0, done.output
    for name, args in (("with", ["--with", str(out)]), ("sense", ["--method", "sense"])):
        done = runner.invoke(app, ["recon", str(tmp_path / "raw.h5"), *args, "-o", str(tmp_path / f"{name}.h5")])
        assert done.exit_code == 0, done.output
        image = _image(tmp_path / f"{name}.h5")
        assert image.size == N * N and np.isfinite(image).all() and np.abs(image).max() > 0
