"""The docs site cannot rot: every tutorial script runs (at a small size), every page's snippet exists, and the
site builds with ``mkdocs build --strict`` (when mkdocs is installed: the ``dev`` extra)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mrbridge.raw.mrd import read_mrd
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO, shared_data

DOCS = REPO / "docs"
TUTORIALS = DOCS / "tutorials"
SNIPPET = re.compile(r'--8<-- "([^":]+)(?::([\w-]+))?"')


def tutorial(name: str) -> ModuleType:
    """Import ``docs/tutorials/NAME.py`` as a module (its ``main`` is what the page shows)."""
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_1_simulates_reconstructs_and_differentiates(tmp_path: Path) -> None:
    result = tutorial("01_simulate_and_reconstruct").main(matrix=16, out=tmp_path)
    raw = read_mrd(tmp_path / "raw.h5")
    assert tuple(raw.kdata.shape) == (4, 16, 16)
    assert (tmp_path / "image.png").stat().st_size > 1000
    assert result["image_max"] > 0 and result["signal"] > 0
    assert 0 < result["max_gradient"] < float("inf")  # the flip angles move the image


def test_tutorial_2_calibrates_the_twin_in_si(tmp_path: Path) -> None:
    result = tutorial("02_calibrate_twin").main(matrix=16, out=tmp_path)
    truth = builtin("brain", matrix=16)
    tissue = truth.pd[0] > 0
    # maps written in ms (T1, T2) and percent (B1) come back in s and as a ratio: the units were decided right
    assert result["t1_median_s"] == pytest.approx(float(truth.t1[0][tissue].median()), rel=1e-3)
    assert result["t2_median_s"] == pytest.approx(float(truth.t2[0][tissue].median()), rel=1e-3)
    assert result["b1_median"] == pytest.approx(float(truth.b1[0][tissue].median()), rel=1e-3)
    assert (tmp_path / "twin.h5").is_file() and (tmp_path / "twin.png").stat().st_size > 10_000
    assert result["image_max"] > 0


@pytest.mark.slow
def test_tutorial_3_optimizes_spin_and_mrzero(tmp_path: Path) -> None:
    result = tutorial("03_optimize_sequence").main(matrix=8, out=tmp_path)
    assert result["spin_angle"] > 40  # from 30° toward 90°
    assert result["spin_val_after"] < result["spin_val_before"]
    assert result["gre_nrmse_after"] < 0.8 * result["gre_nrmse_before"]
    for bundle in ("spin", "gre0"):
        assert (tmp_path / bundle / "sequence.json").is_file() and (tmp_path / bundle / "history.csv").is_file()


def test_tutorial_4_exports_safely_and_refuses_the_unsafe(tmp_path: Path) -> None:
    result = tutorial("04_export_and_safety").main(matrix=16, out=tmp_path)
    assert result["timing_ok"] == 1.0 and result["failures"] == 0.0
    assert result["refused"] >= 1  # the TSE with 1-ms refocusing pulses exceeds the Prisma's peak B1
    assert 0 < result["peak_b1_ut"] < 20.0
    assert (tmp_path / "se.seq").is_file() and (tmp_path / "safety.json").is_file()
    assert result["adc_windows"] >= 1 and (tmp_path / "waveforms.png").stat().st_size > 10_000


def test_tutorial_7_the_gadget_returns_the_local_recon(tmp_path: Path) -> None:
    result = tutorial("07_gadgetron").main(matrix=16, out=tmp_path)
    assert result["images"] == 1.0
    assert result["difference"] < 1e-5


@pytest.mark.slow
def test_tutorial_8_two_processes_take_the_step_of_one(tmp_path: Path) -> None:
    result = tutorial("08_torchrun").main(processes=2, out=tmp_path)
    assert result["world"] == 2.0
    assert result["angle_one"] != 30.0 and result["angle_many"] == pytest.approx(result["angle_one"], rel=1e-4)


def test_tutorial_5_reconstructs_the_real_prisma_gre(tmp_path: Path) -> None:
    dat = shared_data("11_from_GRE_to_EPI__01_GRE.dat")
    seq = shared_data("11_from_GRE_to_EPI__01_GRE.seq")
    result = tutorial("05_real_twix").main(dat, seq, out=tmp_path)
    assert (result["rows"], result["columns"]) == (256, 256)
    assert result["centre_to_border"] > 5  # the phantom stands out of the noise: lines in the right order
    assert (tmp_path / "image.png").stat().st_size > 1000


def test_tutorial_5_without_data_says_where_to_get_it(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(TUTORIALS / "05_real_twix.py"), "--dat", str(tmp_path / "no.dat"),
                           "--seq", str(tmp_path / "no.seq"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "github.com/pulseq/tutorials" in done.stderr and "--dat" in done.stderr
    assert "Traceback" not in done.stderr


def test_tutorial_9_refines_from_the_3_echo_scan_and_predicts_the_other(tmp_path: Path) -> None:
    data = shared_data("11_from_GRE_to_EPI__01_GRE.dat").parent
    result = tutorial("09_refine_and_predict").main(data, matrix=16, iterations=3, out=tmp_path)
    assert result["prediction"] == 1.0 and result["correlation"] > 0.9
    assert (tmp_path / "refined" / "report" / "index.html").is_file()
    assert (tmp_path / "prediction" / "index.html").is_file()


def test_tutorial_6_compares_and_sees_the_b1_error(tmp_path: Path) -> None:
    result = tutorial("06_compare").main(matrix=16, out=tmp_path)
    assert (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "report" / "metrics.json").is_file()
    assert result["warnings"] == 0
    assert 0.02 < result["nrmse"] < 0.5  # B1+ 10 % low and noise: close, not equal
    assert result["ssim"] > 0.5


def test_every_snippet_and_page_exists_and_every_tutorial_script_is_shown() -> None:
    shown: set[Path] = set()
    for page in DOCS.rglob("*.md"):
        for path, section in SNIPPET.findall(page.read_text()):
            source = REPO / path
            assert source.is_file(), f"{page}: snippet {path} missing"
            shown.add(source)
            if section:
                text = source.read_text()
                assert f"--8<-- [start:{section}]" in text and f"--8<-- [end:{section}]" in text, (page, section)
    assert set(TUTORIALS.glob("*.py")) <= shown

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))

    def pages(nav: object) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        if isinstance(nav, list):
            return [p for item in nav for p in pages(item)]
        return []

    listed = pages(config["nav"])
    assert all((DOCS / p).is_file() for p in listed), listed
    assert {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} == set(listed)


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs not installed (pip install -e '.[dev]')")
    done = subprocess.run([mkdocs, "build", "--strict", "--quiet", "-d", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr + done.stdout
    index = (tmp_path / "site" / "index.html").read_text()
    assert "mrbridge" in index and "fonts.googleapis" not in index  # offline: no web fonts
    api = (tmp_path / "site" / "api" / "sequence" / "index.html").read_text()
    assert "from_protocol" in api and "from_seq" in api  # generated from the docstrings
    page = (tmp_path / "site" / "tutorials" / "01_simulate_and_reconstruct" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)  # highlighted code is split into spans
    assert 'mb.Twin.builtin("brain", matrix=matrix, coils=4)' in text.replace("&quot;", '"')  # the script's code
    assert "[start:" not in text and "8&lt;" not in text  # without the section markers
