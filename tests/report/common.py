"""Shared pieces of the report tests: headless Chromium and a small known-perturbation pair."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--virtual-time-budget=10000", "--dump-dom")


def chromium_dom(page: Path) -> str:
    """The DOM of ``page`` after its load event, rendered by headless Chromium (skips when not installed)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless check needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="mrbridge-chromium-") as profile:
        done = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.resolve().as_uri()],
                              capture_output=True, timeout=120, check=True)
    return done.stdout.decode()


def images_loaded(dom: str) -> tuple[int, int]:
    """(images with naturalWidth > 0, images) as the page's load script recorded them."""
    found = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert found, "the page's load script did not run"
    return int(found.group(1)), int(found.group(2))


def chromium_screenshot(page: Path, png: Path, *, size: tuple[int, int] = (1400, 6000)) -> Path:
    """A PNG of ``page`` (width, height pixels) rendered by headless Chromium (skips when not installed)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless check needs Debian's chromium (apt-get install chromium)")
    flags = [f for f in CHROMIUM_FLAGS if f != "--dump-dom"]
    with tempfile.TemporaryDirectory(prefix="mrbridge-chromium-") as profile:
        subprocess.run([browser, *flags, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        f"--screenshot={png}", "--hide-scrollbars", page.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    assert png.is_file(), f"chromium wrote no screenshot of {page}"
    return png
