"""The demo `make demo` runs: simulate GRE and SE on the built-in brain, write raw data and images."""

from __future__ import annotations

from pathlib import Path

from mrbridge.raw.mrd import read_mrd, write_mrd
from mrbridge.recon.image_io import write_png
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol, parse_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"


def run_demo(folder: str | Path, *, matrix: int = 64, noise: float = 0.005, seed: int = 0) -> list[Path]:
    """Simulate the GRE and SE protocols on ``builtin:brain`` with 4 coils, write ``<name>.h5`` (ISMRMRD) and
    ``<name>.png`` (inverse FFT of the file just written, root-sum-of-squares over coils) into ``folder``.

    SE runs at the twin's FOV instead of SPIN's 64 mm so the head does not fold over.
    Returns the paths written.
    """
    folder = Path(folder)
    twin = builtin("brain", matrix=matrix, coils=4)
    fov_mm = round(twin.fov[0] * 1e3, 3)
    se = load_protocol(PROTOCOLS / "se.yaml").model_dump()
    protocols = {
        "gre": load_protocol(PROTOCOLS / "gre.yaml"),
        "se": parse_protocol({**se, "fov_mm": fov_mm}, source=str(PROTOCOLS / "se.yaml")),
    }
    recon = Recon(ReconConfig(method="fft"))
    written = []
    for name, protocol in protocols.items():
        raw = simulate(build(protocol, matrix=matrix), twin, noise=noise, seed=seed)
        raw.provenance.update({"twin": "builtin:brain", "seed": str(seed), "protocol": name})
        raw_path, png_path = folder / f"{name}.h5", folder / f"{name}.png"
        write_mrd(raw, raw_path)
        write_png(recon(read_mrd(raw_path)), png_path)
        written += [raw_path, png_path]
    return written
