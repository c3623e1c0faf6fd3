"""Simulate a Pulseq ``.seq`` file as the scanner would play it, and label the result as the scanner's data of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mrbridge.raw.rawdata import RawData
from mrbridge.raw.seqreadouts import SeqReadouts, read_seq_readouts
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sim.simulate import simulate
from mrbridge.twin.twin import Twin


def simulate_seq_file(seq_path: str | Path, twin: Twin, *, sequence: Sequence | None = None,
                      encoding: SeqReadouts | None = None, **options: Any) -> RawData:
    """Simulate ``seq_path`` on ``twin`` (``options``: those of :func:`mrbridge.sim.simulate.simulate`).

    The raw data get the encoding :mod:`mrbridge.raw.seqreadouts` decides for the scanner's twix data of the same
    file (readout order, labels, trajectory, header), so ``recon`` and ``compare`` treat both alike. ``sequence``
    (its import) and ``encoding`` may be passed when already read. Returns RawData (coils, readouts, samples)
    on the CPU.
    """
    encoding = encoding or read_seq_readouts(seq_path)
    raw = simulate(sequence or import_seq(seq_path), twin, **options)
    raw.provenance["seq"] = Path(seq_path).name
    return encoding.relabel(raw.to("cpu"))
