"""The demo `make demo` runs: the whole loop on the built-in brain.

1. simulate GRE and SE on ``builtin:brain`` (4 coils) → ISMRMRD raw data + inverse-FFT images;
2. optimize a short task (``protocols/demo_gre_sar.yaml`` at the demo's matrix: FLASH flip angles under a SAR
   penalty) → run bundle;
3. export the bundle to a Pulseq ``.seq`` (generic 3T, safety-checked);
4. simulate that ``.seq`` twice: with the fast graph engine on the twin ("simulation"), and with the
   isochromat Bloch engine on the twin with B1+ scaled by 0.9 plus noise (a stand-in for the scanner);
5. reconstruct both with the bundle's recon and write the comparison report;
6. refine the twin's PD and B1+ from the scanner stand-in (the return path): its scan of the optimized ``.seq``
   and of a reference FLASH at 60° (the small optimized angles leave B1+ and PD all but interchangeable), and
   say how much of the B1+ error the refined twin recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml

from mrbridge.atomic import atomic_write_text
from mrbridge.errors import MrbridgeError
from mrbridge.optimize.task import load_task
from mrbridge.optimize.trainer import optimize
from mrbridge.raw.mrd import read_mrd, write_mrd
from mrbridge.recon.image_io import write_png
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.refinement.fit import RefineConfig
from mrbridge.refinement.run import refine
from mrbridge.report.compare import compare
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq, write_pulseq
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import load_protocol, parse_protocol
from mrbridge.sequence.safety import SafetyReport, check_safety
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin
from mrbridge.yamlfile import load_yaml

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"
TASK = PROTOCOLS / "demo_gre_sar.yaml"
#: the task's own matrix and dwell: at another matrix the dwell scales so that the readout keeps its length
TASK_MATRIX, TASK_DWELL_US = 16, 80.0
#: the scanner stand-in's B1+ error; its noise at the task's matrix (σ / max |signal|, scaled by 16 / matrix so
#: that the image's SNR does not fall with the matrix) and its isochromats in all (Bloch engine)
MEASURED_B1_SCALE = 0.9
MEASURED_NOISE = 0.01
MEASURED_ISOCHROMATS = 2**20
#: the reference scan's flip angle (the task's FLASH otherwise) and the refinement's L-BFGS evaluations
REFERENCE_FLIP_DEG = 60.0
REFINE_ITERATIONS = 40


def run_demo(folder: str | Path, *, matrix: int = 64, noise: float = 0.005, seed: int = 0,
             progress: bool | None = None, say: Callable[[str], None] = lambda line: None) -> list[Path]:
    """Run the whole loop into ``folder``; returns the paths written, the report's ``index.html`` last.

    ``say`` receives the refinement's one-line outcome.
    """
    folder = Path(folder)
    return [*_simulate_builtins(folder, matrix, noise, seed), *_loop(folder, matrix, seed, progress, say)]


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


def _loop(folder: Path, matrix: int, seed: int, progress: bool | None, say: Callable[[str], None]) -> list[Path]:
    """optimize → export → simulate (graph; Bloch on a B1-perturbed twin) → recon → compare → refine."""
    bundle, system = folder / "run", System.load("generic3t")
    task = demo_task(matrix, folder / "task.yaml")
    optimize(task, bundle, resume=bundle.exists(), progress=progress)  # rerun: continue
    seq_path = bundle / "sequence.seq"
    _export(Sequence.load(bundle / "sequence.json"), system, seq_path).save(bundle / "safety.json")

    played = import_seq(seq_path)
    twin = builtin("brain", matrix=played.info.matrix[0])
    sim_path, meas_path = folder / "loop_sim.h5", folder / "loop_meas.h5"
    write_mrd(simulate(played, twin, engine="graph"), sim_path)
    scanner = replace(twin, b1=MEASURED_B1_SCALE * twin.b1)
    _measure(seq_path, scanner, meas_path, seed)
    result = compare(sim_path, meas_path, folder / "report", seq_path=seq_path, bundle=bundle,
                     twin_path="builtin:brain", system="generic3t")

    protocol = load_task(task).protocol
    reference = parse_protocol({**protocol.model_dump(), "flip_angle_deg": REFERENCE_FLIP_DEG},
                               source="demo reference scan")
    ref_seq, ref_meas = folder / "loop_ref.seq", folder / "loop_ref_meas.h5"
    _export(build(reference), system, ref_seq)
    _measure(ref_seq, scanner, ref_meas, seed + 1)
    report = _refine(folder / "refined", twin, [meas_path, ref_meas], [seq_path, ref_seq], progress, say)
    return [bundle, seq_path, sim_path, meas_path, ref_seq, ref_meas, report, result.index]


def demo_task(matrix: int, path: Path) -> Path:
    """The demo's task (``protocols/demo_gre_sar.yaml``) at ``matrix`` written to ``path``: same FOV, timing and
    readout length (the dwell scales with 1 / matrix). Returns ``path``."""
    task = load_yaml(TASK)
    for protocol in (task["sequence"]["protocol"], task["target"]["protocol"]):
        protocol.update(matrix=matrix, dwell_us=TASK_DWELL_US * TASK_MATRIX / matrix)
    atomic_write_text(path, yaml.safe_dump(task, sort_keys=False))
    return path


def _export(sequence: Sequence, system: System, path: Path) -> SafetyReport:
    """Export ``sequence`` for ``system`` to the Pulseq file ``path``; MrbridgeError when it fails safety."""
    exported = export_seq(sequence, system)
    safety = check_safety(exported.pulseq, system)
    if not safety.passed:
        raise MrbridgeError(f"demo: {path.name} failed safety: " + "; ".join(str(c) for c in safety.failures()))
    write_pulseq(exported.pulseq, path)
    return safety


def _measure(seq_path: Path, scanner: Twin, path: Path, seed: int) -> None:
    """The scanner stand-in: the Bloch engine plays ``seq_path`` on ``scanner`` with noise into ``path``."""
    matrix = scanner.shape[-1]
    raw = simulate(import_seq(seq_path), scanner, engine="bloch", spins=max(64, MEASURED_ISOCHROMATS // matrix**2),
                   noise=MEASURED_NOISE * TASK_MATRIX / matrix, seed=seed)
    write_mrd(raw, path)


def _refine(out: Path, twin: Twin, meas: list[Path], seqs: list[Path], progress: bool | None,
            say: Callable[[str], None]) -> Path:
    """Refine PD and B1+ of ``twin`` (builtin:brain) from the stand-in's scans into ``out``; ``say`` the B1+ factor
    recovered (median of refined/twin B1+ in the brain) and each scan's residual before → after. Returns the
    refinement report's path."""
    done = refine(meas, seqs, out, RefineConfig(fit=["pd", "b1"], iterations=REFINE_ITERATIONS),
                  twin="builtin:brain", matrix=twin.shape[-1], resume=out.exists(),  # rerun: the finished fit
                  progress=progress)
    brain = twin.pd > 0
    factor = float((done.result.twin.b1[brain] / twin.b1[brain]).median())
    first = done.result.history[0]
    residuals = ", ".join(f"{first[f'res_{i}']:.3f} → {r:.3f} ({name})"
                          for i, (name, r) in enumerate(done.result.residuals.items()))
    say(f"refine: B1+ recovered × {factor:.3f} (truth × {MEASURED_B1_SCALE:g}) in the brain, residual {residuals}")
    return done.report
