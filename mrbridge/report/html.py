"""The static report page: jinja2 template ``templates/report.html.j2``, PNGs beside it, no network needed."""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from mrbridge.report.metrics import Metrics
from mrbridge.report.snr import NEIGHBOUR_DIFFERENCE, NOISE_SCAN, SnrReport
from mrbridge.sequence.safety import SafetyReport

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_PACKAGES = ("mrbridge", "torch", "numpy", "ismrmrd", "pypulseq", "twixtools", "matplotlib", "jinja2")


@dataclass
class FileRecord:
    """One input file of the report."""

    role: str
    path: str
    sha256: str


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(role: str, path: str | Path) -> FileRecord:
    """Role, absolute path and hash of an input file."""
    return FileRecord(role=role, path=str(Path(path).resolve()), sha256=sha256(path))


def versions() -> dict[str, str]:
    """Python and the versions of the packages a report depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def metric_rows(metrics: Metrics) -> list[dict[str, str]]:
    """Rows (name, formatted value, meaning) of the numbers table."""
    return [
        {"name": "scale", "value": _number(metrics.scale, 6),
         "meaning": "fitted s: measured ≈ s × simulated (least squares over the mask)"},
        {"name": "NRMSE", "value": _number(metrics.nrmse),
         "meaning": f"‖meas − s·sim‖ / ‖meas‖ over the mask ({metrics.mask_voxels} voxels > 10 % of max)"},
        {"name": "SSIM", "value": _number(metrics.ssim), "meaning": "structural similarity (1 = identical)"},
        {"name": "PSNR", "value": _number(metrics.psnr_db) + " dB", "meaning": "peak signal-to-noise ratio"},
        {"name": "data consistency (sim)", "value": _number(metrics.dc_residual_sim),
         "meaning": "‖E x − y‖ / ‖y‖ of the simulated image against its own k-space"},
        {"name": "data consistency (meas)", "value": _number(metrics.dc_residual_meas),
         "meaning": "‖E x − y‖ / ‖y‖ of the measured image against the measured k-space"},
        {"name": "object overlap (Dice)", "value": _number(metrics.dice, 3),
         "meaning": "2|A∩B| / (|A|+|B|) of the simulated and measured object masks (1 = same outline)"},
        {"name": "correlation", "value": _number(metrics.correlation, 3),
         "meaning": "Pearson correlation of the two magnitudes inside the mask"},
    ]


def render_report(
    *,
    title: str,
    heading: str = "Simulation vs measurement",
    metrics: Metrics,
    figures: list[tuple[str, str]],
    safety: SafetyReport | None,
    safety_note: str,
    files: list[FileRecord],
    raw_provenance: dict[str, dict[str, str]],
    recon_config: str,
    warnings: list[str] | None = None,
    notes: list[str] | None = None,
    roi_meaningful: bool = True,
    snr: SnrReport | None = None,
) -> str:
    """The HTML page. ``figures``: (file name relative to the page, caption); ``heading`` names what the
    simulation is (a prediction of a held-out scan, a refined twin's fit, a simulation).

    ``warnings`` (why the comparison means little) head the page in a visible block, ``notes`` (what was done to
    compare, e.g. resampling) follow it; ``roi_meaningful=False`` marks the tissue table as not meaningful;
    ``snr`` fills the SNR table, each image's method stated.
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = env.get_template("report.html.j2")
    return template.render(
        title=title,
        heading=heading,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        versions=versions(),
        recon_config=recon_config,
        metric_rows=metric_rows(metrics),
        roi=metrics.roi,
        figures=[{"file": f, "caption": c} for f, c in figures],
        safety=safety.model_dump() if safety is not None else None,
        safety_note=safety_note,
        files=files,
        raw_provenance=raw_provenance,
        warnings=list(warnings or []),
        notes=list(notes or []),
        roi_meaningful=roi_meaningful,
        snr=snr_rows(snr) if snr is not None else None,
    )


#: what each SNR method means, as the page states it
SNR_METHODS = {
    NOISE_SCAN: "σ from the raw data's noise scan: noise with its coil covariance added to the samples and "
                "reconstructed by the same recon (assumes the noise scan's bandwidth is the imaging one)",
    NEIGHBOUR_DIFFERENCE: "no noise scan: σ = std of neighbouring-voxel differences / √2 inside the region "
                          "(edges and texture count as noise, so this underestimates the SNR)",
}


def snr_rows(snr: SnrReport) -> dict[str, object]:
    """The SNR table: rows (region, voxels, formatted SNR of both images) and each image's method."""
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    return {
        "rows": [{"name": r.name, "voxels": r.voxels, "sim": fmt(r.sim), "meas": fmt(r.meas)} for r in snr.rows],
        "sim_method": snr.sim_method, "meas_method": snr.meas_method,
        "sim_meaning": SNR_METHODS[snr.sim_method], "meas_meaning": SNR_METHODS[snr.meas_method],
    }
