"""Convert Siemens twix raw data from a Pulseq sequence into an ISMRMRD file."""

from __future__ import annotations

from pathlib import Path

from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.twix import read_twix


def convert(
    dat_path: str | Path, seq_path: str | Path, out_path: str | Path, *, trajectory_delay: float = 0.0
) -> RawData:
    """Read ``dat_path`` ordered and labelled by ``seq_path`` (see ``read_twix``) and write ISMRMRD to ``out_path``.

    The file is written atomically; the inputs are not modified. Returns the converted RawData.
    """
    raw = read_twix(dat_path, seq_path, trajectory_delay=trajectory_delay)
    write_mrd(raw, out_path)
    return raw
