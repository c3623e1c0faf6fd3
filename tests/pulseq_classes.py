"""One small pypulseq-written ``.seq`` of each class of sequence that real scanners run (issue 12).

Every function writes a genuine Pulseq file with pypulseq's public API, at a size that simulates fast
(32² by default, FOV 220 mm, 5-mm slice), checks pypulseq's ``check_timing()`` and returns a
:class:`Written` that records what the file is (matrix, TE, TR, flip angle, …) so that a test can image
the same twin with a reference Cartesian protocol of the same contrast.

Conventions shared by all of them (pypulseq's, as on a scanner):

- k-space step ``dk = 1/FOV``; phase-encoding line ``j`` (0 … N−1) sits at ``k_y = (j − N/2)·dk``;
- a readout of N samples on a flat top of area ``N·dk``; its pre-phaser is ``−area/2`` so that
  ``k_x = 0`` lies half a sample after sample N/2 − 1 (pypulseq's symmetric convention: a reversed readout
  samples the same k_x positions);
- no labels (the reader must take line order and readout reversal from the k-space of the file).

Nothing here is copied from pypulseq's example scripts; the sequences follow from the physics.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pypulseq as pp

FOV = 0.22  # m, the built-in brain twin's FOV
SLICE = 5e-3  # m
MATRIX = 32
RF_SPOIL_DEG = 117.0  # quadratic RF-spoiling increment
GRE_DUMMIES = 10


@dataclass
class Written:
    """What a writer produced: the file and the numbers a reference protocol needs."""

    path: Path
    matrix: int
    te: list[float]  # s, echo time of each contrast (for trains: of each echo of the train)
    tr: float  # s
    flip_deg: float
    dummies: int = 0
    effective_te: float = 0.0  # s, the TE at which the k-space centre line is acquired
    extra: dict[str, float] = field(default_factory=dict)


def system(**changes: float) -> pp.Opts:
    """A 3T gradient system with Siemens-like dead times (28 mT/m, 150 T/m/s)."""
    limits: dict[str, object] = dict(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s",
                                     rf_ringdown_time=20e-6, rf_dead_time=100e-6, adc_dead_time=10e-6)
    limits.update(changes)
    return pp.Opts(**limits)


def _checked(seq: pp.Sequence) -> None:
    ok, errors = seq.check_timing()
    if not ok:
        raise AssertionError(f"pypulseq check_timing() failed: {errors[:3]}")


def _raster(t: float, raster: float = 10e-6) -> float:
    """``t`` rounded up to the block raster (tolerating float noise)."""
    return math.ceil(t / raster - 1e-6) * raster


def _rf_centre(rf: object) -> float:
    """Time of the RF centre from the start of its block (s)."""
    return float(rf.delay + pp.calc_rf_center(rf)[0])  # type: ignore[attr-defined]


def _spoil_phase(index: int) -> float:
    """Quadratic RF spoiling: phase (rad) of excitation ``index`` (0, 1, 2, …)."""
    return math.radians(RF_SPOIL_DEG * index * (index + 1) / 2 % 360.0)


def _slice_excitation(flip_deg: float, sys: pp.Opts, duration: float = 1e-3, use: str = "excitation",
                      phase: float = 0.0):
    rf, gz, _ = pp.make_sinc_pulse(flip_angle=math.radians(flip_deg), duration=duration, slice_thickness=SLICE,
                                   apodization=0.5, time_bw_product=4, phase_offset=phase, system=sys,
                                   return_gz=True, use=use, delay=sys.rf_dead_time)
    return rf, gz


def _readout(n: int, dwell: float, sys: pp.Opts, sign: float = 1.0):
    """A trapezoid whose flat top (area n·dk) holds an ADC of n samples, and that ADC."""
    dk = 1.0 / FOV
    gx = pp.make_trapezoid("x", flat_area=sign * n * dk, flat_time=n * dwell, system=sys)
    adc = pp.make_adc(num_samples=n, dwell=dwell, delay=gx.rise_time, system=sys)
    return gx, adc


def _definitions(seq: pp.Sequence, name: str, n: int, *, fov: bool = True) -> None:
    seq.set_definition("Name", name)
    if fov:
        seq.set_definition("FOV", [FOV, FOV, SLICE])


# ---- 1 + 6: Cartesian GRE (single or multi-echo), dummy scans, RF spoiling ----------------------------------
def _gre(path: str | Path, *, echoes: int, n: int, te: float, tr: float, flip_deg: float, dummies: int,
         dwell: float, fov_definition: bool, name: str) -> Written:
    sys = system()
    seq = pp.Sequence(sys)
    dk = 1.0 / FOV
    rf, gz = _slice_excitation(flip_deg, sys)
    gz_reph = pp.make_trapezoid("z", area=-gz.area / 2, system=sys)
    gx, adc = _readout(n, dwell, sys)
    gx_pre = pp.make_trapezoid("x", area=-gx.area / 2, system=sys)
    gx_fly = pp.make_trapezoid("x", area=-gx.area, system=sys)  # flyback: every echo read in +x
    # net x moment per TR = 2 cycles per voxel, like the reference protocol's spoiler
    gx_spoil = pp.make_trapezoid("x", area=2 * n * dk - gx.area / 2, system=sys)
    gz_spoil = pp.make_trapezoid("z", area=4 / SLICE, system=sys)
    pe_time = max(pp.calc_duration(pp.make_trapezoid("y", area=n / 2 * dk, system=sys)), pp.calc_duration(gx_pre),
                  pp.calc_duration(gz_reph))

    exc_tail = pp.calc_duration(rf, gz) - _rf_centre(rf)
    echo_head = gx.rise_time + gx.flat_time / 2
    rew_time = pe_time
    pe_time = max(pe_time, _raster(te - exc_tail - echo_head))  # the first echo at ``te`` (or as early as can be)
    te1 = exc_tail + pe_time + echo_head
    echo_spacing = pp.calc_duration(gx) + pp.calc_duration(gx_fly)
    tes = [te1 + e * echo_spacing for e in range(echoes)]
    used = pp.calc_duration(rf, gz) + pe_time + echoes * pp.calc_duration(gx) + (echoes - 1) * pp.calc_duration(
        gx_fly) + max(pp.calc_duration(gx_spoil), pp.calc_duration(gz_spoil), rew_time)
    tr = max(tr, _raster(used))
    fill = _raster(tr - used)

    count = 0
    for line in [None] * dummies + list(range(n)):
        phase = _spoil_phase(count)
        count += 1
        rf.phase_offset = phase
        adc.phase_offset = phase  # the receiver follows the transmitter
        seq.add_block(rf, gz)
        ky = 0.0 if line is None else (line - n / 2) * dk
        gy_pre = pp.make_trapezoid("y", area=ky, duration=pe_time, system=sys)
        seq.add_block(gx_pre, gy_pre, gz_reph, pp.make_delay(pe_time))
        for e in range(echoes):
            seq.add_block(gx, adc) if line is not None else seq.add_block(gx)
            if e < echoes - 1:
                seq.add_block(gx_fly)
        gy_rew = pp.make_trapezoid("y", area=-ky, duration=rew_time, system=sys)
        seq.add_block(gx_spoil, gy_rew, gz_spoil)
        if fill > 0:
            seq.add_block(pp.make_delay(fill))
    _checked(seq)
    _definitions(seq, name, n, fov=fov_definition)
    seq.write(str(path))
    return Written(Path(path), n, tes, tr, flip_deg, dummies, effective_te=tes[0], extra={"dwell": dwell})


def multi_echo_gre(path: str | Path, echoes: int = 3, *, n: int = MATRIX, te: float = 4e-3, tr: float = 20e-3,
                   flip_deg: float = 15.0, dummies: int = GRE_DUMMIES, dwell: float = 100e-6) -> Written:
    """Cartesian GRE, ``echoes`` monopolar echoes per excitation (flyback rewinders between them); with the
    defaults TE 4.0 / 7.54 / 11.08 ms, TR 20 ms, 15°.

    Dummy scans (no ADC, no phase encoding), quadratic RF spoiling (117°) with the ADC phase following
    the RF phase, a spoiler on x and z after the last echo, the y moment rewound. No labels.
    """
    return _gre(path, echoes=echoes, n=n, te=te, tr=tr, flip_deg=flip_deg, dummies=dummies, dwell=dwell,
                fov_definition=True, name="multi_echo_gre")


def gre_without_fov(path: str | Path, *, n: int = MATRIX, te: float = 4e-3, tr: float = 20e-3, flip_deg: float = 15.0,
                    dummies: int = GRE_DUMMIES, dwell: float = 40e-6) -> Written:
    """A plain single-echo Cartesian GRE whose [DEFINITIONS] has no FOV (the FOV is 220 mm by its k step)."""
    return _gre(path, echoes=1, n=n, te=te, tr=tr, flip_deg=flip_deg, dummies=dummies, dwell=dwell,
                fov_definition=False, name="gre_without_fov")


# ---- 2: segmented GRE with a bipolar echo train --------------------------------------------------------------
def segmented_gre(path: str | Path, segments: int = 8, lines_per_excitation: int = 4, *, te: float = 4e-3,
                  tr: float = 25e-3,
                  flip_deg: float = 15.0, dummies: int = GRE_DUMMIES, dwell: float = 40e-6) -> Written:
    """Segmented (interleaved) GRE: each excitation reads ``lines_per_excitation`` lines with alternating
    readout polarity (bipolar train, ADC on the flat top only) and y blips of −``segments``·dk between them,
    from the top of k-space down: excitation s acquires lines N−1−s, N−1−s−segments, … so the segments
    interleave, and the centre line (N/2) is read by a reversed (−x) readout.

    Matrix N = segments × lines_per_excitation. RF spoiling with the ADC phase following, dummy scans. No labels.
    """
    n = segments * lines_per_excitation
    sys = system()
    seq = pp.Sequence(sys)
    dk = 1.0 / FOV
    rf, gz = _slice_excitation(flip_deg, sys)
    gz_reph = pp.make_trapezoid("z", area=-gz.area / 2, system=sys)
    readouts = [_readout(n, dwell, sys, sign=(-1.0) ** i) for i in range(2)]
    gx0 = readouts[0][0]
    gx_pre = pp.make_trapezoid("x", area=-gx0.area / 2, system=sys)
    blip = pp.make_trapezoid("y", area=-segments * dk, system=sys)
    gz_spoil = pp.make_trapezoid("z", area=4 / SLICE, system=sys)
    pe_time = max(pp.calc_duration(pp.make_trapezoid("y", area=n / 2 * dk, system=sys)), pp.calc_duration(gx_pre),
                  pp.calc_duration(gz_reph))
    # after the train k_x ends at ±area/2; the spoiler brings the net x moment to 2 cycles per voxel
    kx_end = gx0.area / 2 * (1 if lines_per_excitation % 2 else -1)
    gx_spoil = pp.make_trapezoid("x", area=2 * n * dk - kx_end, system=sys)
    rew_time = pe_time
    spoil_time = max(pp.calc_duration(gx_spoil), pp.calc_duration(gz_spoil), rew_time)

    exc_tail = pp.calc_duration(rf, gz) - _rf_centre(rf)
    echo_head = gx0.rise_time + gx0.flat_time / 2
    pe_time = max(pe_time, _raster(te - exc_tail - echo_head))  # the first echo at ``te``
    spacing = pp.calc_duration(gx0) + pp.calc_duration(blip)
    tes = [exc_tail + pe_time + echo_head + i * spacing for i in range(lines_per_excitation)]
    used = pp.calc_duration(rf, gz) + pe_time + lines_per_excitation * pp.calc_duration(gx0) + (
        lines_per_excitation - 1) * pp.calc_duration(blip) + spoil_time
    tr = max(tr, _raster(used))
    fill = _raster(tr - used)

    count = 0
    for s in [None] * dummies + list(range(segments)):
        phase = _spoil_phase(count)
        count += 1
        rf.phase_offset = phase
        seq.add_block(rf, gz)
        first = n - 1 if s is None else n - 1 - s
        ky0 = (first - n / 2) * dk
        seq.add_block(gx_pre, pp.make_trapezoid("y", area=ky0, duration=pe_time, system=sys), gz_reph,
                      pp.make_delay(pe_time))
        for i in range(lines_per_excitation):
            gx, adc = readouts[i % 2]
            adc.phase_offset = phase
            seq.add_block(gx, adc) if s is not None else seq.add_block(gx)
            if i < lines_per_excitation - 1:
                seq.add_block(blip)
        ky_end = ky0 - (lines_per_excitation - 1) * segments * dk
        seq.add_block(gx_spoil, pp.make_trapezoid("y", area=-ky_end, duration=rew_time, system=sys), gz_spoil,
                      pp.make_delay(spoil_time))
        if fill > 0:
            seq.add_block(pp.make_delay(fill))
    _checked(seq)
    _definitions(seq, "segmented_gre", n)
    seq.write(str(path))
    centre_echo = (n - 1 - n // 2) // segments
    return Written(Path(path), n, tes, tr, flip_deg, dummies, effective_te=tes[centre_echo],
                   extra={"segments": segments, "lines_per_excitation": lines_per_excitation, "dwell": dwell})


# ---- 3: single-shot blipped EPI with ramp sampling --------------------------------------------------------------
def epi(path: str | Path, *, n: int = MATRIX, flip_deg: float = 90.0, readout_time: float = 480e-6,
        oversampling: int = 2) -> Written:
    """Single-shot blipped EPI, ramp-sampled: each readout trapezoid (area n·dk, ``readout_time`` long) is
    sampled over its ramps too by ``oversampling``·n samples spread uniformly in time (k_x non-uniform on the
    ramps; the largest k_x step stays below dk), alternating polarity, y blips of dk between readouts.
    One excitation; no labels.
    """
    sys = system()
    seq = pp.Sequence(sys)
    dk = 1.0 / FOV
    rf, gz = _slice_excitation(flip_deg, sys, duration=2e-3)
    gz_reph = pp.make_trapezoid("z", area=-gz.area / 2, system=sys)
    samples = oversampling * n
    # dwell on the 100-ns ADC raster, samples centred in the trapezoid (a margin for the ADC dead time)
    # (the ADC delay must sit on the 1-µs RF raster)
    steps = math.floor((readout_time - 2 * sys.adc_dead_time) / samples / 1e-7)
    while round((readout_time - samples * steps * 1e-7) / 2 / 1e-7) % 10:
        steps -= 1
    dwell = steps * 1e-7
    adc_delay = round((readout_time - samples * dwell) / 2 / 1e-6) * 1e-6
    readouts = []
    for i in range(2):
        gx = pp.make_trapezoid("x", area=(-1.0) ** i * n * dk, duration=readout_time, system=sys)
        readouts.append((gx, pp.make_adc(num_samples=samples, dwell=dwell, delay=adc_delay, system=sys)))
    gx_pre = pp.make_trapezoid("x", area=-readouts[0][0].area / 2, system=sys)
    gy_pre = pp.make_trapezoid("y", area=-n / 2 * dk, system=sys)
    blip = pp.make_trapezoid("y", area=dk, system=sys)
    pre_time = max(pp.calc_duration(gx_pre), pp.calc_duration(gy_pre), pp.calc_duration(gz_reph))

    seq.add_block(rf, gz)
    seq.add_block(gx_pre, gy_pre, gz_reph, pp.make_delay(pre_time))
    for i in range(n):
        gx, adc = readouts[i % 2]
        seq.add_block(gx, adc)
        if i < n - 1:
            seq.add_block(blip)
    seq.add_block(pp.make_trapezoid("z", area=4 / SLICE, system=sys))
    _checked(seq)
    _definitions(seq, "epi_rs", n)
    seq.write(str(path))
    exc_tail = pp.calc_duration(rf, gz) - _rf_centre(rf)
    spacing = readout_time + pp.calc_duration(blip)
    te = [exc_tail + pre_time + readout_time / 2 + i * spacing for i in range(n)]
    tr = sum(seq.block_durations.values())
    return Written(Path(path), n, te, tr, flip_deg, 0, effective_te=te[n // 2],
                   extra={"dwell": dwell, "echo_spacing": spacing, "samples": samples})


# ---- 4: spin echo and TSE, written as Pulseq 1.4 (no RF use) -------------------------------------------------
def _write(seq: pp.Sequence, path: str | Path, version: str) -> None:
    """Write as Pulseq 1.5, or as a genuine Pulseq 1.4.1 file (pypulseq's v141_compat: no RF use column)."""
    if version not in ("1.4", "1.5"):
        raise ValueError(f"version {version!r}: expected '1.4' or '1.5'")
    seq.write(str(path), v141_compat=version == "1.4")


def signature_ok(path: str | Path) -> bool:
    """True when the file's [SIGNATURE] md5 is that of everything before '\\n[SIGNATURE]' (as Pulseq signs)."""
    text = Path(path).read_text()
    head, sep, tail = text.partition("\n[SIGNATURE]")
    declared = [line.split()[1] for line in tail.splitlines() if line.startswith("Hash")]
    return bool(sep) and declared == [hashlib.md5(head.encode()).hexdigest()]


def _se_parts(sys: pp.Opts, n: int, dwell: float):
    rf90, gz90 = _slice_excitation(90.0, sys, duration=1.5e-3, use="excitation", phase=math.pi / 2)
    rf180, gz180 = _slice_excitation(180.0, sys, duration=3e-3, use="refocusing")
    gz_reph = pp.make_trapezoid("z", area=-gz90.area / 2, system=sys)
    crusher = pp.make_trapezoid("z", area=2 / SLICE, system=sys)
    gx, adc = _readout(n, dwell, sys)
    return rf90, gz90, rf180, gz180, gz_reph, crusher, gx, adc


def spin_echo(path: str | Path, version: str = "1.4", *, n: int = MATRIX, te: float = 20e-3, tr: float = 1.0,
              dwell: float = 40e-6) -> Written:
    """Single-echo 2D spin echo: 90°(phase 90°) – crusher, 180°(phase 0°), crusher – phase encode – readout, one
    line per TR, linear order. Written as Pulseq ``version`` (default 1.4: the [RF] table has no use column).
    """
    sys = system()
    seq = pp.Sequence(sys)
    dk = 1.0 / FOV
    rf90, gz90, rf180, gz180, gz_reph, crusher, gx, adc = _se_parts(sys, n, dwell)
    gx_pre = pp.make_trapezoid("x", area=gx.area / 2, system=sys)  # the 180° flips it to −area/2
    gx_spoil = pp.make_trapezoid("x", area=2 * n * dk - gx.area / 2, system=sys)
    pe_time = max(pp.calc_duration(pp.make_trapezoid("y", area=n / 2 * dk, system=sys)), pp.calc_duration(gx_spoil))
    d_crush = pp.calc_duration(crusher)
    # 90° centre → 180° centre = TE/2 ; 180° centre → echo = TE/2
    exc_tail = pp.calc_duration(rf90, gz90) - _rf_centre(rf90)
    ref_head, ref_tail = _rf_centre(rf180), pp.calc_duration(rf180, gz180) - _rf_centre(rf180)
    gap1 = te / 2 - exc_tail - d_crush - ref_head
    gap2 = te / 2 - ref_tail - d_crush - (gx.rise_time + gx.flat_time / 2)
    prep = max(pp.calc_duration(gx_pre), pp.calc_duration(gz_reph))
    if gap1 < prep or gap2 < pe_time:
        raise ValueError(f"TE {te * 1e3:.1f} ms too short for this spin echo")
    used = pp.calc_duration(rf90, gz90) + gap1 + 2 * d_crush + pp.calc_duration(rf180, gz180) + gap2 + \
        pp.calc_duration(gx) + pe_time
    fill = _raster(tr - used)
    for line in range(n):
        ky = (line - n / 2) * dk
        seq.add_block(rf90, gz90)
        seq.add_block(gx_pre, gz_reph, pp.make_delay(gap1))
        seq.add_block(crusher)
        seq.add_block(rf180, gz180)
        seq.add_block(crusher)
        seq.add_block(pp.make_trapezoid("y", area=ky, duration=pe_time, system=sys), pp.make_delay(gap2))
        seq.add_block(gx, adc)
        seq.add_block(pp.make_trapezoid("y", area=-ky, duration=pe_time, system=sys), gx_spoil)
        seq.add_block(pp.make_delay(fill))
    _checked(seq)
    _definitions(seq, "spin_echo", n)
    _write(seq, path, version)
    return Written(Path(path), n, [te], tr, 90.0, 0, effective_te=te, extra={"dwell": dwell})


def tse(path: str | Path, echo_train: int = 4, version: str = "1.4", *, n: int = MATRIX,
        echo_spacing: float = 10e-3, tr: float = 2.0, dwell: float = 40e-6) -> Written:
    """Turbo spin echo (CPMG): 90°(phase 90°), then ``echo_train`` 180°(phase 0°) with crushers, one phase-encoded
    readout per echo, rewound before the next 180°. Shot s, echo e reads line e·(N/echo_train) + s (linear:
    the centre line on echo echo_train//2 + 1, as the reference protocol's 'linear' order). Written as Pulseq
    ``version`` (default 1.4: no RF use).
    """
    if n % echo_train:
        raise ValueError(f"matrix {n} is not a multiple of echo_train {echo_train}")
    shots = n // echo_train
    sys = system()
    seq = pp.Sequence(sys)
    dk = 1.0 / FOV
    rf90, gz90, rf180, gz180, gz_reph, crusher, gx, adc = _se_parts(sys, n, dwell)
    gx_pre = pp.make_trapezoid("x", area=gx.area / 2, system=sys)
    pe_time = pp.calc_duration(pp.make_trapezoid("y", area=n / 2 * dk, system=sys))
    d_crush = pp.calc_duration(crusher)
    exc_tail = pp.calc_duration(rf90, gz90) - _rf_centre(rf90)
    ref_head, ref_tail = _rf_centre(rf180), pp.calc_duration(rf180, gz180) - _rf_centre(rf180)
    echo_head = gx.rise_time + gx.flat_time / 2
    echo_tail = pp.calc_duration(gx) - echo_head
    gap1 = echo_spacing / 2 - exc_tail - d_crush - ref_head  # 90° → first 180°
    gap_in = echo_spacing / 2 - ref_tail - d_crush - echo_head  # 180° → echo: phase encode
    gap_out = echo_spacing / 2 - echo_tail - d_crush - ref_head  # echo → next 180°: rewind
    prep = max(pp.calc_duration(gx_pre), pp.calc_duration(gz_reph))
    if gap1 < prep or min(gap_in, gap_out) < pe_time:
        raise ValueError(f"echo spacing {echo_spacing * 1e3:.1f} ms too short for this TSE")
    gx_spoil = pp.make_trapezoid("x", area=2 * n * dk - gx.area / 2, system=sys)
    train = pp.calc_duration(rf90, gz90) + gap1 + echo_train * (2 * d_crush + pp.calc_duration(rf180, gz180) + gap_in
                                                                + pp.calc_duration(gx)) + (echo_train - 1) * gap_out
    used = train + max(pe_time, pp.calc_duration(gx_spoil))
    fill = _raster(tr - used)
    for s in range(shots):
        seq.add_block(rf90, gz90)
        seq.add_block(gx_pre, gz_reph, pp.make_delay(gap1))
        for e in range(echo_train):
            ky = (e * shots + s - n / 2) * dk
            seq.add_block(crusher)
            seq.add_block(rf180, gz180)
            seq.add_block(crusher)
            seq.add_block(pp.make_trapezoid("y", area=ky, duration=pe_time, system=sys), pp.make_delay(gap_in))
            seq.add_block(gx, adc)
            rewind = pp.make_trapezoid("y", area=-ky, duration=pe_time, system=sys)
            if e < echo_train - 1:
                seq.add_block(rewind, pp.make_delay(gap_out))
            else:
                seq.add_block(rewind, gx_spoil)
        seq.add_block(pp.make_delay(fill))
    _checked(seq)
    _definitions(seq, "tse", n)
    _write(seq, path, version)
    te = [(e + 1) * echo_spacing for e in range(echo_train)]
    return Written(Path(path), n, te, tr, 90.0, 0, effective_te=te[(n // 2) // shots],
                   extra={"echo_spacing": echo_spacing, "echo_train": echo_train, "dwell": dwell})


# ---- 5: FID ----------------------------------------------------------------------------------------------------
def fid(path: str | Path, samples: int = 8192, *, dwell: float = 100e-6, flip_deg: float = 90.0) -> Written:
    """One non-selective block excitation and one long ADC (``samples`` × ``dwell``), no gradients: a
    spectroscopy FID. The ADC stays one event that a Siemens scanner can split into equal segments of at most
    8192 samples (pypulseq's ``calc_adc_segments`` with that limit must keep the sample count).
    """
    sys = system(adc_samples_limit=8192)
    segments, per_segment = pp.calc_adc_segments(samples, dwell, system=sys, mode="shorten")
    if segments * per_segment != samples:
        raise ValueError(f"{samples} samples of {dwell * 1e6:g} µs cannot be split into legal ADC segments")
    seq = pp.Sequence(sys)
    rf = pp.make_block_pulse(flip_angle=math.radians(flip_deg), duration=0.5e-3, system=sys, use="excitation",
                             delay=sys.rf_dead_time)
    adc = pp.make_adc(num_samples=samples, dwell=dwell, delay=sys.adc_dead_time, system=sys)
    seq.add_block(rf)
    seq.add_block(adc)
    seq.add_block(pp.make_delay(10e-3))
    _checked(seq)
    seq.set_definition("Name", "fid")
    seq.write(str(path))
    te = float(pp.calc_duration(rf) - _rf_centre(rf) + adc.delay)
    return Written(Path(path), 1, [te], sum(seq.block_durations.values()), flip_deg, 0, effective_te=te,
                   extra={"dwell": dwell, "samples": samples, "segments": segments})


def kspace(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """pypulseq's k-space of a written file at its ADC samples: (kx, ky) in 1/m, each (samples,).

    Read with ``detect_rf_use`` so that a 1.4 file's refocusing pulses invert k instead of resetting it.
    """
    seq = pp.Sequence()
    seq.read(str(path), detect_rf_use="\nminor 4\n" in Path(path).read_text())
    k_adc = seq.calculate_kspace()[0]
    return np.asarray(k_adc[0]), np.asarray(k_adc[1])
