"""Outputs are refused before any work when they would overwrite an input or cannot be written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mrbridge.errors import InputError
from mrbridge.outputs import check_outputs


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "meas.dat"
    path.write_bytes(b"measured")
    return path


def test_same_file_symlink_and_hard_link_are_refused(tmp_path: Path, data: Path) -> None:
    link = tmp_path / "link.dat"
    link.symlink_to(data)
    hard = tmp_path / "hard.dat"
    os.link(data, hard)
    for out in (data, link, hard, tmp_path / "sub" / ".." / "meas.dat"):
        with pytest.raises(InputError, match=r"-o .* would overwrite the input RAW \(.*meas\.dat\)"):
            check_outputs({"-o": out}, {"RAW": data})
    assert data.read_bytes() == b"measured"


def test_a_new_file_beside_the_input_is_fine(tmp_path: Path, data: Path) -> None:
    check_outputs({"-o": tmp_path / "new" / "deeper" / "img.h5"}, {"RAW": data, "--twin": "builtin:brain"})


def test_output_under_a_file_or_a_folder_or_proc_is_refused(tmp_path: Path, data: Path) -> None:
    with pytest.raises(InputError, match=r"meas\.dat is a file, not a folder"):
        check_outputs({"-o": data / "img.h5"}, {})
    with pytest.raises(InputError, match="is a folder; expected a file name"):
        check_outputs({"-o": tmp_path}, {})
    with pytest.raises(InputError, match="is not writable"):
        check_outputs({"-o": Path("/proc/mrbridge/img.h5")}, {})


def test_folder_outputs_must_be_folders(tmp_path: Path, data: Path) -> None:
    check_outputs({"-o": tmp_path / "report"}, {"--meas": data}, folders=["-o"])
    with pytest.raises(InputError, match="is a file; expected a folder"):
        check_outputs({"-o": data}, {}, folders=["-o"])
