"""System: the scanner's hardware and safety limits, loaded from calibration/systems/*.yaml.

YAML keys name their non-SI units (``max_grad_mt_per_m``); the properties return SI/Pulseq units
(gradient amplitude in Hz/m, slew in Hz/m/s, times in s).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrbridge.errors import ConfigError

GAMMA_HZ_PER_T = 42.576e6  # 1H gyromagnetic ratio / 2π
SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "calibration" / "systems"


class System(BaseModel):
    """Hardware limits of one scanner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    b0_t: float = Field(gt=0, le=12)
    gamma_hz_per_t: float = GAMMA_HZ_PER_T
    max_grad_mt_per_m: float = Field(gt=0, le=200)
    max_slew_t_per_m_per_s: float = Field(gt=0, le=500)
    grad_raster_us: float = Field(default=10.0, gt=0)
    rf_raster_us: float = Field(default=1.0, gt=0)
    adc_raster_us: float = Field(default=0.1, gt=0)
    block_raster_us: float = Field(default=10.0, gt=0)
    rf_dead_time_us: float = Field(default=100.0, ge=0)
    rf_ringdown_time_us: float = Field(default=30.0, ge=0)
    adc_dead_time_us: float = Field(default=10.0, ge=0)
    max_b1_ut: float = Field(default=20.0, gt=0)

    @property
    def max_grad(self) -> float:
        """Hz/m."""
        return self.max_grad_mt_per_m * 1e-3 * self.gamma_hz_per_t

    @property
    def max_slew(self) -> float:
        """Hz/m/s."""
        return self.max_slew_t_per_m_per_s * self.gamma_hz_per_t

    @property
    def larmor_hz(self) -> float:
        return self.b0_t * self.gamma_hz_per_t

    @classmethod
    def load(cls, path_or_name: str | Path) -> System:
        """Load a system YAML by path, or by preset name (``generic3t``, ``prisma``…)."""
        path = Path(path_or_name)
        if not path.exists() and (SYSTEMS_DIR / f"{path_or_name}.yaml").exists():
            path = SYSTEMS_DIR / f"{path_or_name}.yaml"
        if not path.exists():
            presets = ", ".join(sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml")))
            raise ConfigError(f"{path}: no such system file (presets: {presets})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
            return cls(**data)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(p) for p in e["loc"])
            raise ConfigError(f"{path}: field '{field}' = {e.get('input')!r}: {e['msg']}") from None
