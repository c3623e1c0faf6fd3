"""`show_twin`: a PNG of the maps with a summary that reports units and cleaning counts."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np

from mrbridge.twin.calibrate import calibrate
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.show import show_twin, summary_lines
from tests.twin.mapfiles import synthetic_maps


def test_show_writes_a_png_with_cleaning_counts(tmp_path: Path) -> None:
    maps = synthetic_maps()
    maps["t1"][1, 16, 10:13] = np.nan
    twin = calibrate(maps, voxel_mm=(5.0, 5.0, 5.0), matrix=24)
    lines = summary_lines(twin)
    text = "\n".join(lines)
    assert lines[0] == "24×24×3 voxels, FOV 160×160×15 mm, 1 coil(s)"
    assert "t1: ms (inferred)" in text
    assert "cleaning (mask): 3 masked, 0 clipped:" in text and "  nonfinite:t1: 3" in lines
    assert "resampling: [32, 32] → [24, 24]" in text
    png = tmp_path / "out" / "twin.png"
    show_twin(twin, png)
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not list(png.parent.glob(".*tmp"))  # written atomically: no temp file left


def test_show_handles_builtin_twins_with_coils(tmp_path: Path) -> None:
    twin = builtin("spin-brain", matrix=16, coils=2)
    assert "builtin: spin-brain" in "\n".join(summary_lines(twin))
    show_twin(twin, tmp_path / "spin.png")
    assert (tmp_path / "spin.png").stat().st_size > 10_000
