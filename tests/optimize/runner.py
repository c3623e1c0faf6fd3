"""Runs one task in a fresh process (what the resume and torchrun tests launch): ``runner.py TASK OUT``.

One thread, so that every process computes bit for bit the same; prints nothing, the bundle is the result.
Under torchrun it fails (exit 1, with a message) if the process group's threads still run once ``optimize`` has
returned: such a process can abort while the interpreter exits (a race, so the thread count is what is checked).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from mrbridge.optimize.trainer import optimize


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    before = _threads()
    optimize(sys.argv[1], sys.argv[2], resume=True, progress=False)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        deadline = time.monotonic() + 5  # joined threads leave /proc at once; the kernel may take a moment
        while (left := _threads() - before) > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if left > 0:
            sys.exit(f"{left} threads outlived optimize (the process group was not freed)")
