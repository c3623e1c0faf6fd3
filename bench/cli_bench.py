"""Start-up time of the command line: `mrbridge --help` and every `mrbridge COMMAND --help` (issue 16 target:
≤ 1 s each). Each is run as a fresh process, best of ``--repeats``. Run by hand:

    .venv/bin/python bench/cli_bench.py [--repeats 3] [--cli "python /tmp/old_cli.py"]

``--cli`` times another entry point (e.g. an older cli.py saved elsewhere) with the same commands.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

TARGET_S = 1.0


def default_cli() -> list[str]:
    """The installed `mrbridge` script beside this interpreter, else `python -m mrbridge`."""
    script = Path(sys.executable).with_name("mrbridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mrbridge"]


def command_names() -> list[str]:
    """The commands the Typer app registers (importing the CLI is cheap: no torch)."""
    from mrbridge.cli import app

    names = []
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else None)
        if name:
            names.append(name.replace("_", "-"))
    return names


def best_time(argv: list[str], repeats: int) -> float | str:
    """Best wall time (s) of ``argv`` over ``repeats`` fresh processes, or the error line when it fails (e.g. an
    older entry point without that command)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            return lines[-1]
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cli", help="entry point to time instead of the installed one (a shell-quoted command)")
    args = parser.parse_args()
    cli = shlex.split(args.cli) if args.cli else default_cli()
    rows = [("mrbridge --help", [*cli, "--help"])]
    rows += [(f"mrbridge {name} --help", [*cli, name, "--help"]) for name in command_names()]
    print(f"entry point: {shlex.join(cli)}; best of {args.repeats}; target ≤ {TARGET_S:g} s")
    width = max(len(label) for label, _ in rows)
    print(f"{'command':<{width}}  {'best s':>7}")
    slowest = 0.0
    for label, argv in rows:
        seconds = best_time(argv, args.repeats)
        if isinstance(seconds, str):
            print(f"{label:<{width}}  {'failed':>7}  {seconds}")
            continue
        slowest = max(slowest, seconds)
        mark = "" if seconds <= TARGET_S else "  > target"
        print(f"{label:<{width}}  {seconds:7.2f}{mark}")
    print(f"slowest {slowest:.2f} s ({'within' if slowest <= TARGET_S else 'OVER'} the {TARGET_S:g} s target)")


if __name__ == "__main__":
    main()
