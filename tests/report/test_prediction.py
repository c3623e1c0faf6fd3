"""``compare`` names a refined twin's simulation a prediction when the measured scan was held out of the fit (and
its fit when it was not), and ``--matrix`` compares both at the twin's resolution: the raw data band-limited to
the k-space of its grid."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.read import read_raw
from mrbridge.recon.pipeline import Recon
from mrbridge.report.bandlimit import band_limited
from mrbridge.report.compare import compare
from mrbridge.report.html import sha256
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin

PROTOCOL = Path(__file__).resolve().parents[2] / "protocols" / "gre.yaml"


def test_refined_twin_is_named_prediction_or_fit_and_compared_at_its_matrix(tmp_path: Path) -> None:
    seq = build(load_protocol(PROTOCOL), matrix=16)
    twin = builtin("brain", matrix=16)
    meas = tmp_path / "meas.h5"
    write_mrd(simulate(seq, twin, noise=0.01, seed=3), meas)
    roles = {}
    for name, sources in (("plain", None), ("held_out", "0" * 64), ("fitted", f"{'1' * 64},{sha256(meas)}")):
        if sources is not None:
            twin.provenance["refined_from_sha256"] = sources
        sim = tmp_path / f"{name}.h5"
        write_mrd(simulate(seq, twin), sim)
        result = compare(sim, meas, tmp_path / name, matrix=8 if name == "held_out" else None)
        roles[name] = result.role
        assert json.loads(result.metrics_json.read_text())["role"] == result.role
        if name == "held_out":
            assert any("band-limited to the k-space of a 8×8 grid" in note for note in result.notes)
            assert "Prediction of a held-out scan" in result.index.read_text()
            expected = Recon()(band_limited(read_raw(meas), 8)).data.abs().float()
            assert torch.allclose(result.meas_image.data.abs().float(), expected, rtol=1e-4, atol=1e-6)
    assert roles == {"plain": "simulation", "held_out": "prediction", "fitted": "fit"}


def test_band_limit_keeps_the_centre_of_k_space_by_trajectory_or_by_labels() -> None:
    """A 16² Cartesian scan keeps 8 × 8 samples for an 8² grid, with k-space positions taken from the trajectory
    and, without one, from the labels; the kept samples are unchanged."""
    seq = build(load_protocol(PROTOCOL), matrix=16)
    raw = simulate(seq, builtin("brain", matrix=16))
    assert raw.traj is not None
    for data in (raw, replace(raw, traj=None)):
        limited = band_limited(data, 8)
        kept = limited.kdata[0] != 0
        assert int(kept.sum()) == 64 and int(kept.any(1).sum()) == 8 and int(kept.any(0).sum()) == 8
        assert torch.equal(limited.kdata[0][kept], raw.kdata[0][kept])
