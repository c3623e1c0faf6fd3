"""``compare``: simulated vs measured raw data through ONE Recon, into a static report folder.

Both images are brought onto one grid (:mod:`mrbridge.report.grid`) and the comparison is checked for meaning
(:mod:`mrbridge.report.validity`): its warnings head the page, fill ``metrics.json``'s ``warnings`` and come back
in :class:`CompareResult`. Writes ``<out_dir>/index.html``, its PNGs and ``metrics.json``, each file atomically;
the page last, so it never points at a figure that is not there yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mrbridge.atomic import atomic_write_text
from mrbridge.errors import InputError
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.read import read_raw
from mrbridge.recon.image import Image
from mrbridge.recon.pipeline import Recon
from mrbridge.report import figures
from mrbridge.report.bandlimit import band_limited
from mrbridge.report.grid import common_grid
from mrbridge.report.guard import guard_report
from mrbridge.report.history import read_history
from mrbridge.report.html import FileRecord, file_record, render_report, sha256, versions
from mrbridge.report.kspace import kspace_plane
from mrbridge.report.metrics import (
    Metrics,
    compare_images,
    comparison_mask,
    data_consistency,
    labels_on_grid,
)
from mrbridge.report.snr import SnrReport, noise_change, roi_snr
from mrbridge.report.validity import assess
from mrbridge.report.waveforms import read_waveforms
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.safety import SafetyReport, check_safety
from mrbridge.system import System
from mrbridge.twin.phantoms import open_twin


@dataclass
class CompareResult:
    """What :func:`compare` produced.

    sim_image, meas_image: the two reconstructions (data (…, z, y, x)), unscaled, on the common grid they were
    compared on (resampled when their matrices differed, see ``notes``).
    role: "prediction" (the simulated twin was refined from other scans: this one was held out), "fit" (the twin
    was refined from this scan) or "simulation".
    warnings: one line each on why the comparison means little (empty when it is sound).
    notes: one line each on what the simulation is (prediction, fit) and what was done to compare (band limit,
    resampling).
    snr: SNR per region of both images, with the method of each (:mod:`mrbridge.report.snr`).
    """

    out_dir: Path
    index: Path
    metrics_json: Path
    figures: list[Path]
    metrics: Metrics
    sim_image: Image
    meas_image: Image
    safety: SafetyReport | None = None
    files: list[FileRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snr: SnrReport | None = None
    role: str = "simulation"


#: the report's heading for each role
HEADINGS = {"prediction": "Prediction of a held-out scan vs measurement", "fit": "Refined twin's fit vs measurement",
            "simulation": "Simulation vs measurement"}


def comparison_role(sim: RawData, meas_path: Path) -> tuple[str, list[str]]:
    """What the simulation is to ``meas_path``, and the note that says so.

    A twin refined by ``mrbridge refine`` records the SHA-256 of the scans it was fitted to, and ``simulate``
    passes them on (``twin_refined_from_sha256``). Against a scan among them the comparison shows the fit; against
    any other it is a prediction, the number that says whether the twin is the object.
    """
    sources = sim.provenance.get("twin_refined_from_sha256")
    if not sources:
        return "simulation", []
    fitted = sources.split(",")
    if sha256(meas_path) in fitted:
        return "fit", [f"{meas_path.name} is one of the {len(fitted)} scan(s) the twin was refined from: this "
                       "shows how well the twin fits it, not how well it predicts"]
    return "prediction", [f"prediction: the twin was refined from {len(fitted)} other scan(s); {meas_path.name} "
                          "was held out of the fit"]


def _sequence(seq_path: Path | None, bundle: Path | None) -> Sequence | None:
    if seq_path is not None:
        return Sequence.load(seq_path) if seq_path.suffix.lower() == ".json" else import_seq(seq_path)
    if bundle is not None and (bundle / "sequence.json").is_file():
        return Sequence.load(bundle / "sequence.json")
    return None


def _safety(seq_path: Path | None, bundle: Path | None, system: str | Path) -> tuple[SafetyReport | None, str]:
    """The safety report of the .seq (checked now), else the bundle's ``safety.json``, else why there is none."""
    if seq_path is not None and seq_path.suffix.lower() == ".seq":
        return check_safety(seq_path, System.load(system)), ""
    if bundle is not None and (bundle / "safety.json").is_file():
        path = bundle / "safety.json"
        try:
            return SafetyReport.model_validate_json(path.read_text()), ""
        except ValidationError as err:
            raise InputError(f"{path}: not a safety report ({err.errors()[0]['msg']})") from None
    return None, "no Pulseq .seq given (--seq) and no safety.json in the bundle"


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _trajectory(sim: RawData, meas: RawData, seq: Sequence | None) -> torch.Tensor | None:
    for raw in (meas, sim):
        if raw.traj is not None:
            return raw.traj
    if seq is not None:
        return seq.kspace().detach().reshape(-1, seq.samples_per_readout(), 3)
    return None


Drawn = list[tuple[Path, str]]


def _pulseq_file(seq_path: Path | None, bundle: Path | None) -> Path | None:
    """The Pulseq file whose waveforms to draw: ``seq_path`` when it is a .seq, else the bundle's export."""
    if seq_path is not None and seq_path.suffix.lower() == ".seq":
        return seq_path
    if bundle is not None and (bundle / "sequence.seq").is_file():
        return bundle / "sequence.seq"
    return None


def _image_figures(scaled: torch.Tensor, meas: torch.Tensor, fov: tuple[float, float, float], out: Path) -> Drawn:
    sim_slice, meas_slice = figures.central_slice(scaled), figures.central_slice(meas)
    mask = comparison_mask(torch.from_numpy(sim_slice), torch.from_numpy(meas_slice)).numpy()
    return [
        (figures.image_panels(sim_slice, meas_slice, mask, out / "images.png", fov_xy=fov[:2]),
         "simulated (× fitted scale), measured, difference and ratio (central slice, first frame; mm from the "
         "image centre)"),
        (figures.line_profiles(sim_slice, meas_slice, out / "profiles.png", fov_xy=fov[:2]),
         "line profiles through the image centre"),
    ]


def _signal_figure(sim: RawData, meas: RawData, scale: float, out: Path) -> Drawn:
    return [(figures.signal_curves(sim, meas, scale, out / "kspace_centre.png"),
             "k-space-centre signal of every readout over time")]


def _kspace_figure(recon: Recon, sim: RawData, meas: RawData, scale: float, out: Path) -> Drawn:
    sim_k, meas_k = kspace_plane(recon, sim), kspace_plane(recon, meas)
    where = "on the Cartesian grid" if meas_k.gridded else "readouts as acquired"
    return [(figures.kspace_panels(sim_k, meas_k, scale, out / "kspace.png"),
             f"log-magnitude k-space ({where}, RSS over coils, first frame) of the simulation × scale and the "
             "measurement, and their difference in decades")]


def _trajectory_figure(traj: torch.Tensor | None, out: Path) -> Drawn:
    if traj is None:
        return []
    return [(figures.trajectory(traj, out / "trajectory.png"), "k-space trajectory (measured data's)")]


def _waveform_figure(pulseq_file: Path | None, window: tuple[float, float] | None, out: Path) -> Drawn:
    if pulseq_file is None:
        return []
    waves = read_waveforms(pulseq_file, window)
    start, end = waves.window
    return [(figures.seq_waveforms(waves, out / "waveforms.png", title=pulseq_file.name),
             f"{pulseq_file.name} as the scanner plays it (read back with pypulseq): RF magnitude and phase, "
             f"Gx/Gy/Gz with their ramps, ADC windows; {start * 1e3:.4g}–{end * 1e3:.4g} ms")]


def _sequence_figure(seq: Sequence | None, out: Path) -> Drawn:
    if seq is None:
        return []
    return [(figures.sequence_diagram(seq, out / "sequence.png"),
             "sequence overview from mrbridge's event model (moments as flat steps, no RF shape): RF, gradients "
             "and ADC of the first repetitions with readouts; per-repetition flip angle and net moment")]


def _history_figure(bundle: Path | None, out: Path) -> Drawn:
    if bundle is None or not (bundle / "history.csv").is_file():
        return []
    rows = read_history(bundle / "history.csv")
    if not rows:
        return []
    return [(figures.optimization_history(rows, out / "history.png"),
             f"optimization history of {bundle.name}: loss terms and total loss, and the tracked parameters, per "
             "step")]


def _regions(meas: torch.Tensor, labels: torch.Tensor | None, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """SNR regions (z, y, x) bool: the object (measured magnitude > 10 % of max), then every tissue label."""
    first = meas.reshape(-1, *meas.shape[-3:])[0]
    regions = {"object (> 10 % of max)": first > 0.1 * float(first.max())}
    if labels is not None:
        for value in sorted(int(v) for v in labels.unique() if int(v) != 0):
            regions[names.get(value, f"label {value}")] = labels == value
    return regions


def _snr(recon: Recon, raws: tuple[RawData, RawData], recons: tuple[Image, Image],
         mags: tuple[torch.Tensor, torch.Tensor], regions: dict[str, torch.Tensor]) -> SnrReport:
    """SNR per region of both images; σ from each raw data's noise scan when it has one (:mod:`snr`)."""

    def on_grid(side: int) -> Callable[[RawData], torch.Tensor]:
        def reconstruct(raw: RawData) -> torch.Tensor:
            with torch.no_grad():
                image = recon(raw)
            pair = (image, recons[1]) if side == 0 else (recons[0], image)
            grid = common_grid(*pair)
            return (grid.sim if side == 0 else grid.meas).data.abs().float()
        return reconstruct

    changes = [noise_change(raws[side], on_grid(side), mags[side]) for side in (0, 1)]
    return roi_snr(mags[0], mags[1], regions, sim_change=changes[0], meas_change=changes[1])


def compare(
    sim_path: str | Path,
    meas_path: str | Path,
    out_dir: str | Path,
    *,
    seq_path: str | Path | None = None,
    bundle: str | Path | None = None,
    twin_path: str | None = None,
    system: str | Path = "generic3t",
    seq_window: tuple[float, float] | None = None,
    matrix: int | None = None,
) -> CompareResult:
    """Reconstruct ``sim_path`` and ``meas_path`` with the same Recon and write the comparison report.

    Parameters
    ----------
    sim_path: simulated raw data (ISMRMRD .h5, e.g. from ``mrbridge simulate``)
    meas_path: measured raw data, ISMRMRD .h5 or Siemens twix .dat (needs ``seq_path``, the .seq it ran)
    out_dir: report folder (created); ``index.html``, PNGs and ``metrics.json`` are written into it
    seq_path: the sequence (.seq: diagram and safety check on ``system``; mrbridge sequence .json: diagram)
    bundle: run bundle whose Recon (``recon.json`` + weights) to use; default ``Recon()`` (inverse FFT, RSS).
        Its ``sequence.json`` and ``safety.json`` are used when ``seq_path`` is not given.
    twin_path: the twin of the simulation ("builtin:NAME" or a twin .h5); its tissue labels give ROI statistics
    system: scanner preset name or system YAML for the safety check
    seq_window: (start, end) s of the .seq's waveforms to draw (default: two repetitions from the excitation
        before the first ADC, see :func:`mrbridge.report.waveforms.default_window`); drawn when a .seq is given
        or the bundle holds ``sequence.seq``
    matrix: compare at the resolution of an N × N grid: both raw data are band-limited to its k-space before the
        recon (:mod:`mrbridge.report.bandlimit`); a twin of N² voxels predicts no finer detail

    Returns the result with ``warnings`` (why the comparison means little: degenerate encoding, stripe images,
    objects that barely overlap, very different grids, a twin that is not the measured object) and ``notes``
    (resampling); both are also at the top of ``index.html`` and in ``metrics.json``.
    Raises InputError (one line) when the two images have no common grid (see :mod:`mrbridge.report.grid`).
    """
    out = Path(out_dir)
    seq_file = Path(seq_path) if seq_path is not None else None
    bundle_dir = Path(bundle) if bundle is not None else None
    pulseq_file = _pulseq_file(seq_file, bundle_dir)
    if seq_window is not None and pulseq_file is None:
        raise InputError(f"seq_window {seq_window}: there is no .seq to draw (give one with --seq, or a bundle "
                         "holding sequence.seq)")
    sim_raw = read_raw(sim_path)
    meas_raw = read_raw(meas_path, seq_file)
    limited = []
    if matrix is not None:
        sim_raw = band_limited(sim_raw, matrix, name=str(sim_path))
        meas_raw = band_limited(meas_raw, matrix, name=str(meas_path))
        limited = [f"both raw data band-limited to the k-space of a {matrix}×{matrix} grid over the field of view "
                   "(--matrix): compared at that resolution"]
    recon = Recon.load(bundle_dir) if bundle_dir is not None else Recon()
    recon.eval()
    with torch.no_grad():
        sim_recon, meas_recon = recon(sim_raw), recon(meas_raw)
    grid = common_grid(sim_recon, meas_recon, sim_name=str(sim_path), meas_name=str(meas_path))
    sim_image, meas_image = grid.sim, grid.meas
    sim_mag, meas_mag = sim_image.data.abs().float(), meas_image.data.abs().float()

    labels, names = None, {}
    if twin_path is not None:
        twin = open_twin(twin_path, matrix=meas_image.matrix[0])
        if twin.labels is not None:
            z, y, x = meas_mag.shape[-3:]
            labels = labels_on_grid(twin.labels, twin.fov, (z, y, x), meas_image.fov)
            names = dict(twin.label_names)
    spatial = "spectrum" not in (sim_recon.meta.get("method"), meas_recon.meta.get("method"))
    validity = assess(sim_mag, meas_mag, sim_raw=sim_raw, meas_raw=meas_raw, method=recon.config.method,
                      twin=twin_path if labels is not None else None, spatial=spatial)
    warnings = grid.warnings + validity.warnings
    role, role_notes = comparison_role(sim_raw, Path(meas_path))
    notes = role_notes + limited + grid.notes
    metrics, scaled = compare_images(sim_mag, meas_mag, labels=labels, names=names)
    metrics.dc_residual_sim = data_consistency(recon, sim_raw, sim_recon)
    metrics.dc_residual_meas = data_consistency(recon, meas_raw, meas_recon)
    metrics.dice, metrics.correlation = validity.dice, validity.correlation

    seq = _sequence(seq_file, bundle_dir)
    safety, safety_note = _safety(seq_file, bundle_dir, system)

    drawn = [
        *_image_figures(scaled, meas_mag, meas_image.fov, out),
        *_signal_figure(sim_raw, meas_raw, metrics.scale, out),
        *_kspace_figure(recon, sim_raw, meas_raw, metrics.scale, out),
        *_trajectory_figure(_trajectory(sim_raw, meas_raw, seq), out),
        *_waveform_figure(pulseq_file, seq_window, out),
        *_sequence_figure(seq, out),
        *_history_figure(bundle_dir, out),
        *guard_report(recon, meas_raw, meas_recon, out),  # learned recons: the hallucination guard
    ]
    snr = _snr(recon, (sim_raw, meas_raw), (sim_recon, meas_recon), (sim_mag, meas_mag),
               _regions(meas_mag, labels, names))

    files = [file_record("simulated raw data", sim_path), file_record("measured raw data", meas_path)]
    if seq_file is not None:
        files.append(file_record("sequence", seq_file))
    if bundle_dir is not None:
        files += [file_record(f"bundle {p.name}", p) for p in sorted(bundle_dir.iterdir())
                  if p.is_file() and p.name in ("recon.json", "recon.pt", "sequence.json", "safety.json",
                                                  "sequence.seq", "history.csv")]
    if twin_path is not None and Path(twin_path).is_file():
        files.append(file_record("twin", twin_path))
    raw_provenance = {"simulated": dict(sim_raw.provenance), "measured": dict(meas_raw.provenance)}
    recon_config = recon.config.model_dump_json()

    metrics_path = out / "metrics.json"
    record = {
        "metrics": asdict(metrics),
        "recon": recon.config.model_dump(mode="json"),
        "inputs": [asdict(f) for f in files],
        "provenance": raw_provenance,
        "versions": versions(),
        "safety": safety.model_dump(mode="json") if safety is not None else None,
        "images": {"shape": list(meas_image.data.shape), "fov_m": list(meas_image.fov),
                   "resampled_from": grid.resampled},
        "warnings": warnings,
        "role": role,
        "notes": notes,
        "roi_meaningful": validity.roi_meaningful,
        "snr": asdict(snr),
    }
    atomic_write_text(metrics_path, json.dumps(_finite(record), indent=2, allow_nan=False) + "\n")
    page = render_report(
        title=f"{Path(sim_path).name} vs {Path(meas_path).name}",
        heading=HEADINGS[role],
        metrics=metrics,
        figures=[(p.name, caption) for p, caption in drawn],
        safety=safety,
        safety_note=safety_note,
        files=files,
        raw_provenance=raw_provenance,
        recon_config=recon_config,
        warnings=warnings,
        notes=notes,
        roi_meaningful=validity.roi_meaningful,
        snr=snr,
    )
    index = out / "index.html"
    atomic_write_text(index, page)
    return CompareResult(out_dir=out, index=index, metrics_json=metrics_path, figures=[p for p, _ in drawn],
                         metrics=metrics, sim_image=sim_image, meas_image=meas_image, safety=safety, files=files,
                         warnings=warnings, notes=notes, snr=snr, role=role)

