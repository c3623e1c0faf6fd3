"""Tiny task files for the optimize tests (inline protocols, so they can be written anywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SE = {"kind": "se", "matrix": 16, "fov_mm": 64, "dwell_us": 100, "te_ms": 40, "tr_ms": 10000}
GRE = {"kind": "gre", "matrix": 8, "fov_mm": 200, "dwell_us": 80, "te_ms": 3, "tr_ms": 20, "flip_angle_deg": 5,
       "rf_spoiling_deg": 117, "dummies": 0}


def spin(**optimizer: Any) -> dict[str, Any]:
    """SPIN at 16×16: a shared excitation angle from 30°, a tiny CNN pretrained on 90° data, alternating."""
    return {
        "kind": "task", "name": "tiny-spin",
        "sequence": {"protocol": SE, "set": {"flip_angle_deg": 30}},
        "parameters": [{"name": "flip_angle", "shared": True, "bounds_deg": [1, 179],
                        "parametrization": "sigmoid", "lr": 0.3}],
        "target": {"kind": "reference", "protocol": SE},
        "losses": [{"kind": "mse"}],
        "recon": {"config": {"method": "fft", "network": "cnn", "network_features": 4, "network_depth": 2,
                             "prewhiten": False}},
        "data": {"kind": "spin_random", "train": 4, "validation": 2, "noise": 0.025,
                 "noise_of": "reference_image"},
        "sim": {"engine": "bloch", "spins": 1},
        "optimizer": {"mode": "alternating", "batch": 2, "recon_lr": 0.003, "checkpoint_every": 2,
                      "validate_every": 100,
                      "alternating": {"pretrain_steps": 2, "rounds": 2, "sequence_steps": 3, "recon_steps": 1},
                      **optimizer},
    }


def gre_from_zero(**optimizer: Any) -> dict[str, Any]:
    """MRzero's GRE from zero moments and 1° at 8×8 on the brain twin, adjoint recon."""
    return {
        "kind": "task", "name": "tiny-gre0",
        "sequence": {"protocol": GRE},
        "parameters": [
            {"name": "flip_angle", "init": 1.0, "bounds_deg": [-180, 180], "parametrization": "identity", "lr": 0.2},
            {"name": "gradm", "axes": ["x", "y"], "init": "zero", "lr": 0.1},
        ],
        "target": {"kind": "reference", "protocol": GRE},
        "losses": [{"kind": "mse"}],
        "recon": {"config": {"method": "adjoint"}},
        "data": {"kind": "twin", "twin": "builtin:brain"},
        "sim": {"engine": "bloch", "spins": 1},
        "optimizer": {"mode": "joint", "iterations": 40, "lr": 0.1, "checkpoint_every": 5, "validate_every": 20,
                      **optimizer},
    }


def write(path: Path, task: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


IRGRE = {"kind": "irgre", "matrix": 8, "fov_mm": 200, "dwell_us": 80, "te_ms": 3, "gre_tr_ms": 10, "flip_angle_deg": 5,
         "lines_per_inversion": 8, "order": "centric", "ti_ms": 100, "tr_ms": 1000, "dummies": 0}


def t1_mapping(**optimizer: Any) -> dict[str, Any]:
    """MRzero's T1 mapping at 8×8 with 3 inversions: TI and recovery from ~0 with a per-voxel MLP."""
    return {
        "kind": "task", "name": "tiny-t1",
        "sequence": {"protocol": IRGRE, "repeat": 3},
        "parameters": [{"name": "ti", "init": "zero", "bounds_ms": [0.1, None], "parametrization": "identity",
                        "lr": 50.0},
                       {"name": "recovery", "init": "zero", "bounds_ms": [0.1, None], "parametrization": "identity",
                        "lr": 50.0}],
        "target": {"kind": "t1", "pd_threshold": 0.05},
        "recon": {"config": {"method": "fft"}, "mlp": {"hidden": [16, 16]}},
        "data": {"kind": "sparse", "train": 2, "validation": 1, "sparse": {"block": 4}},
        "sim": {"engine": "bloch", "spins": 1},
        "optimizer": {"mode": "alternating", "batch": 2, "recon_lr": 0.01, "checkpoint_every": 10,
                      "alternating": {"pretrain_steps": 20, "pretrain_on": "sequence", "rounds": 2,
                                      "sequence_steps": 3, "recon_steps": 10}, **optimizer},
    }
