"""Pulseq flag labels ↔ ISMRMRD acquisition flags: one mapping for the exporter and the ``.seq`` readers.

``REF`` marks a parallel-imaging calibration (ACS) readout, ``REF`` with ``IMA`` one that is an imaging line as
well (Siemens' PATREFSCAN / PATREFANDIMASCAN): ISMRMRD's ACQ_IS_PARALLEL_CALIBRATION and
ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING. ``NAV`` marks a navigator (phase-correction) readout,
ACQ_IS_PHASECORR_DATA; it is read, not written (the exporter writes REF and IMA only). ``REV`` is not mapped:
readouts stay as acquired and their direction is in the trajectory (``ACQ_IS_REVERSE`` would make ISMRMRD
readers flip them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ismrmrd
import numpy as np

CALIBRATION = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION - 1)
CALIBRATION_AND_IMAGING = 1 << (ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING - 1)
PHASE_CORRECTION = 1 << (ismrmrd.ACQ_IS_PHASECORR_DATA - 1)


def pulseq_flags(flags: int) -> dict[str, bool]:
    """The ``REF`` and ``IMA`` values of a readout with ISMRMRD flag bits ``flags`` (written on every readout:
    Pulseq SET labels hold until set again)."""
    both = bool(flags & CALIBRATION_AND_IMAGING)
    return {"REF": both or bool(flags & CALIBRATION), "IMA": both}


def ismrmrd_flags(rows: Mapping[str, Any], count: int) -> np.ndarray:
    """(count,) int64 ISMRMRD flag bits of ``count`` ADC events from their label values
    (``pypulseq.Sequence.evaluate_labels(evolution="adc")``); a label absent or of another length counts as off."""

    def on(key: str) -> np.ndarray:
        values = np.atleast_1d(np.asarray(rows.get(key, np.zeros(count))))
        return values != 0 if len(values) == count else np.zeros(count, dtype=bool)

    ref, ima = on("REF"), on("IMA")
    out = np.where(ref & ima, CALIBRATION_AND_IMAGING, np.where(ref, CALIBRATION, 0))
    return (out | np.where(on("NAV"), PHASE_CORRECTION, 0)).astype(np.int64)
