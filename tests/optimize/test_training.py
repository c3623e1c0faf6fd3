"""Short runs: SPIN's flip angle moves toward 90°, MRzero's GRE-from-zero loss falls, the bundle reloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.optimize.task import load_task
from mrbridge.optimize.trainer import Trainer, optimize
from mrbridge.recon.pipeline import Recon
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.safety import check_safety
from mrbridge.system import System
from tests.export.common import kspace_error_in_steps, read_back
from tests.optimize.tasks import SE, gre_from_zero, spin, t1_mapping, write


@pytest.mark.slow
def test_spin_flip_angle_moves_toward_90(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    summary = optimize(write(tmp_path / "spin.yaml", spin()), tmp_path / "run", progress=False)
    angle = summary["parameters"]["flip_angle"][0]
    assert angle > 60, f"the excitation went from 30° to {angle:.1f}°, expected toward 90°"
    assert abs(angle - 90) < 60 - 30  # closer to 90° than the start
    assert summary["final"]["val_loss"] < summary["initial"]["val_loss"]
    bundle = tmp_path / "run"
    for name in ("sequence.json", "recon.json", "recon.pt", "task.yaml", "history.csv", "summary.json",
                 "checkpoints/last.pt", "plots/loss.png", "plots/flip_angles.png", "plots/kspace.png"):
        assert (bundle / name).is_file(), name
    seq = Sequence.load(bundle / "sequence.json")
    excitations = [rep for rep in seq if rep.pulse.usage == "excitation"]
    assert float(excitations[0].pulse.angle) == pytest.approx(angle * torch.pi / 180, rel=1e-5)
    recon = Recon.load(bundle)
    assert recon.network is not None and recon.config.network == "cnn"
    rows = list(csv.DictReader((bundle / "history.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["phase"] for r in rows} == {"recon", "sequence"}
    assert json.loads((bundle / "summary.json").read_text())["steps"] == len(rows)


def test_gre_from_zero_loss_falls_and_the_bundle_exports_safely(tmp_path: Path) -> None:
    """Every sample's moment learned from zero: the loss falls, and the bundle (readouts whose gradient changes
    from sample to sample) exports on Prisma with every safety check passed and pypulseq's k at the samples."""
    torch.set_num_threads(1)
    task = gre_from_zero(iterations=20)
    task["losses"].append({"kind": "hardware", "system": "prisma"})
    summary = optimize(write(tmp_path / "gre.yaml", task), tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.5 * first
    assert summary["final"]["val_nrmse"] < summary["initial"]["val_nrmse"]
    seq = Sequence.load(tmp_path / "run" / "sequence.json")
    readouts = [rep.gradm[rep.adc_usage] for rep in seq if bool(rep.adc_usage.any())]
    assert max(float(m.diff(dim=0).abs().max()) for m in readouts) > 0  # not one constant readout gradient
    prisma = System.load("prisma")
    result = export_seq(seq, prisma, path=tmp_path / "gre0.seq")
    report = check_safety(result.pulseq, prisma)
    assert report.passed, report.summary()
    assert kspace_error_in_steps(read_back(tmp_path / "gre0.seq"), seq).max() < 1e-3


def test_a_used_folder_needs_resume(tmp_path: Path) -> None:
    task = write(tmp_path / "gre.yaml", gre_from_zero(iterations=2, checkpoint_every=1))
    optimize(task, tmp_path / "run", progress=False)
    with pytest.raises(InputError, match="--resume"):
        optimize(task, tmp_path / "run", progress=False)
    again = optimize(task, tmp_path / "run", resume=True, progress=False)  # finished: nothing left to do
    assert again["steps"] == 2


def test_t1_mapping_learns_inversion_times_and_an_mlp(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    summary = optimize(write(tmp_path / "t1.yaml", t1_mapping()), tmp_path / "run", progress=False)
    tis = summary["parameters"]["ti"]
    assert len(tis) == 3 and max(tis) > 10  # from 0.1 ms: the sequence learned to wait (≥ 1 inversion)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])  # the MLP fits T1 (s²) on its twins
    assert "val_t1_rel_err" in rows[-1]
    assert (tmp_path / "run" / "mlp.pt").is_file()
    seq = Sequence.load(tmp_path / "run" / "sequence.json")
    inversions = [rep for rep in seq if rep.pulse.usage == "inversion"]
    assert [float(rep.event_time[0]) * 1e3 for rep in inversions] == pytest.approx(tis, rel=1e-5)


def test_early_stopping(tmp_path: Path) -> None:
    """No validation can improve by 1e9: the run stops after patience + 1 validations, with a bundle."""
    task = gre_from_zero(iterations=30, validate_every=2, early_stopping={"patience": 2, "min_delta": 1e9})
    summary = optimize(write(tmp_path / "gre.yaml", task), tmp_path / "run", progress=False)
    assert summary["stopped_early"] and summary["steps"] == 6
    assert Sequence.load(tmp_path / "run" / "sequence.json").adc_count == 64


def test_random_restarts_keep_the_best_trial(tmp_path: Path) -> None:
    task = gre_from_zero(iterations=1, restarts=3, restart_steps=1, checkpoint_every=100)
    task["parameters"][0].update(init="random", bounds_deg=[1, 40])
    optimize(write(tmp_path / "gre.yaml", task), tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert [r["phase"] for r in rows] == ["trial"] * 3 + ["joint"]
    trials = rows[:3]
    assert len({r["flip_angle_mean"] for r in trials}) == 3  # three different random starts
    best = min(trials, key=lambda r: float(r["loss"]))
    assert best is not trials[-1]  # (this seed) so continuing from the last trial would fail below
    # the joint step starts from the best trial: its angles are one Adam step (≤ lr·(1 + ε)) away
    assert abs(float(rows[-1]["flip_angle_mean"]) - float(best["flip_angle_mean"])) < 0.2 * 1.01


def test_trained_tikhonov_grows_with_noise_and_lands_in_the_bundle(tmp_path: Path) -> None:
    """CG with a trainable λ on noisy Cartesian data: E is unitary, so the image is Eᴴy / (1 + λ) and the MSE
    against the noise-free target is lowest for a shrinkage λ > 0 that grows with the noise; from λ = 10⁻³ the
    trained λ must grow, and the bundle's recon.pt carries it."""
    torch.set_num_threads(1)
    task = gre_from_zero(iterations=12, recon_lr=0.3)
    task["parameters"] = [{**task["parameters"][0], "init": "template"}]  # the target's Cartesian GRE at 5°
    task["recon"] = {"config": {"method": "cg", "iterations": 2, "tikhonov": 1e-3, "train_tikhonov": True}}
    task["data"]["noise"] = 0.2
    optimize(write(tmp_path / "gre.yaml", task), tmp_path / "run", progress=False)
    learned = float(Recon.load(tmp_path / "run").tikhonov().detach())
    assert learned > 1e-2, f"λ went from 1e-3 to {learned:.2e}, expected to grow with noisy data"


def test_a_twin_far_smaller_than_the_image_is_noted(tmp_path: Path) -> None:
    """SPIN's phantoms span 64 mm: the SPIN task's 64 mm images get no note; at 200 mm the note gives both sizes."""
    notes = {}
    for fov in (64, 200):
        task = spin()
        task["sequence"]["set"]["fov_mm"] = fov
        task["target"]["protocol"] = {**SE, "fov_mm": fov}
        trainer = Trainer(load_task(write(tmp_path / f"spin{fov}.yaml", task)), tmp_path / "run", progress=False)
        notes[fov] = trainer.notes
    assert notes[64] == []
    assert len(notes[200]) == 1 and "spans 64 × 64 mm, 32 % of the sequence's 200 × 200 mm" in notes[200][0]
