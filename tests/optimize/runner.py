"""Runs one task in a fresh process (what the resume and torchrun tests launch): ``runner.py TASK OUT``.

One thread, so that every process computes bit for bit the same; prints nothing, the bundle is the result.
"""

from __future__ import annotations

import sys

import torch

from mrbridge.optimize.trainer import optimize

if __name__ == "__main__":
    torch.set_num_threads(1)
    optimize(sys.argv[1], sys.argv[2], resume=True, progress=False)
