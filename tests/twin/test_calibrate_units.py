"""Unit inference and conversion of measured maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrbridge.errors import InputError
from mrbridge.twin.units import GAMMA_BAR_HZ_PER_T, decide_unit, parse_unit, to_si, unit_from_meta

rng = np.random.default_rng(0)
T1_S = rng.uniform(0.6, 1.6, 500)
T2_S = rng.uniform(0.05, 0.15, 500)
B0_HZ = rng.uniform(-150, 150, 500)
B1 = rng.uniform(0.8, 1.2, 500)


@pytest.mark.parametrize(
    ("kind", "values", "unit"),
    [("t1", T1_S, "s"), ("t1", T1_S * 1e3, "ms"), ("t2", T2_S, "s"), ("t2", T2_S * 1e3, "ms"),
     ("t2star", T2_S * 500, "ms"), ("b1", B1, "relative")],
)
def test_unambiguous_values_infer_their_unit(kind: str, values: np.ndarray, unit: str) -> None:
    choice = decide_unit(kind, values, {})
    assert choice.unit == unit
    assert choice.how.startswith("inferred")


def test_b0_in_hz_is_assumed_and_says_so() -> None:
    choice = decide_unit("b0", B0_HZ, {})
    assert choice.unit == "Hz"
    assert "--b0-unit rad/s" in choice.how


@pytest.mark.parametrize(
    ("kind", "values", "meta", "expect"),
    [
        ("t2", np.full(10, 2.5), {}, r"fits s, ms: state --t2-unit s or --t2-unit ms"),
        ("b0", B0_HZ / 100, {}, r"fits both Hz and ppm: state --b0-unit Hz or --b0-unit ppm"),
        ("b0", B0_HZ * 2 * math.pi * 3, {}, r"implausible in Hz.*--b0-unit rad/s"),
        ("b1", B1 * 100, {}, r"fits percent, deg: state --b1-unit percent or --b1-unit deg \(with --b1-nominal-deg\)"),
        ("t1", np.full(10, 20.0), {}, r"implausible in every unit"),
    ],
)
def test_ambiguous_or_implausible_values_say_how_to_state_the_unit(
    kind: str, values: np.ndarray, meta: dict[str, str], expect: str
) -> None:
    with pytest.raises(InputError, match=rf"maps\.nii: map '{kind}'.*{expect}"):
        decide_unit(kind, values, meta, source="maps.nii")


def test_stated_units_are_validated_and_converted() -> None:
    with pytest.raises(InputError, match=r"stated unit 'ms'.*look like s: state --t1-unit s"):
        decide_unit("t1", T1_S, {}, stated="ms")
    with pytest.raises(InputError, match="unit 'furlongs' is unknown"):
        decide_unit("t1", T1_S, {}, stated="furlongs")
    assert decide_unit("b0", B0_HZ * 2 * math.pi, {}, stated="rad/s").unit == "rad/s"
    np.testing.assert_allclose(to_si("b0", B0_HZ * 2 * math.pi, "rad/s"), B0_HZ)
    np.testing.assert_allclose(to_si("b1", B1 * 100, "percent"), B1)
    np.testing.assert_allclose(to_si("t2", T2_S * 1e3, "ms"), T2_S)


def test_ppm_needs_the_field_strength() -> None:
    ppm = B0_HZ / (GAMMA_BAR_HZ_PER_T * 3e-6)
    assert decide_unit("b0", ppm, {}, stated="ppm").unit == "ppm"
    np.testing.assert_allclose(to_si("b0", ppm, "ppm", field_strength_t=3.0), B0_HZ)
    with pytest.raises(InputError, match=r"ppm needs the field strength.*--field-strength"):
        to_si("b0", ppm, "ppm", source="b0.nii")
    # 1 ppm at 3 T is 127.7 Hz
    assert float(to_si("b0", np.array(1.0), "ppm", field_strength_t=3.0)) == pytest.approx(127.73, abs=0.01)


def test_flip_angle_b1_needs_the_nominal_angle() -> None:
    measured = B1 * 60.0  # 60° nominal: 60 could as well be 60 %
    with pytest.raises(InputError, match="fits percent, deg"):
        decide_unit("b1", measured, {}, nominal_flip_deg=60.0)
    assert decide_unit("b1", measured, {}, stated="degrees", nominal_flip_deg=60.0).unit == "deg"
    np.testing.assert_allclose(to_si("b1", measured, "deg", nominal_flip_deg=60.0), B1)
    small = B1 * 10.0  # 10° nominal: 10 % would be B1 = 0.1, implausible
    assert decide_unit("b1", small, {}, nominal_flip_deg=10.0).unit == "deg"
    with pytest.raises(InputError, match=r"nominal angle.*--b1-nominal-deg"):
        to_si("b1", measured, "deg")


def test_metadata_states_units() -> None:
    assert unit_from_meta("t1", {"name": "T1_ms"}) == ("ms", "name 'T1_ms'")
    assert unit_from_meta("b0", {"description": "B0 map [rad/s]"}) == ("rad/s", "description 'B0 map [rad/s]'")
    assert unit_from_meta("b1", {"unit": "%"}) == ("percent", "unit field")
    assert unit_from_meta("t1", {"unit": "Hz"}) is None  # not a T1 unit: ignored, values decide
    choice = decide_unit("b0", B0_HZ * 2 * math.pi, {"description": "fieldmap (rad/s)"})
    assert (choice.unit, choice.how) == ("rad/s", "metadata: description 'fieldmap (rad/s)'")
    assert parse_unit("Milliseconds") == "ms" and parse_unit("parsecs") is None
