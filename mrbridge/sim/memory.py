"""Memory budget of a graph simulation: the default, what must stay resident, what is left for the readout chunks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mrbridge.errors import InputError
from mrbridge.sim.readout import chunk_floor

if TYPE_CHECKING:
    from mrbridge.sim.graph import _RepTensors, _Step, _Tissue

#: share of the available memory a simulation may use by default
DEFAULT_SHARE = 0.5
#: the budget when the available memory cannot be read
FALLBACK_GB = 4.0


@dataclass
class Budget:
    """Bytes: the whole budget, the resident part (signal, kept states), and what one readout chunk may use."""

    total: int
    resident: int
    chunk: int


def available_gb(device: torch.device | str = "cpu") -> float | None:
    """Memory available now (GB): free memory of a CUDA device, else MemAvailable of /proc/meminfo; None if
    unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None


def default_budget_gb(device: torch.device | str = "cpu") -> float:
    """Half the memory available now on ``device`` (4 GB when that cannot be read)."""
    free = available_gb(device)
    return FALLBACK_GB if free is None else DEFAULT_SHARE * free


def fit_budget(memory_gb: float | None, tissue: _Tissue, reps: list[_RepTensors], steps: list[_Step]) -> Budget:
    """The budget of one simulation, or an InputError (before any propagation) when the resident part alone
    — the signal (batch, coils, samples) and the states kept for the readouts — does not fit in it."""
    gb = default_budget_gb(tissue.device) if memory_gb is None else memory_gb
    if not gb > 0:
        raise InputError(f"memory budget = {gb} GB, expected > 0")
    total = int(gb * 1e9)
    c = tissue.cdtype.itemsize
    samples = sum(int(rep.adc.numel()) for rep in reps)
    signal = 2 * tissue.batch * tissue.coils * samples * c
    kept = sum(step.emit for step in steps) * (tissue.columns * c + 4 * c // 2)
    widest = max((step.t_index.shape[1] + step.l_index.shape[1] for step in steps), default=0)
    states = 8 * widest * tissue.columns * c
    resident = signal + kept + states
    chunk = total - resident
    if chunk < chunk_floor(tissue):
        raise InputError(
            f"simulation needs {resident / 1e9:.3g} GB resident ({tissue.batch * tissue.coils} coil signals × "
            f"{samples} samples; {sum(step.emit for step in steps)} kept and up to {widest} live states × "
            f"{tissue.columns} tissue columns), more than the memory budget of {gb:.3g} GB (--memory-gb)")
    return Budget(total, resident, chunk)
