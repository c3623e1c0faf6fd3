"""Protocol YAML: every shipped example loads; each user mistake is one line naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrbridge.errors import ConfigError, MrbridgeError
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import (
    BssfpProtocol,
    GreProtocol,
    IrGreProtocol,
    SpinEchoProtocol,
    TseProtocol,
    load_protocol,
    parse_protocol,
)
from tests.helpers import REPO

EXAMPLES = {
    "se.yaml": SpinEchoProtocol,
    "gre.yaml": GreProtocol,
    "tse.yaml": TseProtocol,
    "bssfp.yaml": BssfpProtocol,
    "irgre.yaml": IrGreProtocol,
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_shipped_examples_load_and_build(name: str) -> None:
    protocol = load_protocol(REPO / "protocols" / name)
    assert isinstance(protocol, EXAMPLES[name])
    seq = build(protocol)
    assert seq.adc_count == protocol.matrix**2
    assert seq.info.protocol == protocol.model_dump(mode="json")


def test_every_key_of_the_examples_is_spelled_out() -> None:
    """The examples are what users copy: each lists every key its schema knows."""
    for name, model in EXAMPLES.items():
        text = (REPO / "protocols" / name).read_text()
        keys = {line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")}
        assert keys == set(model.model_fields), name


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_protocol(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert isinstance(info.value, MrbridgeError)
    return message


def test_unknown_key(tmp_path: Path) -> None:
    message = _error(tmp_path, "kind: gre\nte_ms: 5\nflip_angel_deg: 15\n")
    assert "field 'flip_angel_deg' = 15: unknown key" in message
    assert "flip_angle_deg" in message  # the allowed keys are listed


def test_negative_te(tmp_path: Path) -> None:
    message = _error(tmp_path, "kind: se\nte_ms: -5\n")
    assert message.endswith("field 'te_ms' = -5: must be > 0")


def test_tr_shorter_than_the_readout(tmp_path: Path) -> None:
    message = _error(tmp_path, "kind: gre\nte_ms: 5\ntr_ms: 6\n")
    assert "field 'tr_ms' = 6" in message
    assert "6.55 ms" in message  # 5 ms + 31 dwells of 50 µs


def test_te_shorter_than_the_prephaser(tmp_path: Path) -> None:
    assert "field 'te_ms' = 1" in _error(tmp_path, "kind: gre\nte_ms: 1\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: gre\nmatrix: 63\n", "field 'matrix' = 63: must be even"),
        ("kind: gre\nmatrix: 4\n", "field 'matrix' = 4: must be ≥ 8"),
        ("kind: gre\nflip_angle_deg: 200\n", "field 'flip_angle_deg' = 200: must be ≤ 180"),
        ("kind: gre\nte_ms: five\n", "field 'te_ms' = 'five'"),
        ("kind: tse\norder: random\n", "field 'order' = 'random': must be one of 'linear' or 'centric'"),
        ("kind: tse\necho_train_length: 6\n", "field 'echo_train_length' = 6: must divide matrix = 64"),
        (
            "kind: tse\norder: linear\nte_ms: 30\n",
            "field 'te_ms' = 30: order 'linear' puts the centre on echo 5",
        ),
        ("kind: tse\norder: centric\nte_ms: 25\n", "field 'te_ms' = 25: must be a multiple"),
        ("kind: tse\ntr_ms: 80\n", "field 'tr_ms' = 80"),
        (
            "kind: irgre\nlines_per_inversion: 8\n",
            "field 'gre_tr_ms': is required when lines_per_inversion > 1",
        ),
        (
            "kind: irgre\nti_ms: 2999\n",
            "field 'tr_ms' = 3000.0: must be > ti_ms + te_ms + (matrix/2 − 1)·dwell = 3006 ms",
        ),
        ("kind: bssfp\ntr_ms: 1\n", "field 'tr_ms' = 1: must be > 2·(matrix/2 + 1)·dwell"),
        ("kind: fse\n", "field 'kind' = 'fse': must be one of 'se', 'gre'"),
        ("te_ms: 5\n", "field 'kind': required key is missing"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("kind: gre\nte_ms: [5\n", "not valid YAML at line"),
    ],
)
def test_mistakes_name_the_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in _error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_protocol(tmp_path / "absent.yaml")


def test_matrix_override_is_validated() -> None:
    protocol = parse_protocol({"kind": "gre"})
    assert build(protocol, matrix=16).info.matrix == (16, 16, 1)
    with pytest.raises(
        ConfigError, match=r"field 'te_ms' = 5\.0: must be > \(matrix/2 \+ 1\)·dwell = 6\.45 ms"
    ):
        build(protocol, matrix=256)


def test_defaults_are_the_spin_spin_echo() -> None:
    p = parse_protocol({"kind": "se"})
    assert (p.matrix, p.fov_mm, p.te_ms, p.tr_ms, p.dwell_us) == (64, 64, 40, 10_000, 100)
