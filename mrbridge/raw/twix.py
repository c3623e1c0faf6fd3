"""Siemens twix raw data (``.dat``) from Pulseq sequences → ``RawData``.

The ``.dat`` (read with twixtools) supplies the samples, the noise scans and the field strength; the ``.seq``
that produced it supplies everything Pulseq raw data do not carry: the order and meaning of the readouts,
their k-space trajectory and the encoding (see ``mrbridge.raw.seqreadouts``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import twixtools

from mrbridge.errors import InputError, where
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.seqreadouts import SeqReadouts, read_seq_readouts

#: mdh flags of scans that are not ADC events of the sequence
_NOT_READOUTS = ("ACQEND", "SYNCDATA", "RTFEEDBACK", "HPFEEDBACK")


def read_twix(dat_path: str | Path, seq_path: str | Path, *, trajectory_delay: float = 0.0) -> RawData:
    """Read a Siemens twix file measured with a Pulseq sequence, ordered and labelled by its ``.seq``.

    The last measurement of a multi-raid file is used. Its readouts must be the ADC events of the ``.seq``
    in order (dummy scans without ADC are absent from both); noise-adjust scans go to ``RawData.noise``.
    ``trajectory_delay`` (s, default 0) is the gradient delay passed to pypulseq's ``calculate_kspace``.

    Returns
    -------
    RawData
        kdata (coils, readouts, samples) complex64 as acquired (reversed lines are not flipped: their
        direction is in the trajectory); traj (readouts, samples, 3) in 1/m from ``calculate_kspace``; sample_time
        (readouts, samples) s; labels from the ``.seq``; noise (coils, noise_samples) or None.

    Raises
    ------
    InputError
        either file unreadable or truncated, or the ``.dat`` readouts do not match the ``.seq`` ADC events
        in number or length.
    """
    dat_path, seq_path = Path(dat_path), Path(seq_path)
    seq = read_seq_readouts(seq_path, trajectory_delay=trajectory_delay)
    scans = _read_scans(dat_path)
    readouts, segments = _rejoin(scans.readouts, seq.num_samples)
    _check_match(readouts, seq, dat_path, seq_path)
    kdata = torch.from_numpy(np.stack(readouts, axis=1))
    dicom = scans.header.get("Dicom") or {}
    field_t = _number(dicom, "flMagneticFieldStrength", dat_path)
    return seq.rawdata(
        kdata,
        noise=_noise(scans.noise, int(kdata.shape[0])),
        field_strength_t=field_t,
        larmor_hz=float(dicom.get("lFrequency", 42.577478e6 * field_t)),
        system_vendor=str(dicom.get("Manufacturer", "Siemens")),
        system_model=str(dicom.get("ManufacturersModelName", "unknown")),
        provenance={
            "reader": "mrbridge.raw.twix",
            "dat": dat_path.name,
            "dat_sha256": _sha256(dat_path),
            "seq": seq_path.name,
            "seq_sha256": _sha256(seq_path),
            "trajectory_delay_s": repr(trajectory_delay),
            **({"adc_segments_rejoined": str(segments)} if segments else {}),
        },
    )


@dataclass
class _Scans:
    """The samples of a twix file, sorted by role.

    readouts: list of (coils, samples) complex64, the last measurement's ADC readouts in order
    noise: list of (coils, samples) complex64, its noise-adjust scans (else those of earlier measurements)
    header: the last measurement's parsed protocol (twixtools ``hdr``)
    """

    readouts: list[np.ndarray]
    noise: list[np.ndarray]
    header: dict[str, Any]


def _read_scans(dat_path: Path) -> _Scans:
    """Read every measurement of a twix file (twixtools' console output silenced) and sort its scans."""
    if not dat_path.is_file():
        raise InputError(f"{dat_path}: no such twix .dat file")
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            meas = twixtools.read_twix(str(dat_path), verbose=False, parse_pmu=False, parse_geometry=False)
            roles = [_roles(m["mdb"]) for m in meas]  # loads the samples: a short file fails here
    except (ValueError, IndexError, KeyError, RuntimeError, OSError, EOFError) as err:
        raise InputError(
            f"{dat_path}: not a readable Siemens twix file, or truncated ({type(err).__name__}: {err})"
        ) from err
    if not meas or "Dicom" not in (meas[-1].get("hdr") or {}):
        raise InputError(
            f"{where(str(dat_path), 'header')}: the twix protocol header could not be parsed "
            "(truncated file?); expected a complete measurement header"
        )
    readouts, noise = roles[-1]
    if not readouts:
        raise InputError(f"{dat_path}: the last measurement holds no readouts (truncated file?)")
    if not noise:  # a multi-raid file keeps its noise-adjust prescan in an earlier measurement
        noise = [n for _, earlier in roles[:-1] for n in earlier]
    return _Scans(readouts=readouts, noise=noise, header=meas[-1]["hdr"])


def _roles(mdbs: list[Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(readouts, noise scans) of one measurement in acquisition order, each (coils, samples) complex64."""
    readouts: list[np.ndarray] = []
    noise: list[np.ndarray] = []
    for mdb in mdbs:
        if any(mdb.is_flag_set(f) for f in _NOT_READOUTS):
            continue
        data = np.atleast_2d(np.asarray(mdb.data, dtype=np.complex64))
        (noise if mdb.is_flag_set("NOISEADJSCAN") else readouts).append(data)
    return readouts, noise


def _rejoin(scans: list[np.ndarray], num_samples: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Join the segments into which the scanner split long ADC events (twix ``MaxAdcSegmentLength``).

    scans: (coils, samples) per twix scan in order; num_samples: (adcs,) samples of each ADC event of the
    ``.seq``. Consecutive scans shorter than their ADC event are concatenated until they reach its length.
    Returns the readouts and the number of ADC events that were rejoined; the scans unchanged when they do not
    add up (the mismatch is then reported by the caller).
    """
    if len(scans) == len(num_samples):
        return scans, 0
    joined: list[np.ndarray] = []
    rejoined = 0
    i = 0
    for n in num_samples:
        parts = []
        have = 0
        while i < len(scans) and have < n:
            parts.append(scans[i])
            have += scans[i].shape[1]
            i += 1
        if have != n or len({p.shape[0] for p in parts}) != 1:
            return scans, 0
        joined.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        rejoined += len(parts) > 1
    return (joined, rejoined) if i == len(scans) else (scans, 0)


def _check_match(readouts: list[np.ndarray], seq: SeqReadouts, dat_path: Path, seq_path: Path) -> None:
    if len(readouts) != seq.readouts:
        raise InputError(
            f"{dat_path} has {len(readouts)} readouts but {seq_path} has {seq.readouts} ADC events; "
            "expected the same number (is this the .seq that produced the data, and is the .dat complete?)"
        )
    coils = {r.shape[0] for r in readouts}
    if len(coils) != 1:
        raise InputError(f"{dat_path}: readouts have {sorted(coils)} coils; expected one coil count")
    for i, (r, n) in enumerate(zip(readouts, seq.num_samples, strict=True)):
        if r.shape[1] != n:
            raise InputError(
                f"{dat_path} readout {i} has {r.shape[1]} samples but ADC event {i} of {seq_path} has "
                f"{n}; expected equal lengths (is this the .seq that produced the data?)"
            )


def _noise(noise: list[np.ndarray], coils: int) -> torch.Tensor | None:
    """(coils, samples) complex64: the noise scans with the readouts' coil count, concatenated."""
    usable = [n for n in noise if n.shape[0] == coils]
    return torch.from_numpy(np.concatenate(usable, axis=1)) if usable else None


def _number(section: dict[str, Any], key: str, dat_path: Path) -> float:
    try:
        return float(section[key])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(
            f"{where(str(dat_path), 'Dicom.' + key)}: {section.get(key)!r}; expected a number in the twix header"
        ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
