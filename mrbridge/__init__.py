"""mrbridge: a differentiable MRI simulation bridged to a real 3T scanner.

The front door: ``import mrbridge as mb`` gives the five types and the verbs that connect them. Each loads on
first use (``import mrbridge`` itself imports neither torch nor the library), so the command line starts at once.

Types: ``Sequence`` (``from_protocol``, ``from_seq``, ``from_file``), ``Twin`` (``builtin``, ``from_file``),
``System`` (``load``), ``RawData`` (``from_file``), ``Image``, and ``Recon`` with its ``ReconConfig``.

Verbs: ``simulate`` (Sequence + Twin → RawData), ``simulate_seq_file`` (a ``.seq``, labelled as the scanner's
data), ``export`` (Sequence + System → Pulseq) with ``write_pulseq`` and ``check_safety``, ``compare``,
``read_raw``, ``write_mrd``, ``build`` + ``load_protocol``, ``builtin`` / ``open_twin``, ``calibrate`` (maps → Twin),
``refine`` with its ``RefineConfig`` (measured raw data + their ``.seq`` → a refined Twin).

Examples
--------
>>> import mrbridge as mb
>>> seq = mb.Sequence.from_protocol("protocols/gre.yaml", matrix=16)  # from the repository root
>>> twin = mb.Twin.builtin("brain", matrix=16)
>>> raw = mb.simulate(seq, twin)
>>> image = mb.Recon()(raw)
>>> tuple(raw.kdata.shape), tuple(image.data.shape)
((1, 16, 16), (1, 1, 1, 16, 16))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (module, attribute); imported on first access by :func:`__getattr__`
_EXPORTS: dict[str, tuple[str, str]] = {
    # the five types (+ the recon that turns RawData into an Image)
    "Sequence": ("mrbridge.sequence.model", "Sequence"),
    "Twin": ("mrbridge.twin.twin", "Twin"),
    "System": ("mrbridge.system", "System"),
    "RawData": ("mrbridge.raw.rawdata", "RawData"),
    "Image": ("mrbridge.recon.image", "Image"),
    "Recon": ("mrbridge.recon.pipeline", "Recon"),
    "ReconConfig": ("mrbridge.recon.pipeline", "ReconConfig"),
    # verbs
    "simulate": ("mrbridge.sim.simulate", "simulate"),
    "simulate_seq_file": ("mrbridge.sim.seqfile", "simulate_seq_file"),
    "export": ("mrbridge.sequence.export", "export_seq"),
    "write_pulseq": ("mrbridge.sequence.export", "write_pulseq"),
    "check_safety": ("mrbridge.sequence.safety", "check_safety"),
    "compare": ("mrbridge.report.compare", "compare"),
    "read_raw": ("mrbridge.raw.read", "read_raw"),
    "write_mrd": ("mrbridge.raw.mrd", "write_mrd"),
    "build": ("mrbridge.sequence.builders", "build"),
    "load_protocol": ("mrbridge.sequence.protocol", "load_protocol"),
    "builtin": ("mrbridge.twin.phantoms", "builtin"),
    "open_twin": ("mrbridge.twin.phantoms", "open_twin"),
    "calibrate": ("mrbridge.twin.calibrate", "calibrate"),
    "refine": ("mrbridge.refinement.run", "refine"),
    "RefineConfig": ("mrbridge.refinement.fit", "RefineConfig"),
    # errors a caller may catch
    "MrbridgeError": ("mrbridge.errors", "MrbridgeError"),
}

__all__ = [  # the names of _EXPORTS (tests/test_api.py checks that they agree)
    "Image", "MrbridgeError", "RawData", "Recon", "ReconConfig", "RefineConfig", "Sequence", "System", "Twin",
    "__version__", "build", "builtin", "calibrate", "check_safety", "compare", "export", "load_protocol", "open_twin",
    "read_raw", "refine", "simulate", "simulate_seq_file", "write_mrd", "write_pulseq",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on demand
    from mrbridge.errors import MrbridgeError
    from mrbridge.raw.mrd import write_mrd
    from mrbridge.raw.rawdata import RawData
    from mrbridge.raw.read import read_raw
    from mrbridge.recon.image import Image
    from mrbridge.recon.pipeline import Recon, ReconConfig
    from mrbridge.refinement.fit import RefineConfig
    from mrbridge.refinement.run import refine
    from mrbridge.report.compare import compare
    from mrbridge.sequence.builders import build
    from mrbridge.sequence.export import export_seq as export
    from mrbridge.sequence.export import write_pulseq
    from mrbridge.sequence.model import Sequence
    from mrbridge.sequence.protocol import load_protocol
    from mrbridge.sequence.safety import check_safety
    from mrbridge.sim.seqfile import simulate_seq_file
    from mrbridge.sim.simulate import simulate
    from mrbridge.system import System
    from mrbridge.twin.calibrate import calibrate
    from mrbridge.twin.phantoms import builtin, open_twin
    from mrbridge.twin.twin import Twin


def __getattr__(name: str) -> Any:
    """Import a public name of :data:`_EXPORTS` on first access (PEP 562) and keep it."""
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'mrbridge' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
