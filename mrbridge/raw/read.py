"""Open any raw data mrbridge understands: ISMRMRD as is, Siemens twix through the .seq that produced it."""

from __future__ import annotations

from pathlib import Path

from mrbridge.errors import InputError
from mrbridge.raw.mrd import read_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.twix import read_twix


def read_raw(path: str | Path, seq_path: str | Path | None = None, *, trajectory_delay: float = 0.0) -> RawData:
    """ISMRMRD ``.h5`` as is; a Siemens twix ``.dat`` ordered and labelled by the Pulseq ``.seq`` that produced it.

    ``trajectory_delay`` (s) shifts the twix trajectory against the ADC (gradient delay, e.g. for EPI).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such raw data file (expected ISMRMRD .h5 or Siemens twix .dat)")
    if path.suffix.lower() == ".dat":
        if seq_path is None or Path(seq_path).suffix.lower() != ".seq":
            raise InputError(
                f"{path}: a Siemens twix file needs the Pulseq .seq that produced it (--seq), got {seq_path!r}"
            )
        return read_twix(path, seq_path, trajectory_delay=trajectory_delay)
    return read_mrd(path)
