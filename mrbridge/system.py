"""System: the scanner's hardware and safety limits, loaded from calibration/systems/*.yaml.

YAML keys name their non-SI units (``max_grad_mt_per_m``); the properties return SI/Pulseq units
(gradient amplitude in Hz/m, slew in Hz/m/s, times in s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrbridge.errors import ConfigError, validation_message
from mrbridge.yamlfile import load_yaml

GAMMA_HZ_PER_T = 42.576e6  # 1H gyromagnetic ratio / 2π
SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "calibration" / "systems"


class SarCoil(BaseModel):
    """Energy model of one transmit coil (see :mod:`mrbridge.sequence.safety`).

    Absorbed power P = ``watts_per_ut2`` · ⟨|B1|²⟩ (µT², time average); SAR of the exposed region =
    P / (``exposed_mass_fraction`` · patient mass), whole-body SAR = P / patient mass.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    watts_per_ut2: float = Field(gt=0, description="W absorbed per µT² of mean-square B1")
    exposed_mass_fraction: float = Field(gt=0, le=1, description="exposed mass / patient mass")


class IecLimits(BaseModel):
    """IEC 60601-2-33 normal operating mode limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    head_sar_w_per_kg: float = Field(default=3.2, gt=0)  # IEC 60601-2-33 Table 105, normal mode, 6 min
    whole_body_sar_w_per_kg: float = Field(default=2.0, gt=0)  # idem
    short_term_factor: float = Field(default=2.0, ge=1)  # 10-s averages may reach 2× the 6-min limits
    long_window_s: float = Field(default=360.0, gt=0)
    short_window_s: float = Field(default=10.0, gt=0)
    max_b1rms_ut: float | None = Field(default=None, gt=0)  # scanner-specific B1+rms cap, None = not checked
    dbdt_rheobase_t_per_s: float = Field(default=20.0, gt=0)  # IEC 60601-2-33 201.12.4.105: rb = 20 T/s
    dbdt_chronaxie_ms: float = Field(default=0.36, gt=0)  # idem, c = 0.36 ms
    dbdt_normal_mode_fraction: float = Field(default=0.8, gt=0, le=1)  # normal mode: 80 % of mean threshold
    dbdt_radius_m: float = Field(default=0.2, gt=0)  # dB/dt evaluated on the 0.2-m-radius compliance cylinder


class PnsAxis(BaseModel):
    """SAFE model parameters of one gradient axis (Szczepankiewicz & Witzel); times in ms."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tau1: float
    tau2: float
    tau3: float
    a1: float
    a2: float
    a3: float
    stim_limit: float  # T/m/s
    stim_thresh: float  # T/m/s
    g_scale: float


class PnsSafe(BaseModel):
    """SAFE PNS model of the gradient system, as pypulseq ``calculate_pns`` expects it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    x: PnsAxis
    y: PnsAxis
    z: PnsAxis


def _default_sar() -> dict[Literal["head", "body"], SarCoil]:
    return {
        "head": SarCoil(watts_per_ut2=2.1, exposed_mass_fraction=0.08),
        "body": SarCoil(watts_per_ut2=22.5, exposed_mass_fraction=1.0),
    }


class System(BaseModel):
    """Hardware limits of one scanner."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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
    sar: dict[Literal["head", "body"], SarCoil] = Field(default_factory=_default_sar)
    iec: IecLimits = Field(default_factory=IecLimits)
    pns_safe: PnsSafe | None = None

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
        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of limits, got {type(data).__name__}")
        try:
            return cls(**data)
        except ValidationError as err:
            raise ConfigError(validation_message(err, str(path))) from None
