"""The demo `make demo` runs: the whole loop on the built-in brain.

1. simulate GRE and SE on ``builtin:brain`` (4 coils) → ISMRMRD raw data + inverse-FFT images;
2. optimize a short task (``protocols/demo_gre_sar.yaml``: FLASH flip angles under a SAR penalty) → run bundle;
3. export the bundle to a Pulseq ``.seq`` (generic 3T, safety-checked);
4. simulate that ``.seq`` twice: with the fast graph engine on the twin ("simulation"), and with the
   isochromat Bloch engine on the twin with B1+ scaled by 0.9 plus noise (a stand-in for the scanner);
5. reconstruct both with the bundle's recon and write the comparison report.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mrbridge.errors import MrbridgeError
from mrbridge.optimize.trainer import optimize
from mrbridge.raw.mrd import read_mrd, write_mrd
from mrbridge.recon.image_io import write_png
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.report.compare import compare
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq, write_pulseq
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import load_protocol, parse_protocol
from mrbridge.sequence.safety import check_safety
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"
#: the scanner stand-in's B1+ error and noise
MEASURED_B1_SCALE = 0.9
MEASURED_NOISE = 0.01


def run_demo(folder: str | Path, *, matrix: int = 64, noise: float = 0.005, seed: int = 0,
             progress: bool | None = None) -> list[Path]:
    """Run the whole loop into ``folder``; returns the paths written, the report's ``index.html`` last."""
    folder = Path(folder)
    return [*_simulate_builtins(folder, matrix, noise, seed), *_loop(folder, seed, progress)]


def _simulate_builtins(folder: Path, matrix: int, noise: float, seed: int) -> list[Path]:
    """GRE and SE on builtin:brain → ``<name>.h5`` and ``<name>.png`` (SE at the twin's FOV, not SPIN's 64 mm)."""
    twin = builtin("brain", matrix=matrix, coils=4)
    se = load_protocol(PROTOCOLS / "se.yaml").model_dump()
    protocols = {
        "gre": load_protocol(PROTOCOLS / "gre.yaml"),
        "se": parse_protocol({**se, "fov_mm": round(twin.fov[0] * 1e3, 3)}, source=str(PROTOCOLS / "se.yaml")),
    }
    recon = Recon(ReconConfig(method="fft"))
    written = []
    for name, protocol in protocols.items():
        raw = simulate(build(protocol, matrix=matrix), twin, noise=noise, seed=seed)
        raw.provenance.update({"twin": "builtin:brain", "protocol": name})
        raw_path, png_path = folder / f"{name}.h5", folder / f"{name}.png"
        write_mrd(raw, raw_path)
        write_png(recon(read_mrd(raw_path)), png_path)
        written += [raw_path, png_path]
    return written


def _loop(folder: Path, seed: int, progress: bool | None) -> list[Path]:
    """optimize → export → simulate (graph; Bloch on a B1-perturbed twin) → recon → compare."""
    bundle, system = folder / "run", System.load("generic3t")
    optimize(PROTOCOLS / "demo_gre_sar.yaml", bundle, resume=bundle.exists(), progress=progress)  # rerun: continue
    exported = export_seq(Sequence.load(bundle / "sequence.json"), system)
    safety = check_safety(exported.pulseq, system)
    if not safety.passed:
        raise MrbridgeError("demo: the optimized sequence failed safety: "
                            + "; ".join(str(c) for c in safety.failures()))
    seq_path = bundle / "sequence.seq"
    write_pulseq(exported.pulseq, seq_path)
    safety.save(bundle / "safety.json")

    played = import_seq(seq_path)
    twin = builtin("brain", matrix=played.info.matrix[0])
    sim_path, meas_path = folder / "loop_sim.h5", folder / "loop_meas.h5"
    write_mrd(simulate(played, twin, engine="graph"), sim_path)
    scanner = replace(twin, b1=MEASURED_B1_SCALE * twin.b1)
    write_mrd(simulate(played, scanner, engine="bloch", spins=4096, noise=MEASURED_NOISE, seed=seed), meas_path)
    result = compare(sim_path, meas_path, folder / "report", seq_path=seq_path, bundle=bundle,
                     twin_path="builtin:brain", system="generic3t")
    return [bundle, seq_path, sim_path, meas_path, result.index]
