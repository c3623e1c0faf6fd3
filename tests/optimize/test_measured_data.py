"""Training on measured scans (``data: {kind: raw}``): fully sampled multi-coil scans, undersampled retrospectively
by the task's line mask, train the recon (and the mask) against their own fully sampled image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mrbridge.errors import ConfigError, InputError
from mrbridge.optimize.data import TwinSet
from mrbridge.optimize.measured import MeasuredSet
from mrbridge.optimize.model import JointModel
from mrbridge.optimize.sampling import select_lines
from mrbridge.optimize.task import parse_task
from mrbridge.optimize.trainer import optimize
from mrbridge.raw.mrd import write_mrd
from mrbridge.sequence.undersampling import ACS_FLAGS, acs_range
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from tests.helpers import REPO, shared_data
from tests.optimize.test_learned_sampling import ACS, SMALL, N, tiny
from tests.raw.twix_reference import adjoint_image, correlation, seq_kspace, twix_scans

SPIN_ECHO = "mr-physics-with-pulseq/MID00243__se_2D_sinc_img"
FULL = {"acceleration": 1, "acs_lines": N, "pattern": "uniform"}


def scans_of_twins(tmp_path: Path, count: int = 3) -> list[str]:
    """The tiny task's template (its protocol fully sampled) simulated on its twins 0 … count−1, written as ISMRMRD."""
    task = parse_task(tiny(), "task.yaml", REPO)
    template, twins = task.template(), TwinSet(task.task.data, N, "task.yaml")
    files = []
    for i in range(count):
        files.append(str(tmp_path / f"scan{i}.h5"))
        write_mrd(to_rawdata(template, simulate_graph(template, twins[i])), files[-1])
    return files


def measured(files: list[str], **data: Any) -> dict[str, Any]:
    return tiny(data={"kind": "raw", "files": files, "validation": 1, "noise": 0.0, **data})


def test_scans_read_back_train_exactly_as_the_twins_they_were_simulated_from(tmp_path: Path) -> None:
    """Same images, targets, loss and mask gradient whether the recon sees the twins simulated in memory or their
    simulations written to ISMRMRD and read back as measured scans (no noise; the target is the fully sampled scan
    through SENSE, which the twin task gets from a reference protocol equal to its template)."""
    files = scans_of_twins(tmp_path)
    twin_spec = tiny(target={"kind": "reference", "protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                             "set": {**SMALL, "undersampling": FULL}})
    twin_spec["data"].update(noise=0.0)
    twin_task, raw_task = parse_task(twin_spec, "twins.yaml", REPO), parse_task(measured(files), "raw.yaml", tmp_path)
    outputs = []
    for task, data in ((twin_task, TwinSet(twin_task.task.data, N, "twins.yaml")), (raw_task, MeasuredSet(raw_task))):
        assert data.train == [0, 1] and data.validation == [2]
        torch.manual_seed(0)
        model = JointModel(task, data)
        out = model([0, 2], [5, 6])  # a drawn mask
        model.loss_terms(out)["loss"].backward()
        assert model.sampling is not None and model.sampling.logits.grad is not None
        outputs.append((out.images.detach(), out.targets, model.sampling.logits.grad.clone()))
    (twin_images, twin_targets, twin_grad), (raw_images, raw_targets, raw_grad) = outputs
    assert torch.allclose(raw_targets, twin_targets, atol=1e-5)
    assert torch.allclose(raw_images, twin_images, atol=1e-4)
    assert float(twin_grad.abs().max()) > 0 and torch.allclose(raw_grad, twin_grad, rtol=1e-3, atol=1e-6)


def test_a_scan_is_seen_with_the_protocols_acs_lines_and_the_noise_asked_for(tmp_path: Path) -> None:
    task = parse_task(measured(scans_of_twins(tmp_path, 2), noise=0.01), "raw.yaml", tmp_path)
    data = MeasuredSet(task)
    seen, full, scan = data.scan(0, seed=3), data.fully_sampled(0), data.scans[0]
    steps = seen.labels["kspace_encode_step_1"]
    assert seen.flags is not None and full.flags is not None
    assert sorted(steps[seen.flags == ACS_FLAGS].tolist()) == list(acs_range(N, ACS))
    assert bool((full.flags == ACS_FLAGS).all()) and torch.equal(full.kdata, scan.kdata)
    noise = seen.kdata - scan.kdata
    sigma = 0.01 * float(scan.kdata.abs().max())  # on each of the real and imaginary parts, as simulations get it
    assert float(noise.real.std()) == pytest.approx(sigma, rel=0.1)
    assert float(noise.imag.std()) == pytest.approx(sigma, rel=0.1)
    assert torch.equal(data.scan(0, seed=3).kdata, seen.kdata)


@pytest.mark.parametrize(("change", "message"), [
    ({"parameters": [{"name": "sampling", "train": False, "init": "pattern"}, {"name": "flip_angle"}]},
     r"field 'parameters\.1\.name' = 'flip_angle': measured scans cannot be simulated again"),
    ({"target": {"kind": "mask", "labels": [1]}},
     r"field 'target\.kind' = 'mask': the target of a measured scan is its own fully sampled image"),
    ({"data": {"kind": "raw", "files": ["a.h5"], "validation": 1}},
     r"field 'data\.files' = \['a\.h5'\]: expected at least one training scan beside the 1 of data\.validation"),
    ({"parameters": [{"name": "flip_angle"}]}, r"field 'parameters': no 'sampling' parameter"),
    ({"data": {"kind": "raw", "files": ["a.h5", "b.h5"], "noise": 0.01, "noise_of": "reference"}},
     r"field 'data\.noise_of' = 'reference': added noise is relative to the scan; expected 'signal'"),
])
def test_task_mistakes_name_the_field_and_the_expectation(change: dict[str, Any], message: str) -> None:
    spec = measured(["a.h5", "b.h5"])
    spec.update(change)
    with pytest.raises(ConfigError, match=message + r".*\(data kind 'raw'\)"):
        parse_task(spec, "task.yaml", REPO)


def test_scans_that_are_not_fully_sampled_on_the_grid_are_refused_before_training(tmp_path: Path) -> None:
    task = parse_task(tiny(), "task.yaml", REPO)
    template, twin = task.template(), TwinSet(task.task.data, N, "task.yaml")[0]
    part = select_lines(template, [0, 3, 5, *acs_range(N, ACS)])
    write_mrd(to_rawdata(part, simulate_graph(part, twin)), tmp_path / "undersampled.h5")
    gre_r4 = str(REPO / "protocols" / "gre_r4.yaml")
    small = parse_task(tiny(sequence={"protocol": gre_r4, "set": {"matrix": 8, "dummies": 0, "undersampling":
                                                                   {"acceleration": 2, "acs_lines": 2}}},
                            target={"kind": "reference", "protocol": str(REPO / "protocols" / "gre.yaml"),
                                    "set": {"matrix": 8}}),
                       "task.yaml", REPO).template()
    write_mrd(to_rawdata(small, simulate_graph(small, TwinSet(task.task.data, 8, "t")[0])), tmp_path / "small.h5")
    for name, message in (("undersampled.h5", r"7 distinct phase-encoding lines; expected a fully sampled 2D scan"),
                          ("small.h5", r"a 8 × 8 × 1 scan .* on the protocol's 16 × 16 grid"),
                          ("missing.h5", r"no such raw data file")):
        spec = measured([name, "undersampled.h5"] if name != "undersampled.h5" else [name, "small.h5"])
        with pytest.raises(InputError, match=rf"raw\.yaml: field 'data\.files\[0\]' = '{name}': .*{message}"):
            MeasuredSet(parse_task(spec, "raw.yaml", tmp_path))


@pytest.mark.slow
def test_a_recon_trains_on_the_real_32_coil_spin_echo(tmp_path: Path) -> None:
    """The Skyra spin echo (64², 32 coils), undersampled at R = 4 by the protocol's variable-density lines: its
    target is the scan's own image (as the independent twixtools + pypulseq + numpy reconstruction draws it), and
    training the unrolled recon on it lowers its error."""
    dat = shared_data(SPIN_ECHO + ".dat")
    spec = tiny(data={"kind": "raw", "files": [str(dat)], "noise": 0.0},
                sequence={"protocol": str(REPO / "protocols" / "gre_r4.yaml"),
                          "set": {"matrix": 64, "undersampling": {"acceleration": 4, "acs_lines": 8}}},
                parameters=[{"name": "sampling", "train": False, "init": "pattern"}])
    spec["target"]["set"] = {"matrix": 64}
    spec["recon"]["config"].update(network_features=4, network_depth=1)
    spec["optimizer"].update(iterations=20, final_recon_steps=0, validate_every=20, checkpoint_every=20,
                             recon_lr=3e-3)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    task = parse_task(spec, str(path), tmp_path)
    target = JointModel(task, MeasuredSet(task)).target(0)[0][0].cpu().numpy()
    k, _, _, seq = seq_kspace(dat.with_suffix(".seq"))
    fov = tuple(float(v) for v in np.atleast_1d(seq.definitions["FOV"])[:2])
    data = twix_scans(dat)
    reference = adjoint_image(data, k[:2].T.reshape(-1, data.shape[2], 2), fov, (64, 64))  # type: ignore[arg-type]
    assert correlation(target, reference) >= 0.99
    summary = optimize(path, tmp_path / "run", progress=False)
    assert summary["final"]["val_loss"] < 0.9 * summary["initial"]["val_loss"]
