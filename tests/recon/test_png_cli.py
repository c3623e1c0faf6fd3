"""`mrbridge recon --png`: a figure with mm axes and a colorbar; `--plain`: the bare grayscale image."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np

from mrbridge.raw.mrd import write_mrd
from mrbridge.recon.image_io import PNG_MIN_WIDTH
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO
from tests.test_cli import run_cli


def test_recon_png_is_a_figure_and_plain_is_the_bare_image(tmp_path: Path) -> None:
    write_mrd(simulate(build(load_protocol(REPO / "protocols" / "gre.yaml"), matrix=16), builtin("brain", matrix=16)),
              tmp_path / "raw.h5")
    for name, extra in (("figure.png", []), ("plain.png", ["--plain"])):
        done = run_cli("recon", str(tmp_path / "raw.h5"), "-o", str(tmp_path / f"{name}.h5"), "--png",
                       str(tmp_path / name), *extra)
        assert done.returncode == 0, done.stderr
    plain = matplotlib.image.imread(tmp_path / "plain.png")
    assert plain.shape[:2] == (PNG_MIN_WIDTH, PNG_MIN_WIDTH)  # 16² enlarged by 16: only the image
    figure = matplotlib.image.imread(tmp_path / "figure.png")[..., :3]
    assert figure.shape[1] > plain.shape[1] + 100  # axes, labels and the colorbar beside the image
    white = (figure > 0.99).all(axis=-1)
    assert white.mean() > 0.2  # the figure's margins, where the plain image has none
    assert not np.allclose(figure.std(), 0.0)
