"""Tutorial 4: export a sequence as a Pulseq .seq for a real scanner, check its safety, and look at what it plays.

Run from anywhere in a clone (the default is the shipped 64² protocols; the test suite runs it at 16²):

    .venv/bin/python docs/tutorials/04_export_and_safety.py [--matrix 64] [--out out/tutorial4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mrbridge as mb
from mrbridge.report.figures import seq_waveforms
from mrbridge.report.waveforms import read_waveforms

REPO = Path(__file__).resolve().parents[2]


def main(matrix: int = 64, out: Path = Path("out/tutorial4")) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)

    # --8<-- [start:export]
    seq = mb.Sequence.from_protocol(REPO / "protocols" / "se.yaml", matrix=matrix)
    prisma = mb.System.load("prisma")  # gradient, slew, B1, SAR and PNS limits of a Siemens Prisma
    result = mb.export(seq, prisma)  # a pypulseq Sequence on the scanner's rasters
    for change in result.changes:  # events lengthened to hold their gradients (timing="strict" refuses instead)
        print(f"timing changed: {change}")
    ok, errors = result.pulseq.check_timing()
    print(f"pypulseq timing check: {'ok' if ok else errors}")
    # --8<-- [end:export]

    # --8<-- [start:safety]
    report = mb.check_safety(result.pulseq, prisma, patient_kg=75.0, coil="head")
    for check in report.checks:
        limit = "—" if check.limit is None else f"{check.limit:.4g}"
        print(f"  {check.name:<24} {check.value:10.4g} / {limit:>8} {check.unit:<6} {'ok' if check.passed else 'FAIL'}")
    # --8<-- [end:safety]

    # --8<-- [start:write]
    if not report.failures():  # never hand an unsafe file to a scanner
        mb.write_pulseq(result.pulseq, out / "se.seq")
        report.save(out / "safety.json")
        print(f"wrote {out / 'se.seq'} and {out / 'safety.json'}")
    # --8<-- [end:write]

    # --8<-- [start:refuse]
    unsafe = mb.export(mb.Sequence.from_protocol(REPO / "protocols" / "tse.yaml", matrix=matrix), prisma,
                       rf_duration=1e-3)  # every pulse squeezed into 1 ms: the 180°s need far more B1
    refused = mb.check_safety(unsafe.pulseq, prisma).failures()
    print("TSE with 1-ms pulses: " + "; ".join(f"{c.name} {c.value:.3g} > {c.limit:.3g} {c.unit}" for c in refused))
    # --8<-- [end:refuse]

    # --8<-- [start:waveforms]
    waves = read_waveforms(out / "se.seq")  # the file read back with pypulseq: what the scanner plays
    seq_waveforms(waves, out / "waveforms.png", title="se.seq")
    print(f"waveforms {waves.window[0] * 1e3:.3g}–{waves.window[1] * 1e3:.3g} ms → {out / 'waveforms.png'}")
    # --8<-- [end:waveforms]
    peak_b1 = next(c.value for c in report.checks if c.name == "peak B1")
    return {"timing_ok": float(ok), "failures": float(len(report.failures())), "refused": float(len(refused)),
            "peak_b1_ut": peak_b1, "adc_windows": float(len(waves.adc_windows))}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("out/tutorial4"))
    args = parser.parse_args()
    main(args.matrix, args.out)
