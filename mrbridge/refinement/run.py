"""What ``mrbridge refine`` runs: read the scans, check them, start, fit, and write the refined twin and its report.

The folder gets ``twin.h5`` (the refined twin; its provenance names what was fitted, from which files, and the
final residual of each scan), ``start.h5``, ``history.csv``, ``checkpoint.pt`` and ``report/index.html``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

from mrbridge.errors import InputError
from mrbridge.refinement.fit import CHECKPOINT, RefineConfig, Refinement, RefineResult
from mrbridge.refinement.identifiable import check_identifiable
from mrbridge.refinement.report import write_report
from mrbridge.refinement.scans import Grid, Scan, default_grid, load_scan, window_scan
from mrbridge.refinement.start import adjoint_image, object_mask, start_tissue, start_twin
from mrbridge.report.html import sha256
from mrbridge.runlock import RunLock
from mrbridge.twin.phantoms import open_twin
from mrbridge.twin.twin import Twin

#: two scans show one object when their object masks overlap at least this much (Dice)
SAME_OBJECT_DICE = 0.7


@dataclass
class Refined:
    """A finished refinement: the result, the notes the user should read, and the report's path."""

    result: RefineResult
    notes: list[str]
    report: Path


def refine(meas: Seq[str | Path], seqs: Seq[str | Path], out: str | Path, config: RefineConfig, *,
           twin: str | None = None, matrix: int | None = None, tissue: str = "grey_matter", resume: bool = False,
           progress: bool | None = None) -> Refined:
    """Fit a twin to the scans ``meas[i]`` measured with ``seqs[i]`` (one object) and write it into ``out``.

    Everything the data cannot support is refused (InputError) before the fit: pairs that do not match, other
    geometries or objects, maps the scans cannot determine (:mod:`mrbridge.refinement.identifiable`).
    """
    out = Path(out)
    if not meas or len(meas) != len(seqs):
        raise InputError(f"refine: {len(meas)} --meas and {len(seqs)} --seq; expected one .seq per measurement")
    if twin is None:
        start_tissue(tissue)  # a bad --tissue is refused before the scans are read
    loaded = [load_scan(m, s) for m, s in zip(meas, seqs, strict=True)]
    start = None if twin is None else open_twin(twin, matrix=matrix)
    grid = default_grid(loaded[0][1], matrix) if start is None else _twin_grid(start, twin or "")
    scans = [window_scan(m, s, raw, enc, grid) for (raw, enc), m, s in zip(loaded, meas, seqs, strict=True)]
    notes = check_identifiable(config.fit, scans)
    _check_one_object(scans, grid)
    with RunLock(out, resume=resume):
        checkpoint = out / CHECKPOINT
        if checkpoint.exists() and not resume:
            raise InputError(f"{out}: holds a checkpoint of an earlier refinement; resume it (--resume) or choose "
                             "another -o folder")
        resumed = resume and checkpoint.exists()
        if resumed:
            start = Twin.load(out / "start.h5")
        elif start is None:
            start = start_twin(scans, grid, tissue)
        if not resumed:
            start.save(out / "start.h5")
        fit = Refinement(scans, start, config, out, progress=progress)
        if resumed:
            fit.load(checkpoint)
        result = fit.run()
        result.twin.provenance.update(_provenance(scans, config, result, twin))
        result.twin.save(out / "twin.h5")
        report = write_report(out / "report", scans, result, grid)
    return Refined(result, notes, report)


def _twin_grid(twin: Twin, spec: str) -> Grid:
    nz, ny, nx = twin.shape
    if nz != 1 or ny != nx:
        raise InputError(f"--twin {spec}: {nz}×{ny}×{nx} voxels; refine fits one slice of a square grid")
    return Grid(nx, twin.fov)


def _check_one_object(scans: list[Scan], grid: Grid) -> None:
    """Refuse scans whose object masks (first echo) do not overlap: another object, or the object moved."""
    masks = []
    for scan in scans:
        first = scan.contrast == scan.contrast.min()
        image = adjoint_image(scan.kdata[:, first], scan.traj[first], grid)
        masks.append(object_mask(image.abs().square().sum(0).sqrt()))
    for scan, mask in zip(scans[1:], masks[1:], strict=True):
        dice = 2 * float((mask & masks[0]).sum()) / max(1, int(mask.sum() + masks[0].sum()))
        if dice < SAME_OBJECT_DICE:
            raise InputError(f"--meas {scan.meas_path}: its object overlaps that of {scans[0].name} by Dice "
                             f"{dice:.2f} (expected ≥ {SAME_OBJECT_DICE}): scans of another object or position "
                             "cannot refine one twin")


def _provenance(scans: list[Scan], config: RefineConfig, result: RefineResult, twin: str | None) -> dict[str, str]:
    """What the refined twin records: fitted maps, source files (names and SHA-256), residual per scan."""
    return {
        "refined_fit": ",".join(config.fit),
        "refined_from": json.dumps([{"meas": str(s.meas_path), "seq": str(s.seq_path)} for s in scans]),
        "refined_from_sha256": ",".join(sha256(s.meas_path) for s in scans),
        "refined_residual": json.dumps({k: round(v, 6) for k, v in result.residuals.items()}),
        "refined_start": twin or "from the data",
        "refined_iterations": str(len(result.history)),
        "refined_delays_us": json.dumps([round(result.history[-1][k], 4) for k in ("delay_x_us", "delay_y_us")])
        if result.history else "[]",
        "refined_config": json.dumps(config.model_dump()),
    }

