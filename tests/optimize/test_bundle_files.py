"""Incomplete or inconsistent bundles are refused naming the file at fault (what ``recon --with``, ``compare --with``
and the gadget load); a bundle as Recon.save writes it loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.recon.pipeline import Recon, ReconConfig
from tests.helpers import REPO
from tests.optimize.test_runlock import gre_raw


def test_a_bundle_without_weights_is_refused_unless_its_config_says_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "recon.json").write_text("{}")
    with pytest.raises(InputError, match=r"recon\.pt: missing; .*names \[\]"):
        Recon.load(tmp_path)  # {} and no weights: nothing says which recon was meant
    (tmp_path / "recon.json").write_text(json.dumps({"method": "cg"}))
    with pytest.raises(InputError, match=r"recon\.pt: missing"):
        Recon.load(tmp_path)
    (tmp_path / "recon.json").write_text(json.dumps({"method": "cg", "network": "none", "iterations": 3}))
    assert Recon.load(tmp_path).config == ReconConfig(method="cg", iterations=3)  # says it all, needs no weights

    Recon(ReconConfig(method="adjoint")).save(tmp_path)  # as written by mrbridge: both files
    (tmp_path / "recon.json").write_text("{}")  # with weights, {} is the default config they must fit
    assert Recon.load(tmp_path).config == ReconConfig()
    (tmp_path / "recon.json").unlink()
    with pytest.raises(InputError, match=r"recon\.json: missing"):
        Recon.load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not torch at all" * 8, None])
def test_unreadable_weights_are_one_line_naming_recon_pt(tmp_path: Path, content: bytes | None) -> None:
    Recon(ReconConfig(network="cnn", network_features=4, network_depth=2)).save(tmp_path)
    if content is None:
        torch.save(torch.zeros(3), tmp_path / "recon.pt")  # a tensor, not a state dict
    else:
        (tmp_path / "recon.pt").write_bytes(content)
    with pytest.raises(InputError, match=r"recon\.pt: ") as info:
        Recon.load(tmp_path)
    assert len(str(info.value).splitlines()) == 1


def test_recon_with_an_empty_config_and_no_weights_exits_2(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "recon.json").write_text("{}")
    raw = gre_raw(tmp_path / "raw.h5")
    done = subprocess.run([sys.executable, "-m", "mrbridge", "recon", str(raw), "--with", str(bundle), "-o",
                           str(tmp_path / "image.h5")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(bundle / "recon.pt") in done.stderr
    assert not (tmp_path / "image.h5").exists()
