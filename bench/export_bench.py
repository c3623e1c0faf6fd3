"""Export + safety check time of a 256-line GRE (issue 4 target: ≤ 2 s). Run by hand:

    .venv/bin/python bench/export_bench.py [--system prisma] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq, write_pulseq
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sequence.safety import check_safety
from mrbridge.system import System

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", default="prisma")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    system = System.load(args.system)
    protocol = load_protocol(REPO / "protocols" / "gre.yaml")
    seq = build(protocol.model_copy(update={"dummies": 0, "dwell_us": 10.0}), matrix=256)
    print(f"GRE: {len(seq.readouts())} lines × {seq.samples_per_readout()} samples, "
          f"{float(seq.duration):.2f} s, system {system.name}")
    best = {"export": float("inf"), "write": float("inf"), "check": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = export_seq(seq, system)
            t1 = time.perf_counter()
            write_pulseq(result.pulseq, Path(tmp) / "gre.seq")
            t2 = time.perf_counter()
            report = check_safety(Path(tmp) / "gre.seq", system)
            t3 = time.perf_counter()
            for key, value in (("export", t1 - t0), ("write", t2 - t1), ("check", t3 - t2)):
                best[key] = min(best[key], value)
    total = sum(best.values())
    print(f"export {best['export']:.3f} s, write {best['write']:.3f} s, read+check {best['check']:.3f} s, "
          f"total {total:.3f} s (best of {args.repeats}; target ≤ 2 s)")
    print(report.summary())


if __name__ == "__main__":
    main()
