"""Checks shared by the export tests: pypulseq reads the file back and its k-space equals the model's."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pypulseq as pp
import torch

from mrbridge.sequence.model import Sequence


def read_back(path: Path) -> pp.Sequence:
    seq = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq.read(str(path))
    return seq


def kspace_error_in_steps(pseq: pp.Sequence, seq: Sequence) -> np.ndarray:
    """max |k_pulseq − k_model| per axis in units of 1/FOV; also checks the sample times agree."""
    k_adc, _, _, _, t_adc = pseq.calculate_kspace()
    k_model = seq.to(dtype=torch.float64).kspace().numpy()
    assert k_adc.shape == k_model.T.shape
    t_model = seq.to(dtype=torch.float64).adc_times().numpy()
    offset = t_adc - t_model
    tolerance = 1e-6 + 1e-7 * float(t_model[-1])  # 1 µs, plus float32 rounding of long event times
    assert np.ptp(offset) < tolerance, f"sample times differ by {np.ptp(offset):.3g} s from the model's"
    return np.abs(k_adc.T - k_model).max(axis=0) * np.asarray(seq.info.fov)
