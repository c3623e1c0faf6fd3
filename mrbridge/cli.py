"""The `mrbridge` command line. Thin: parse, call one library function, print, exit.

User mistakes (MrbridgeError) print one line and exit with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.text import Text

from mrbridge.errors import MrbridgeError
from mrbridge.outputs import check_outputs

if TYPE_CHECKING:  # torch and the library load inside the commands, so that `--help` answers at once
    from mrbridge.sequence.model import Sequence
    from mrbridge.sequence.safety import SafetyCheck, SafetyReport

Config = TypeVar("Config", bound=BaseModel)
CleanMode = Literal["mask", "clip", "error"]

app = typer.Typer(
    name="mrbridge",
    help="Bridge a differentiable MRI simulation and a real 3T scanner.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)
_state = {"debug": False, "quiet": False}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet


@contextmanager
def _working(message: str) -> Iterator[None]:
    """A spinner for steps that take a while on a terminal; elsewhere (a log) plain lines when the step starts
    and ends, with its duration, so that a long run shows life; nothing with --quiet."""
    if _state["quiet"]:
        yield
        return
    if err.is_terminal:
        with err.status(message):
            yield
        return
    start = time.monotonic()
    out.print(f"{message} …", highlight=False)
    yield
    out.print(f"{message}: done in {time.monotonic() - start:.1f} s", highlight=False)


def _device(name: str | None) -> str:
    """The torch device to run on: ``name`` checked to exist here, else cuda when available."""
    import torch

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MrbridgeError(f"--device {name!r}: unknown; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise MrbridgeError(f"--device {name!r}: this machine has {count} CUDA device(s); use --device cpu")
    elif device.type != "cpu":
        raise MrbridgeError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    return name


def _check_numbers(**bounds: tuple[float | None, float, float]) -> None:
    """Each option's value (None: not given) within [low, high] and finite, before any work; one-line error."""
    for option, (value, low, high) in bounds.items():
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            name = "--" + option.replace("_", "-")
            raise MrbridgeError(f"{name} {value!r}: expected a finite number in [{low:g}, {high:g}]")


# ---- simulate ----------------------------------------------------------------------------------------
@app.command()
def simulate(
    output: Annotated[Path, typer.Option("-o", "--output", help="ISMRMRD raw data file to write (.h5).")],
    twin: Annotated[str, typer.Option(help="builtin:NAME or a twin .h5 file.")] = "builtin:brain",
    protocol: Annotated[Path | None, typer.Option(help="Protocol YAML (protocols/*.yaml).")] = None,
    seq: Annotated[Path | None, typer.Option(help="A Pulseq .seq or a sequence JSON instead of a protocol.")] = None,
    engine: Annotated[str, typer.Option(help="graph (phase graph, fast) or bloch (isochromat reference).")] = "graph",
    noise: Annotated[float, typer.Option(help="Noise σ relative to the maximum signal magnitude.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise and of random phantoms.")] = 0,
    coils: Annotated[int | None, typer.Option(help="Simulated receive coils (built-in twins).")] = None,
    matrix: Annotated[int | None, typer.Option(help="Matrix size (overrides the protocol's).")] = None,
    spins: Annotated[int | None, typer.Option(help="Spins per voxel (bloch engine).")] = None,
    accuracy: Annotated[float | None, typer.Option(help="Smallest state kept, relative to M0 (graph engine).")] = None,
    slice_profile: Annotated[
        bool, typer.Option(help="Play each .seq RF shape with its slice gradient over a z-resolved twin (bloch).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    memory_gb: Annotated[
        float | None, typer.Option(help="Memory budget in GB (graph engine; default: half the available memory).")
    ] = None,
) -> None:
    """Simulate a protocol (or sequence) on a twin and write ISMRMRD raw data."""
    from mrbridge.raw.mrd import write_mrd
    from mrbridge.raw.seqreadouts import read_seq_readouts
    from mrbridge.sim.seqfile import simulate_seq_file
    from mrbridge.sim.simulate import simulate as run_simulation
    from mrbridge.twin.phantoms import open_twin

    check_outputs({"-o": output}, {"--twin": Path(twin), "--protocol": protocol, "--seq": seq})
    _check_numbers(noise=(noise, 0, 10), coils=(coils, 1, 128), matrix=(matrix, 4, 1024), spins=(spins, 1, 1e7),
                   accuracy=(accuracy, 1e-12, 1), memory_gb=(memory_gb, 1e-9, 1e6))
    device = _device(device)
    sequence = _load_sequence(protocol, seq, matrix)
    encoding = read_seq_readouts(seq) if seq is not None and seq.suffix.lower() == ".seq" else None
    size = encoding.twin_matrix() if encoding is not None else sequence.info.matrix[0]
    phantom = open_twin(twin, matrix=matrix or size, coils=coils, seed=seed)
    if slice_profile:
        from mrbridge.twin.zresolved import zresolved

        phantom = zresolved(phantom, thickness=sequence.info.fov[2])
    options: dict[str, Any] = {"engine": engine, "noise": noise, "seed": seed, "device": device,
                               "spins": spins, "accuracy": accuracy, "slice_profile": slice_profile,
                               "memory_gb": memory_gb}
    with _working(f"simulating {sequence.info.name} on {twin}"):
        if seq is not None and encoding is not None:  # labelled as the scanner's data of the same .seq
            raw = simulate_seq_file(seq, phantom, sequence=sequence, encoding=encoding, **options)
        else:
            raw = run_simulation(sequence, phantom, **options)
    raw.provenance.update({"twin": twin})
    _print_notes(raw.provenance)
    write_mrd(raw.to("cpu"), output)
    out.print(f"wrote {output}  ({raw.coils} coils × {raw.readouts} readouts × {raw.samples} samples)")


def _load_sequence(protocol: Path | None, seq: Path | None, matrix: int | None) -> Sequence:
    from mrbridge.sequence.builders import build
    from mrbridge.sequence.model import Sequence
    from mrbridge.sequence.protocol import load_protocol

    if (protocol is None) == (seq is None):
        raise MrbridgeError("give exactly one of --protocol FILE.yaml or --seq FILE.seq|FILE.json")
    if protocol is not None:
        return build(load_protocol(protocol), matrix=matrix)
    assert seq is not None
    if seq.suffix.lower() == ".seq":
        from mrbridge.sequence.import_seq import import_seq

        return import_seq(seq)
    return Sequence.load(seq)


# ---- twin --------------------------------------------------------------------------------------------
@app.command("twin")
def twin_command(
    spec: Annotated[str, typer.Argument(help="builtin:NAME (spin-brain, spin-random, brain), a twin .h5, or 'show'.")],
    path: Annotated[Path | None, typer.Argument(help="With 'show': the twin .h5 to show.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Twin HDF5 file to write.")] = None,
    png: Annotated[Path | None, typer.Option(help="With 'show': the figure to write.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of random phantoms (spin-random).")] = 0,
    matrix: Annotated[int | None, typer.Option(help="Matrix size of built-in twins.")] = None,
    coils: Annotated[int | None, typer.Option(help="Simulated receive coils.")] = None,
) -> None:
    """Write a twin (a built-in phantom, or a copy of a twin file) to HDF5, or `twin show FILE --png F`."""
    from mrbridge.twin.phantoms import open_twin

    if spec == "show":
        _show_twin(path, png)
        return
    if output is None or path is not None:
        raise MrbridgeError("usage: mrbridge twin SPEC -o twin.h5   or   mrbridge twin show twin.h5 --png twin.png")
    check_outputs({"-o": output}, {"SPEC": Path(spec)})
    twin = open_twin(spec, matrix=matrix, coils=coils, seed=seed)
    twin.save(output)
    nz, ny, nx = twin.shape
    fov_mm = "×".join(f"{f * 1e3:g}" for f in twin.fov)
    out.print(f"wrote {output}  ({nx}×{ny}×{nz} voxels, {twin.coils} coils, FOV {fov_mm} mm)")


def _show_twin(path: Path | None, png: Path | None) -> None:
    from mrbridge.twin.show import show_twin, summary_lines
    from mrbridge.twin.twin import Twin

    if path is None or png is None:
        raise MrbridgeError("usage: mrbridge twin show twin.h5 --png twin.png")
    twin = Twin.load(path)
    show_twin(twin, png)
    for line in summary_lines(twin):
        out.print(line, highlight=False)
    out.print(f"wrote {png}")


# ---- calibrate ---------------------------------------------------------------------------------------
MAP_OPTION = "a map file, or FILE:KEY for a variable or image series inside it"


@app.command()
def calibrate(
    output: Annotated[Path, typer.Option("-o", "--output", help="Twin HDF5 file to write.")],
    pd: Annotated[str | None, typer.Option(help=f"Proton density: {MAP_OPTION}.")] = None,
    t1: Annotated[str | None, typer.Option(help="T1 map.")] = None,
    t2: Annotated[str | None, typer.Option(help="T2 map.")] = None,
    t2star: Annotated[str | None, typer.Option(help="T2* map (T2' = 1/(1/T2* − 1/T2)).")] = None,
    t2dash: Annotated[str | None, typer.Option(help="T2' map.")] = None,
    b0: Annotated[str | None, typer.Option(help="B0 off-resonance map.")] = None,
    b1: Annotated[str | None, typer.Option(help="B1+ map (relative, percent or flip angle).")] = None,
    mat: Annotated[Path | None, typer.Option(help="One .mat/.npz holding all maps (with --keys).")] = None,
    keys: Annotated[str | None, typer.Option(help="Map names in --mat, e.g. PD,T1,T2,B0,B1 ('_' skips).")] = None,
    mask: Annotated[str | None, typer.Option(help="Mask map (default: from PD).")] = None,
    coils: Annotated[Path | None, typer.Option(help="Multi-coil ISMRMRD calibration scan for sensitivities.")] = None,
    slice_index: Annotated[int | None, typer.Option("--slice", help="Slice of 3D maps.")] = None,
    matrix: Annotated[int | None, typer.Option(help="In-plane matrix of the twin (anti-aliased resampling).")] = None,
    t1_unit: Annotated[str | None, typer.Option(help="State T1's unit (s, ms) instead of inferring it.")] = None,
    t2_unit: Annotated[str | None, typer.Option(help="State T2's unit (s, ms).")] = None,
    t2star_unit: Annotated[str | None, typer.Option(help="State T2*'s unit (s, ms).")] = None,
    t2dash_unit: Annotated[str | None, typer.Option(help="State T2''s unit (s, ms).")] = None,
    b0_unit: Annotated[str | None, typer.Option(help="State B0's unit (Hz, rad/s, ppm).")] = None,
    b1_unit: Annotated[str | None, typer.Option(help="State B1's unit (ratio, percent, deg).")] = None,
    clean: Annotated[CleanMode, typer.Option(help="What to do with implausible voxels.")] = "mask",
    reorient: Annotated[bool, typer.Option(help="Reorient maps whose axes are flipped/swapped against PD.")] = False,
    voxel_mm: Annotated[str | None, typer.Option(help="Voxel size X,Y,Z in mm for maps without geometry.")] = None,
    field_strength: Annotated[float | None, typer.Option(help="B0 in T (for B0 maps in ppm).")] = None,
    b1_nominal_deg: Annotated[float | None, typer.Option(help="Nominal flip angle of a B1 flip-angle map.")] = None,
) -> None:
    """Build a validated twin from measured PD/T1/T2/T2*/T2'/B0/B1 maps (any unit; each choice reported)."""
    from mrbridge.twin.calibrate import MapInput
    from mrbridge.twin.calibrate import calibrate as run_calibration
    from mrbridge.twin.readers import parse_map_spec, read_stacked
    from mrbridge.twin.show import summary_lines

    given = {"pd": pd, "t1": t1, "t2": t2, "t2star": t2star, "t2dash": t2dash, "b0": b0, "b1": b1}
    files = {f"--{name}": parse_map_spec(spec) for name, spec in {**given, "mask": mask}.items() if spec}
    check_outputs({"-o": output}, {"--mat": mat, "--coils": coils,
                                   **{k: v if isinstance(v, Path) else v[0] for k, v in files.items()}})
    if mat is not None:
        if any(given.values()) or not keys:
            raise MrbridgeError("--mat needs --keys (e.g. PD,T1,T2,B0,B1) and no per-map options")
        maps: dict[str, MapInput] = dict(read_stacked(mat, [k.strip() for k in keys.split(",")]))
        maps.pop("_", None)
    else:
        maps = {name: parse_map_spec(spec) for name, spec in given.items() if spec}
    stated = {name: unit for name, unit in (("t1", t1_unit), ("t2", t2_unit), ("t2star", t2star_unit),
                                             ("t2dash", t2dash_unit), ("b0", b0_unit), ("b1", b1_unit)) if unit}
    voxel = None
    if voxel_mm:
        try:
            x, y, z = (float(v) for v in voxel_mm.split(","))
        except ValueError:
            raise MrbridgeError(f"--voxel-mm {voxel_mm!r}: expected three numbers X,Y,Z in mm") from None
        voxel = (x, y, z)
    with _working("calibrating"):
        twin = run_calibration(
            maps, units=stated, mask=parse_map_spec(mask) if mask else None, slice=slice_index, matrix=matrix,
            coils=coils, clean=clean, reorient=reorient, voxel_mm=voxel,
            field_strength_t=field_strength, b1_nominal_deg=b1_nominal_deg,
        )
    twin.save(output)
    for line in summary_lines(twin):
        out.print(line, highlight=False)
    out.print(f"wrote {output}")


# ---- optimize ----------------------------------------------------------------------------------------
@app.command()
def optimize(
    task: Annotated[Path, typer.Argument(help="Optimization task YAML (protocols/spin_flip_angle.yaml, …).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run bundle folder.")],
    resume: Annotated[bool, typer.Option(help="Continue a killed run from its last checkpoint.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    engine: Annotated[str | None, typer.Option(help="graph or bloch (default: the task's).")] = None,
) -> None:
    """Learn a sequence and its reconstruction jointly; write a run bundle (also under torchrun)."""
    from mrbridge.optimize.trainer import optimize as run_optimization

    summary = run_optimization(task, output, resume=resume, device=_device(device), engine=engine,
                               progress=False if _state["quiet"] else None)
    final = summary.get("final", {})
    out.print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in final.items()))
    out.print(f"wrote {output}")


@app.command()
def refine(
    meas: Annotated[list[Path], typer.Option(help="Measured raw data (twix .dat or ISMRMRD .h5); repeat per scan.")],
    seq: Annotated[list[Path], typer.Option(help="The .seq each --meas was measured with, in the same order.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder: twin.h5, report/, history, checkpoint.")],
    fit: Annotated[str, typer.Option(help="Maps to fit: pd,b0,t2dash,b1,t1,t2,coils.")] = "pd,coils",
    twin: Annotated[str | None, typer.Option(help="Start twin (builtin:NAME or .h5); default: from the data.")] = None,
    matrix: Annotated[int | None, typer.Option(help="Twin matrix (default: the first scan's).")] = None,
    iterations: Annotated[int, typer.Option(help="Simulations with gradient (L-BFGS evaluations).")] = 200,
    tissue: Annotated[str, typer.Option(help="brain3t.yaml tissue giving the start's T1/T2.")] = "grey_matter",
    free_scale: Annotated[bool, typer.Option(help="One intensity scale per scan.")] = False,
    smoothness: Annotated[float, typer.Option(help="Weight of the B0/B1+/coil smoothness penalty.")] = 1e-4,
    resume: Annotated[bool, typer.Option(help="Continue a killed refinement from its checkpoint.")] = False,
) -> None:
    """Fit a twin to measured raw data through the differentiable simulation of each scan's .seq."""
    from mrbridge.refinement.fit import RefineConfig
    from mrbridge.refinement.identifiable import parse_fit
    from mrbridge.refinement.run import refine as run_refine

    check_outputs({"-o": output}, {**{f"--meas {m}": m for m in meas}, **{f"--seq {s}": s for s in seq}},
                  folders=["-o"])
    _check_numbers(matrix=(matrix, 8, 1024), iterations=(iterations, 1, 1e6), smoothness=(smoothness, 0, 1e6))
    config = RefineConfig(fit=parse_fit(fit), iterations=iterations, free_scale=free_scale, smoothness=smoothness)
    done = run_refine(meas, seq, output, config, twin=twin, matrix=matrix, tissue=tissue, resume=resume,
                      progress=False if _state["quiet"] else None)
    for note in done.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    for name, residual in done.result.residuals.items():
        out.print(f"{name}: residual {residual:.4f}", markup=False, highlight=False)
    out.print(f"wrote {output / 'twin.h5'} and {done.report}")


# ---- build / export / check --------------------------------------------------------------------------
@app.command()
def build(
    protocol: Annotated[Path, typer.Argument(metavar="PROTOCOL.yaml", help="Protocol YAML (protocols/*.yaml).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Sequence JSON to write (.json).")],
    matrix: Annotated[int | None, typer.Option(help="Matrix size (overrides the protocol's).")] = None,
) -> None:
    """Build a protocol into a sequence JSON (what simulate --seq, export and optimize tasks read)."""
    check_outputs({"-o": output}, {"PROTOCOL": protocol})
    _check_numbers(matrix=(matrix, 4, 1024))
    if output.suffix.lower() != ".json":
        raise MrbridgeError(f"-o {output}: expected a name ending in .json (a Pulseq .seq is 'mrbridge export')")
    sequence = _load_sequence(protocol, None, matrix)
    sequence.save(output)
    info = sequence.info
    size = "×".join(str(n) for n in info.matrix[:2] if n > 1) or "1"
    out.print(f"wrote {output}  ({info.name}: {len(sequence)} repetitions, {len(sequence.readouts())} readouts, "
              f"matrix {size}, {float(sequence.duration):.3g} s)", highlight=False)


Coil = Literal["head", "body"]


@app.command()
def export(
    source: Annotated[
        Path,
        typer.Argument(metavar="BUNDLE|SEQUENCE.json|PROTOCOL.yaml", help="Run bundle, sequence JSON or protocol."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Pulseq .seq file to write.")],
    system: Annotated[str, typer.Option(help="System preset (generic3t, prisma, vida, skyra) or YAML.")] = "generic3t",
    rf: Annotated[
        Literal["sinc", "block"] | None,
        typer.Option(help="Shape of every exported RF pulse (default: each pulse's own, a sinc unless imported)."),
    ] = None,
    rf_duration_ms: Annotated[
        float | None,
        typer.Option(help="RF pulse duration of every pulse (default: each pulse's own shape, 1 ms unless the "
                          "protocol says otherwise)."),
    ] = None,
    tbw: Annotated[
        float | None,
        typer.Option(help="Time-bandwidth product of every sinc pulse (default: each pulse's own, 4 unless the "
                          "protocol says otherwise)."),
    ] = None,
    slice_mm: Annotated[float | None, typer.Option(help="Slice thickness (default: the sequence's).")] = None,
    patient_kg: Annotated[float, typer.Option(help="Patient mass for SAR.")] = 75.0,
    coil: Annotated[Coil, typer.Option(help="Transmit coil for SAR.")] = "head",
    timing: Annotated[
        Literal["extend", "strict"], typer.Option(help="extend: lengthen events that cannot fit; strict: refuse.")
    ] = "extend",
    version: Annotated[Literal["1.5", "1.4"], typer.Option(help="Pulseq file version.")] = "1.5",
    force: Annotated[bool, typer.Option(help="Write even when a safety check fails (recorded as a warning).")] = False,
    crusher_cycles: Annotated[
        float | None,
        typer.Option(help="Crushers before and after every refocusing pulse: cycles across the slice (0: none) "
                          "[default: the protocol's crusher_cycles, 4 when it states none]."),
    ] = None,
    slew_fraction: Annotated[
        float, typer.Option(help="Fraction of the PNS-safe slew used for trapezoid ramps (< 1: gentler ramps).")
    ] = 1.0,
    matrix: Annotated[int | None, typer.Option(help="With a protocol: its matrix size (overrides the protocol's).")]
    = None,
) -> None:
    """Export a sequence as a Pulseq .seq a scanner runs; refuse (exit 1) what is unsafe.

    Beside the .seq go safety.json (every figure) and <name>.exported.json (the Sequence with the file's timing).
    """
    from mrbridge.sequence.export import export_seq, write_pulseq
    from mrbridge.sequence.model import Sequence
    from mrbridge.sequence.safety import check_safety
    from mrbridge.system import System

    sequence_file = source / "sequence.json" if source.is_dir() else source
    check_outputs({"-o": output, "(beside it)": output.with_suffix(".exported.json"),
                   "(its safety report)": output.parent / "safety.json"},
                  {"SOURCE": sequence_file, "--system": Path(system)})
    _check_numbers(crusher_cycles=(crusher_cycles, 0, 100), slew_fraction=(slew_fraction, 0.01, 1),
                   patient_kg=(patient_kg, 1, 500), slice_mm=(slice_mm, 0.05, 500),
                   rf_duration_ms=(rf_duration_ms, 0.01, 100), tbw=(tbw, 0.1, 100))
    if sequence_file.suffix.lower() in (".yaml", ".yml"):  # a protocol: build it first
        seq = _load_sequence(sequence_file, None, matrix)
    elif matrix is not None:
        raise MrbridgeError(f"--matrix {matrix}: only a protocol (.yaml) is built at a chosen matrix; "
                            f"{sequence_file} is a built sequence")
    else:
        seq = Sequence.load(sequence_file)
    hardware = System.load(system)
    with _working("exporting"):
        rf_duration = None if rf_duration_ms is None else rf_duration_ms * 1e-3
        result = export_seq(seq, hardware, rf=rf, rf_duration=rf_duration, tbw=tbw,
                            slice_thickness=None if slice_mm is None else slice_mm * 1e-3, timing=timing,
                            crusher_cycles=crusher_cycles, slew_fraction=slew_fraction)
        report = check_safety(result.pulseq, hardware, patient_kg=patient_kg, coil=coil)
    for change in result.changes:
        out.print(f"timing changed: {change}", highlight=False)
    failures = report.failures()
    for failure in failures:
        err.print(str(failure), highlight=False)
    if failures and not force:
        err.print(f"refused: {len(failures)} safety check(s) failed on {hardware.name}; nothing written "
                  "(--force writes it anyway)")
        raise typer.Exit(1)
    if failures:
        err.print("warning: written despite failed safety checks (--force); recorded in safety.json")
    write_pulseq(result.pulseq, output, version=version)
    result.sequence.save(output.with_suffix(".exported.json"))
    report.save(output.parent / "safety.json")
    out.print(f"wrote {output}, {output.with_suffix('.exported.json')}, {output.parent / 'safety.json'}")
    out.print(_safety_line(report), highlight=False)


def _safety_line(report: SafetyReport) -> str:
    """One line for the console: how many checks passed, and the figures a physicist looks at first (peak B1,
    PNS, and the SAR figure closest to its limit); every figure is in safety.json."""
    checks = report.checks
    parts = [f"safety on {report.system}: {sum(c.passed for c in checks)}/{len(checks)} checks passed"]
    failed = len(checks) - sum(c.passed for c in checks)
    if failed:
        parts[0] += f", {failed} FAILED"

    def figure(label: str, c: SafetyCheck) -> str:
        limit = "" if c.limit is None else f" / {c.limit:.3g}"
        return f"{label} {c.value:.3g}{limit} {c.unit}".rstrip()

    named = {c.name: c for c in checks}
    if "peak B1" in named:
        parts.append(figure("peak B1", named["peak B1"]))
    pns = [c for c in checks if c.name.startswith("PNS")]
    if pns:
        parts.append(figure("PNS", max(pns, key=lambda c: c.value)))
    sar = [c for c in checks if "SAR" in c.name and c.limit]
    if sar:
        worst = max(sar, key=lambda c: c.value / (c.limit or 1.0))
        parts.append(figure(worst.name, worst))
    return "; ".join(parts)


@app.command()
def check(
    seq_file: Annotated[Path, typer.Argument(metavar="SEQ", help="Any Pulseq .seq file.")],
    system: Annotated[str, typer.Option(help="System preset or YAML.")] = "generic3t",
    patient_kg: Annotated[float, typer.Option(help="Patient mass for SAR.")] = 75.0,
    coil: Annotated[Coil, typer.Option(help="Transmit coil for SAR.")] = "head",
) -> None:
    """Check a .seq: timing, gradients, B1, SAR, PNS. Exit 1 when unsafe."""
    from mrbridge.sequence.safety import check_safety
    from mrbridge.system import System

    report = check_safety(seq_file, System.load(system), patient_kg=patient_kg, coil=coil)
    out.print(report.summary(), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


# ---- recon / convert ---------------------------------------------------------------------------------
@app.command()
def recon(
    raw_path: Annotated[Path, typer.Argument(metavar="RAW", help="ISMRMRD .h5 or Siemens twix .dat.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ISMRMRD image file to write (.h5).")],
    seq: Annotated[Path | None, typer.Option(help="The .seq that produced a twix file.")] = None,
    bundle: Annotated[Path | None, typer.Option("--with", help="Run bundle whose recon to use.")] = None,
    method: Annotated[str | None, typer.Option(help="fft, adjoint, cg or sense [default: fft or the bundle's]")] = None,
    nifti: Annotated[Path | None, typer.Option(help="Also write NIfTI (.nii or .nii.gz).")] = None,
    png: Annotated[Path | None, typer.Option(help="Also write a PNG of the magnitude (mm axes, colorbar).")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="With --png: the bare image, no axes or colorbar.")] = False,
    delay_us: Annotated[float, typer.Option("--trajectory-delay-us", help="Gradient delay (µs) of a twix.")] = 0.0,
    ghost_correction: Annotated[
        Literal["auto", "none"] | None,
        typer.Option(help="EPI N/2 ghost correction estimated from the data [default: auto, or the bundle's]"),
    ] = None,
) -> None:
    """Reconstruct raw data with the same Recon that reconstructs simulations.

    Without --method or --with: fft for Cartesian data and line readouts (EPI, alternating or ramp-sampled
    lines, regridded onto the Cartesian matrix), cg for any other trajectory. A spectrum for data without
    spatial encoding (FID)."""
    import torch

    from mrbridge.raw.read import read_raw
    from mrbridge.recon.image_io import write_figure_png, write_image_mrd, write_nifti, write_png
    from mrbridge.recon.pipeline import Recon, ReconConfig, default_method

    check_outputs({"-o": output, "--nifti": nifti, "--png": png},
                  {"RAW": raw_path, "--seq": seq, "--with": bundle / "recon.pt" if bundle else None})
    if output.suffix.lower() not in (".h5", ".hdf5", ".mrd"):
        raise MrbridgeError(f"-o {output}: the images are written as ISMRMRD HDF5; expected a name ending in .h5, "
                            ".hdf5 or .mrd (for a picture add --png NAME.png)")
    if nifti is not None and not nifti.name.endswith((".nii", ".nii.gz")):
        raise MrbridgeError(f"--nifti {nifti}: expected a name ending in .nii or .nii.gz")
    raw = read_raw(raw_path, seq, trajectory_delay=delay_us * 1e-6)
    _print_notes(raw.provenance)
    given: dict[str, object] = {"method": method} if method else {}
    if ghost_correction:
        given["ghost_correction"] = ghost_correction
    if bundle is not None:
        reconstruct = Recon.load(bundle)
        reconstruct.config = _parse(ReconConfig, {**reconstruct.config.model_dump(), **given}, "--method")
    else:
        reconstruct = Recon(_parse(ReconConfig, {"method": default_method(raw), **given}, "--method"))
    with _working(f"reconstructing {raw_path.name}"), torch.no_grad():
        image = reconstruct(raw)
    m = image.meta
    if "ghost_gsr_before" in m:
        out.print(f"N/2 ghost correction ({m['ghost_correction']}): phase {m['ghost_phase_rad']} rad, delay "
                  f"{m['ghost_delay_us']} µs (sign of --trajectory-delay-us); ghost-to-signal "
                  f"{m['ghost_gsr_before']} → {m['ghost_gsr_after']}", highlight=False)
    write_image_mrd(image, output)
    written = [output]
    if nifti is not None:
        write_nifti(image, nifti)
        written.append(nifti)
    if png is not None:
        (write_png if plain else write_figure_png)(image, png)
        written.append(png)
    out.print("wrote " + ", ".join(map(str, written)) + f"  (image {tuple(image.data.shape)})")


@app.command()
def convert(
    dat: Annotated[Path, typer.Argument(help="Siemens twix .dat file.")],
    seq: Annotated[Path, typer.Option(help="The .seq that produced it (ordering, labels, trajectory).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ISMRMRD raw data file to write (.h5).")],
    delay_us: Annotated[float, typer.Option("--trajectory-delay-us", help="Gradient delay (µs).")] = 0.0,
) -> None:
    """Convert Siemens twix raw data of a Pulseq sequence to ISMRMRD."""
    from mrbridge.raw.convert import convert as convert_twix

    check_outputs({"-o": output}, {"DAT": dat, "--seq": seq})
    raw = convert_twix(dat, seq, output, trajectory_delay=delay_us * 1e-6)
    _print_notes(raw.provenance)
    out.print(f"wrote {output}  ({raw.coils} coils × {raw.readouts} readouts × {raw.samples} samples)")


#: provenance entries that say what was inferred from a .seq, rejoined from a twix file or noted of a simulation
NOTES = ("rf_use_inferred", "fov_source", "adc_segments_rejoined", "twin_span")


def _print_notes(provenance: dict[str, str]) -> None:
    """Tell the user what was inferred rather than read (a 1.4 file's RF use, the FOV, ADC segments) and what a
    simulation may not have meant (a twin far smaller than the image)."""
    for key in NOTES:
        if key in provenance:
            what = {"adc_segments_rejoined": "ADC events rejoined from scanner segments: "}.get(key, "")
            out.print(f"note: {what}{provenance[key]}", highlight=False)


def _parse(model: type[Config], values: dict[str, object], option: str) -> Config:
    """Validate CLI values into a pydantic model; a bad value is a one-line error naming the option."""
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise MrbridgeError(f"{option} {first.get('input')!r}: {first['msg']}") from None


# ---- compare / gadget --------------------------------------------------------------------------------
@app.command()
def compare(
    sim: Annotated[Path, typer.Option(help="Simulated raw data (ISMRMRD .h5).")],
    meas: Annotated[Path, typer.Option(help="Measured raw data (ISMRMRD .h5, or twix .dat with --seq).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Report folder (index.html, PNGs, metrics.json).")],
    seq: Annotated[Path | None, typer.Option(help="The .seq (or sequence.json) that was run.")] = None,
    bundle: Annotated[Path | None, typer.Option("--with", help="Run bundle whose recon to use.")] = None,
    twin: Annotated[str | None, typer.Option(help="The twin (for tissue ROI statistics).")] = None,
    system: Annotated[str, typer.Option(help="System preset or YAML for the safety summary.")] = "generic3t",
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when the report has warnings.")] = False,
    seq_window_ms: Annotated[
        str | None, typer.Option(help="START,END (ms) of the .seq waveforms drawn [default: two repetitions].")
    ] = None,
    matrix: Annotated[
        int | None, typer.Option(help="Compare at the resolution of N×N (both band-limited), e.g. a refined twin's.")
    ] = None,
) -> None:
    """Report simulation against measurement, both through the same Recon; warn when the comparison means little.

    With a .seq (--seq, or a bundle's sequence.seq) the report draws its real waveforms; with a bundle, its
    optimization history."""
    from mrbridge.report.compare import compare as run_compare

    check_outputs({"-o": output}, {"--sim": sim, "--meas": meas, "--seq": seq}, folders=["-o"])
    window = _window_ms(seq_window_ms)
    _check_numbers(matrix=(matrix, 4, 1024))
    with _working("comparing"):
        result = run_compare(sim, meas, output, seq_path=seq, bundle=bundle, twin_path=twin, system=system,
                             seq_window=window, matrix=matrix)
    m = result.metrics
    out.print(f"scale {m.scale:.4g}  NRMSE {m.nrmse:.4f}  SSIM {m.ssim:.4f}  PSNR {m.psnr_db:.2f} dB")
    for note in result.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    if result.role == "prediction":
        corr = "n/a" if m.correlation is None else f"{m.correlation:.4f}"
        out.print(f"prediction of the held-out scan: correlation {corr}, NRMSE {m.nrmse:.4f}", highlight=False)
    for warning in result.warnings:
        out.print(f"warning: {warning}", markup=False, highlight=False)
    out.print(f"wrote {result.index}")
    if strict and result.warnings:
        raise typer.Exit(1)


def _window_ms(text: str | None) -> tuple[float, float] | None:
    """'START,END' in ms → (start, end) s; a one-line error unless 0 ≤ START < END."""
    if text is None:
        return None
    try:
        start, end = (float(part) for part in text.split(","))
    except ValueError:
        raise MrbridgeError(f"--seq-window-ms {text!r}: expected START,END in ms, e.g. 0,25") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
        raise MrbridgeError(f"--seq-window-ms {text!r}: expected 0 ≤ START < END (ms)")
    return start * 1e-3, end * 1e-3


@app.command()
def gadget(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 9002,
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    bundle: Annotated[Path | None, typer.Option("--with", help="Run bundle served when the client names none.")] = None,
    bundles: Annotated[
        Path | None, typer.Option(help="Folder of run bundles a client may name (by folder name, never a path).")
    ] = None,
    idle_timeout: Annotated[float, typer.Option(help="Seconds a connection may wait between messages.")] = 30.0,
    message_timeout: Annotated[float, typer.Option(help="Seconds one message may take to arrive.")] = 60.0,
    max_connections: Annotated[int, typer.Option(help="Connections served at once; more get 'server busy'.")] = 8,
    max_mb: Annotated[float, typer.Option(help="Raw data one connection may send, in MiB.")] = 1024.0,
) -> None:
    """Serve the recon as a Gadgetron external Python gadget until interrupted."""
    import logging
    import math

    from mrbridge.gadget import GadgetServer, Limits

    if not 0 <= port < 65536:
        raise MrbridgeError(f"--port {port}: expected a TCP port 1..65535 (0: any free one)")
    for option, value in (("--idle-timeout", idle_timeout), ("--message-timeout", message_timeout),
                          ("--max-connections", max_connections), ("--max-mb", max_mb)):
        if not (math.isfinite(value) and value > 0):
            raise MrbridgeError(f"{option} {value!r}: expected a positive number")
    limits = Limits(idle_timeout=idle_timeout, message_timeout=message_timeout, max_connections=max_connections,
                    max_bytes=max(1, int(max_mb * (1 << 20))))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = GadgetServer(port=port, host=host, bundle=bundle, bundles=bundles, limits=limits)  # checks all first
    bound_host, bound_port = server.address
    out.print(f"mrbridge gadget listening on {bound_host}:{bound_port} (Ctrl-C stops)", markup=False, highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        out.print("stopped")


# ---- demo --------------------------------------------------------------------------------------------
@app.command()
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the demo's files.")] = Path("out/demo"),
    matrix: Annotated[int, typer.Option(help="Matrix size.")] = 64,
) -> None:
    """The whole loop on the built-in brain twin: simulate GRE/SE, optimize, export, simulate, recon, compare,
    refine."""
    from mrbridge.demo import run_demo

    with _working("running the demo"):
        paths = run_demo(output, matrix=matrix, progress=False,
                         say=lambda line: out.print(line, markup=False, highlight=False))
    for path in paths:
        out.print(str(path))


#: options of every command, accepted before or after the command's name
GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


def global_options_first(args: list[str]) -> list[str]:
    """``mrbridge optimize T -o R --quiet`` as ``mrbridge --quiet optimize T -o R``: the flags every command
    takes are moved before the command, where Typer reads them."""
    return [a for a in args if a in GLOBAL_FLAGS] + [a for a in args if a not in GLOBAL_FLAGS]


def main() -> None:
    """Entry point: run the app; a user mistake prints one line and exits with code 2."""
    # MKL's conditional numerical reproducibility: a resumed run repeats the killed one bit for bit.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    args = global_options_first(sys.argv[1:])
    try:
        code = app(args=args, standalone_mode=False)
    except MrbridgeError as error:
        if _state["debug"]:
            raise
        _fail(str(error))
    except typer.TyperException as error:  # a bad option or argument: one line too, naming the command
        ctx = getattr(error, "ctx", None)
        command = ctx.command_path if ctx is not None else "mrbridge"
        _fail(f"{command}: {error.format_message()}{_given(error, args)} (see '{command} --help')")
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _given(error: Exception, args: list[str]) -> str:
    """" (got VALUE)" for a bad option value, from the command line (the message does not always say)."""
    opts = getattr(getattr(error, "param", None), "opts", None) or []
    for i, arg in enumerate(args[:-1]):
        if arg in opts:
            return f" (got {args[i + 1]!r})"
    return ""


def _fail(message: str) -> NoReturn:
    """Print a user mistake as one line and exit with code 2."""
    err.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
