"""One entry point for every simulation engine: Sequence + Twin → RawData."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mrbridge.errors import ConfigError
from mrbridge.raw.rawdata import RawData
from mrbridge.sequence.model import Sequence
from mrbridge.sim.bloch import DEFAULT_SPINS, simulate_bloch
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import DEFAULT_ACCURACY, simulate_graph
from mrbridge.twin.twin import Twin

#: engine name -> (simulator(seq, twin, **{option: value}) -> (coils, adc_samples) signal, option, its default)
ENGINES: dict[str, tuple[Callable[..., torch.Tensor], str, float]] = {
    "bloch": (simulate_bloch, "spins", DEFAULT_SPINS),
    "graph": (simulate_graph, "accuracy", DEFAULT_ACCURACY),
}


def simulate(seq: Sequence, twin: Twin, *, engine: str = "graph", noise: float = 0.0, seed: int = 0,
             device: torch.device | str | None = None, spins: int | None = None,
             field_strength_t: float = 3.0, accuracy: float | None = None, slice_profile: bool = False,
             memory_gb: float | None = None) -> RawData:
    """Simulate ``seq`` on ``twin`` with ``engine`` and return the raw data a scanner would give.

    Parameters
    ----------
    engine: "graph" (phase graph, fast, the default) or "bloch" (isochromat reference); else a ConfigError
    noise: noise σ relative to max |signal| (see :func:`mrbridge.sim.common.to_rawdata`), seeded by ``seed``
    device: where to simulate (seq and twin are moved there); None: where the twin is
    spins: isochromats per voxel (None: the engine's default), for "bloch"
    accuracy: smallest state kept, relative to M0 (None: the engine's default), for "graph"
    slice_profile: simulate each pulse's waveform over z (:mod:`mrbridge.sim.slice_profile`), "bloch" only; give a
        z-resolved twin (:func:`mrbridge.twin.zresolved.zresolved`)
    memory_gb: memory budget (GB) of the "graph" engine (None: half the memory available now); a problem that
        does not fit even in chunks is an InputError before the simulation starts

    Returns
    -------
    RawData  # kdata (coils, readouts, samples), on ``device``, differentiable w.r.t. seq and twin tensors
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine '{engine}' is unknown; expected one of: {', '.join(ENGINES)}")
    run, option, default = ENGINES[engine]
    for name, value in (("spins", spins), ("accuracy", accuracy)):
        if value is not None and name != option:
            raise ConfigError(f"'{name}' is not an option of the {engine} engine (its option is '{option}')")
    if memory_gb is not None and engine != "graph":
        raise ConfigError(f"memory_gb is an option of the graph engine only, not of the {engine} engine")
    if slice_profile and engine != "bloch":
        raise ConfigError(f"slice_profile is an option of the bloch engine only, not of the {engine} engine")
    if device is not None:
        seq, twin = seq.to(device), twin.to(device)
    given = spins if option == "spins" else accuracy
    value = default if given is None else given
    extra: dict[str, object] = {"slice_profile": True} if slice_profile else {}
    if memory_gb is not None:
        extra["memory_gb"] = memory_gb
    signal = run(seq, twin, **{option: value}, **extra)
    raw = to_rawdata(seq, signal, noise=noise, seed=seed, field_strength_t=field_strength_t)
    raw.provenance.update(engine=engine, **{option: str(value)}, **{k: str(v) for k, v in extra.items()})
    if note := twin.span_note((seq.info.fov[0], seq.info.fov[1])):
        raw.provenance["twin_span"] = note
    if "refined_from_sha256" in twin.provenance:  # compare tells a refined twin's fit from its prediction by these
        raw.provenance["twin_refined_from_sha256"] = twin.provenance["refined_from_sha256"]
    return raw
