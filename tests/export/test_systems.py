"""Scanner presets: they load, carry SI limits, and every limit names its source."""

from __future__ import annotations

import pytest

from mrbridge.errors import ConfigError
from mrbridge.system import SYSTEMS_DIR, System

LIMIT_KEYS = ("b0_t", "max_grad_mt_per_m", "max_slew_t_per_m_per_s", "grad_raster_us", "rf_raster_us",
              "adc_raster_us", "rf_dead_time_us", "rf_ringdown_time_us", "adc_dead_time_us", "max_b1_ut")


@pytest.mark.parametrize(("name", "grad", "slew"), [("prisma", 80, 200), ("vida", 60, 200), ("skyra", 45, 200)])
def test_siemens_presets(name: str, grad: float, slew: float) -> None:
    system = System.load(name)
    assert (system.max_grad_mt_per_m, system.max_slew_t_per_m_per_s) == (grad, slew)
    assert system.max_grad == pytest.approx(grad * 1e-3 * 42.576e6)
    assert system.max_slew == pytest.approx(slew * 42.576e6)
    assert (system.grad_raster_us, system.rf_raster_us, system.adc_raster_us, system.block_raster_us) == \
        (10, 1, 0.1, 10)
    assert system.sar["head"].exposed_mass_fraction < system.sar["body"].exposed_mass_fraction
    assert system.iec.head_sar_w_per_kg == 3.2 and system.iec.whole_body_sar_w_per_kg == 2.0


@pytest.mark.parametrize("name", ["generic3t", "prisma", "vida", "skyra"])
def test_every_limit_has_a_source_comment(name: str) -> None:
    lines = (SYSTEMS_DIR / f"{name}.yaml").read_text().splitlines()
    for key in LIMIT_KEYS:
        line = next(ln for ln in lines if ln.startswith(f"{key}:"))
        assert "#" in line and len(line.split("#", 1)[1].strip()) > 5, line


def test_bad_sar_coil_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nb0_t: 3\nmax_grad_mt_per_m: 40\nmax_slew_t_per_m_per_s: 150\n"
                    "sar:\n  knee:\n    watts_per_ut2: 1\n    exposed_mass_fraction: 0.1\n")
    with pytest.raises(ConfigError, match="sar"):
        System.load(path)
