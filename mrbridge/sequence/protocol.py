"""Protocol files: the YAML a user writes to describe a sequence, validated by pydantic.

Each file has a ``kind`` (``se``, ``gre``, ``tse``, ``bssfp``, ``irgre``, and the non-Cartesian or line-train
kinds ``epi``, ``radial``, ``spiral``) that selects its schema. Keys name
their non-SI unit (``te_ms``, ``fov_mm``, ``dwell_us``…); unknown keys are errors. Some kinds set the
durations of the RF shapes the exporter plays (``rf_ms``, ``refocusing_rf_ms``, ``inversion_rf_ms``: each
pulse's ``PulseShape.duration``, 1 ms otherwise); the model's pulses are instantaneous. Timing is checked
against the Cartesian readout of :mod:`mrbridge.sequence.builders`: ``matrix`` samples of ``dwell_us`` each,
the echo (k = 0) ``matrix/2 + 1`` dwells after the readout starts and ``matrix/2 − 1`` dwells before it ends.
EPI and spiral timing depends on gradient limits: their ``system`` key names a preset of calibration/systems
(``generic3t`` by default) and their timing is checked against the gradients
:mod:`mrbridge.sequence.builders_epi` and :mod:`mrbridge.sequence.builders_noncartesian` design for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from mrbridge.errors import ConfigError
from mrbridge.sequence.undersampling import Undersampling, acs_problem, lines_problem
from mrbridge.system import SYSTEMS_DIR
from mrbridge.yamlfile import load_yaml

KINDS = ("se", "gre", "tse", "bssfp", "irgre", "epi", "radial", "spiral")
#: crushers around each refocusing pulse (SE, TSE) unless the protocol says otherwise: cycles across the slice
CRUSHER_CYCLES = 4.0


def _crusher_cycles() -> Any:
    return Field(default=CRUSHER_CYCLES, ge=0, le=100,
                 description="crushers before and after every refocusing pulse (equal lobes: CPMG kept), cycles "
                             "across the slice thickness; 0 = none; `mrbridge export --crusher-cycles` overrides")


def _crusher_axis() -> Any:
    return Field(default="z", description="crusher direction: z, the slice axis (the only one the exporter crushes)")


class ProtocolValueError(ValueError):
    """A value that breaks a rule involving several keys; carries the key to blame."""

    def __init__(self, key: str, value: Any, expectation: str) -> None:
        super().__init__(f"field '{key}' = {value!r}: {expectation}")
        self.key = key
        self.value = value
        self.expectation = expectation

    def describe(self, data: Any) -> str:
        """'field KEY = VALUE: EXPECTATION' with the value as the user wrote it in ``data``."""
        if isinstance(data, dict) and self.key in data:
            return f"field '{self.key}' = {data[self.key]!r}: {self.expectation}"
        if self.value is None:
            return f"field '{self.key}': {self.expectation}"
        return f"field '{self.key}' = {self.value!r}: {self.expectation}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g} ms"


class _ProtocolBase(BaseModel):
    """Keys shared by every kind: a 2D Cartesian slice, ``matrix`` × ``matrix``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(default="", description="shown in headers; defaults to the kind")
    matrix: int = Field(default=64, ge=8, le=1024, description="readout samples = phase-encoding lines")
    fov_mm: float = Field(default=200.0, gt=0, le=1000)
    slice_mm: float = Field(default=5.0, gt=0, le=500)
    dwell_us: float = Field(default=50.0, gt=0, le=10_000, description="ADC sample spacing")
    dummies: int = Field(default=0, ge=0, le=100_000, description="repetitions (shots) without ADC first")

    @field_validator("matrix")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ProtocolValueError("matrix", value, "must be even")
        return value

    # ---- SI views ----------------------------------------------------------------------------------
    @property
    def fov(self) -> float:
        """m."""
        return self.fov_mm * 1e-3

    @property
    def dwell(self) -> float:
        """s."""
        return self.dwell_us * 1e-6

    @property
    def before_echo(self) -> float:
        """s from the readout start to the k = 0 sample."""
        return (self.matrix // 2 + 1) * self.dwell

    @property
    def after_echo(self) -> float:
        """s from the k = 0 sample to the readout end."""
        return (self.matrix // 2 - 1) * self.dwell

    def _title(self) -> str:
        return self.name or str(getattr(self, "kind", "sequence"))


class SpinEchoProtocol(_ProtocolBase):
    """90°–180° spin echo, one line per TR (SPIN, Lyu et al. 2018: 64², FOV 64 mm, TE 40 ms, TR 10 s)."""

    kind: Literal["se"] = "se"
    fov_mm: float = Field(default=64.0, gt=0, le=1000)
    dwell_us: float = Field(default=100.0, gt=0, le=10_000)
    te_ms: float = Field(default=40.0, gt=0)
    tr_ms: float = Field(default=10_000.0, gt=0)
    flip_angle_deg: float = Field(default=90.0, gt=0, le=180)
    refocusing_angle_deg: float = Field(default=180.0, gt=0, le=180)
    rf_ms: float = Field(default=1.0, gt=0, le=100, description="excitation pulse duration")
    refocusing_rf_ms: float = Field(default=1.0, gt=0, le=100, description="refocusing pulse duration")
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")
    crusher_cycles: float = _crusher_cycles()
    crusher_axis: Literal["z"] = _crusher_axis()

    @model_validator(mode="after")
    def _timing(self) -> SpinEchoProtocol:
        te, tr = self.te_ms * 1e-3, self.tr_ms * 1e-3
        if te / 2 <= self.before_echo:
            raise ProtocolValueError(
                "te_ms", self.te_ms, f"must be > 2·(matrix/2 + 1)·dwell = {_ms(2 * self.before_echo)}"
            )
        if tr <= 1.5 * te:
            raise ProtocolValueError("tr_ms", self.tr_ms, f"must be > 1.5·te_ms = {_ms(1.5 * te)}")
        return self


class GreProtocol(_ProtocolBase):
    """RF- and gradient-spoiled gradient echo (FLASH)."""

    kind: Literal["gre"] = "gre"
    te_ms: float = Field(default=5.0, gt=0)
    tr_ms: float = Field(default=12.0, gt=0)
    flip_angle_deg: float = Field(default=15.0, gt=0, le=180)
    rf_spoiling_deg: float = Field(default=117.0, ge=0, lt=360, description="quadratic increment; 0 = off")
    dummies: int = Field(default=100, ge=0, le=100_000)
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")
    undersampling: Undersampling | None = Field(
        default=None, description="accelerated: ACS centre + uniform / random lines (mrbridge.sequence.undersampling)"
    )

    @model_validator(mode="after")
    def _timing(self) -> GreProtocol:
        _check_gre_timing(self, self.te_ms, self.tr_ms, "tr_ms")
        _check_undersampling(self.matrix, self.undersampling)
        return self


def _check_undersampling(matrix: int, spec: Undersampling | None) -> None:
    """ProtocolValueError when the ACS or explicit lines of ``spec`` do not fit the ``matrix``."""
    if spec is None:
        return
    if (problem := lines_problem(matrix, spec)) is not None:
        raise ProtocolValueError("undersampling.lines", spec.lines, problem)
    if (problem := acs_problem(matrix, spec)) is not None:
        raise ProtocolValueError("undersampling.acs_lines", spec.acs_lines, problem)


def _check_gre_timing(
    p: _ProtocolBase, te_ms: float, tr_ms: float, tr_key: str, before_ms: float = 0.0, before: str = ""
) -> None:
    """TE must fit the prephaser; ``tr_key`` must exceed ``before_ms`` + TE + the readout after the echo."""
    if te_ms * 1e-3 <= p.before_echo:
        raise ProtocolValueError("te_ms", te_ms, f"must be > (matrix/2 + 1)·dwell = {_ms(p.before_echo)}")
    least = (before_ms + te_ms) * 1e-3 + p.after_echo
    if tr_ms * 1e-3 <= least:
        raise ProtocolValueError(
            tr_key, tr_ms, f"must be > {before}te_ms + (matrix/2 − 1)·dwell = {_ms(least)}"
        )


class TseProtocol(_ProtocolBase):
    """RARE / turbo spin echo with CPMG phases, one echo train per shot."""

    kind: Literal["tse"] = "tse"
    te_ms: float | None = Field(
        default=None, gt=0, description="effective TE; default: the echo the order puts at the k-space centre"
    )
    tr_ms: float = Field(default=3000.0, gt=0, description="per shot")
    echo_spacing_ms: float = Field(default=10.0, gt=0)
    echo_train_length: int = Field(default=8, ge=1, le=1024)
    order: Literal["linear", "centric"] = "linear"
    flip_angle_deg: float = Field(default=90.0, gt=0, le=180)
    refocusing_angle_deg: float = Field(default=180.0, gt=0, le=180)
    rf_ms: float = Field(default=1.0, gt=0, le=100, description="excitation pulse duration")
    refocusing_rf_ms: float = Field(default=1.0, gt=0, le=100, description="refocusing pulse duration")
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")
    crusher_cycles: float = _crusher_cycles()
    crusher_axis: Literal["z"] = _crusher_axis()
    undersampling: Undersampling | None = Field(
        default=None, description="accelerated: ACS centre + uniform / random lines (mrbridge.sequence.undersampling)"
    )

    @property
    def effective_echo(self) -> int:
        """0-based index of the echo that acquires the k-space centre."""
        if self.order == "linear":
            return self.echo_train_length // 2
        if self.te_ms is None:
            return 0
        return round(self.te_ms / self.echo_spacing_ms) - 1

    @property
    def effective_te(self) -> float:
        """s."""
        return (self.effective_echo + 1) * self.echo_spacing_ms * 1e-3

    @model_validator(mode="after")
    def _timing(self) -> TseProtocol:
        esp, etl = self.echo_spacing_ms * 1e-3, self.echo_train_length
        if self.matrix % etl:
            raise ProtocolValueError("echo_train_length", etl, f"must divide matrix = {self.matrix}")
        if esp / 2 <= self.before_echo:
            raise ProtocolValueError(
                "echo_spacing_ms",
                self.echo_spacing_ms,
                f"must be > 2·(matrix/2 + 1)·dwell = {_ms(2 * self.before_echo)}",
            )
        if self.te_ms is not None:
            echo = self.te_ms / self.echo_spacing_ms
            if self.order == "linear" and abs(self.te_ms * 1e-3 - self.effective_te) > 1e-9:
                raise ProtocolValueError(
                    "te_ms",
                    self.te_ms,
                    f"order 'linear' puts the centre on echo {etl // 2 + 1}: must be {_ms(self.effective_te)}"
                    " (or leave te_ms out)",
                )
            if abs(echo - round(echo)) > 1e-6 or not 1 <= round(echo) <= etl:
                raise ProtocolValueError(
                    "te_ms",
                    self.te_ms,
                    f"must be a multiple of echo_spacing_ms = {self.echo_spacing_ms} "
                    f"between 1 and echo_train_length = {etl} echoes",
                )
        least = (etl + 0.5) * esp
        if self.tr_ms * 1e-3 <= least:
            raise ProtocolValueError(
                "tr_ms", self.tr_ms, f"must be > (echo_train_length + 1/2)·echo_spacing_ms = {_ms(least)}"
            )
        _check_undersampling(self.matrix, self.undersampling)
        return self


class BssfpProtocol(_ProtocolBase):
    """Balanced SSFP: α/2 preparation TR/2 before the first α, then ±α, TE = TR/2."""

    kind: Literal["bssfp"] = "bssfp"
    tr_ms: float = Field(default=5.0, gt=0)
    flip_angle_deg: float = Field(default=40.0, gt=0, le=180)
    dwell_us: float = Field(default=30.0, gt=0, le=10_000)

    @model_validator(mode="after")
    def _timing(self) -> BssfpProtocol:
        if self.tr_ms * 1e-3 / 2 <= self.before_echo:
            raise ProtocolValueError(
                "tr_ms", self.tr_ms, f"must be > 2·(matrix/2 + 1)·dwell = {_ms(2 * self.before_echo)}"
            )
        return self


class IrGreProtocol(_ProtocolBase):
    """Inversion recovery, then ``lines_per_inversion`` spoiled GRE lines; TR per inversion."""

    kind: Literal["irgre"] = "irgre"
    ti_ms: float = Field(default=500.0, gt=0, description="inversion to the first excitation")
    te_ms: float = Field(default=5.0, gt=0)
    tr_ms: float = Field(default=3000.0, gt=0, description="inversion to inversion")
    flip_angle_deg: float = Field(default=20.0, gt=0, le=180)
    lines_per_inversion: int = Field(default=1, ge=1, le=1024)
    gre_tr_ms: float | None = Field(default=None, gt=0, description="excitation spacing within one inversion")
    order: Literal["linear", "centric"] = "linear"
    rf_spoiling_deg: float = Field(default=117.0, ge=0, lt=360, description="quadratic increment; 0 = off")
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")
    inversion_rf_ms: float = Field(default=1.0, gt=0, le=100, description="inversion pulse duration")

    @model_validator(mode="after")
    def _timing(self) -> IrGreProtocol:
        lines = self.lines_per_inversion
        if self.matrix % lines:
            raise ProtocolValueError("lines_per_inversion", lines, f"must divide matrix = {self.matrix}")
        train, before = 0.0, "ti_ms + "
        if lines > 1:
            if self.gre_tr_ms is None:
                raise ProtocolValueError("gre_tr_ms", None, "is required when lines_per_inversion > 1")
            _check_gre_timing(self, self.te_ms, self.gre_tr_ms, "gre_tr_ms")
            train, before = (lines - 1) * self.gre_tr_ms, "ti_ms + (lines_per_inversion − 1)·gre_tr_ms + "
        _check_gre_timing(self, self.te_ms, self.tr_ms, "tr_ms", self.ti_ms + train, before)
        return self


def _preset(value: str) -> str:
    """A system preset name (calibration/systems/NAME.yaml)."""
    if not (SYSTEMS_DIR / f"{value}.yaml").is_file():
        presets = ", ".join(sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml")))
        raise ProtocolValueError("system", value, f"must name a system preset ({presets})")
    return value


class EpiProtocol(_ProtocolBase):
    """Blipped gradient-echo EPI, single- or multi-shot (interleaved), optionally ramp-sampled, partial Fourier
    and with three navigator lines; timing from the gradients designed for ``system``."""

    kind: Literal["epi"] = "epi"
    system: str = Field(default="generic3t", description="gradient limits: a preset of calibration/systems")
    te_ms: float = Field(default=30.0, gt=0, description="excitation to the k-space centre line's centre")
    tr_ms: float = Field(default=3000.0, gt=0, description="per shot")
    flip_angle_deg: float = Field(default=90.0, gt=0, le=180)
    dwell_us: float = Field(default=4.0, gt=0, le=10_000, description="ADC spacing; k_x moves ≤ 1/FOV per dwell")
    shots: int = Field(default=1, ge=1, le=1024, description="interleaved segments (lines shot, shot + shots, …)")
    partial_fourier: float = Field(default=1.0, ge=0.5, le=1.0, description="fraction of k_y lines acquired")
    ramp_sampling: bool = Field(default=True, description="ADC over the whole readout trapezoid, ramps included")
    navigators: bool = Field(default=False, description="three non-phase-encoded lines before the train")
    rf_ms: float = Field(default=2.0, gt=0, le=100, description="excitation pulse duration (a 1-ms 90° sinc "
                         "exceeds 20 µT peak B1)")
    rf_spoiling_deg: float = Field(default=117.0, ge=0, lt=360, description="quadratic increment; 0 = off")
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing per shot")

    @field_validator("system")
    @classmethod
    def _known_system(cls, value: str) -> str:
        return _preset(value)

    @model_validator(mode="after")
    def _timing(self) -> EpiProtocol:
        from mrbridge.sequence.builders_epi import epi_plan

        epi_plan(self)  # raises ProtocolValueError naming the key when the timing does not fit
        return self


class RadialProtocol(_ProtocolBase):
    """2D golden-angle radial spoiled GRE: spoke n at n·111.246°, 2·matrix samples (readout oversampling 2)."""

    kind: Literal["radial"] = "radial"
    spokes: int = Field(default=100, ge=1, le=100_000)
    te_ms: float = Field(default=5.0, gt=0)
    tr_ms: float = Field(default=12.0, gt=0)
    flip_angle_deg: float = Field(default=15.0, gt=0, le=180)
    dwell_us: float = Field(default=25.0, gt=0, le=10_000, description="ADC spacing: k moves 1/(2·FOV) per dwell")
    rf_spoiling_deg: float = Field(default=117.0, ge=0, lt=360, description="quadratic increment; 0 = off")
    dummies: int = Field(default=100, ge=0, le=100_000)
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")

    @property
    def before_echo(self) -> float:
        """s from the readout start to the k = 0 sample (2·matrix samples)."""
        return (self.matrix + 1) * self.dwell

    @property
    def after_echo(self) -> float:
        """s from the k = 0 sample to the readout end."""
        return (self.matrix - 1) * self.dwell

    @model_validator(mode="after")
    def _timing(self) -> RadialProtocol:
        te, tr = self.te_ms * 1e-3, self.tr_ms * 1e-3
        if te <= self.before_echo:
            raise ProtocolValueError("te_ms", self.te_ms, f"must be > (matrix + 1)·dwell = {_ms(self.before_echo)}")
        if tr <= te + self.after_echo:
            raise ProtocolValueError(
                "tr_ms", self.tr_ms, f"must be > te_ms + (matrix − 1)·dwell = {_ms(te + self.after_echo)}"
            )
        return self


class SpiralProtocol(_ProtocolBase):
    """Variable-density spiral spoiled GRE, ``interleaves`` rotated arms, designed within ``system``'s limits.

    Turn spacing (all interleaves together) Δk_r(k) = (1 + (k/k0)^p)/FOV with k0 = density_k0_fraction·k_max,
    p = density_power: the sampling density ∝ 1/(1 + (k/k0)^p), Nyquist (1/FOV) at the centre.
    """

    kind: Literal["spiral"] = "spiral"
    system: str = Field(default="generic3t", description="gradient limits: a preset of calibration/systems")
    interleaves: int = Field(default=8, ge=1, le=1024)
    te_ms: float = Field(default=2.0, gt=0, description="excitation to the spiral start (k = 0)")
    tr_ms: float = Field(default=20.0, gt=0)
    flip_angle_deg: float = Field(default=15.0, gt=0, le=180)
    dwell_us: float = Field(default=2.0, gt=0, le=10_000, description="ADC spacing; ≤ 1/(FOV·peak gradient)")
    density_k0_fraction: float = Field(default=1.0, gt=0, le=100, description="k0 / k_max")
    density_power: float = Field(default=4.0, ge=1, le=16, description="p")
    rf_ms: float = Field(default=1.0, gt=0, le=100, description="excitation pulse duration")
    rf_spoiling_deg: float = Field(default=117.0, ge=0, lt=360, description="quadratic increment; 0 = off")
    dummies: int = Field(default=100, ge=0, le=100_000)
    spoiler_cycles_per_voxel: float = Field(default=2.0, ge=0, le=100, description="net x dephasing")

    @field_validator("system")
    @classmethod
    def _known_system(cls, value: str) -> str:
        return _preset(value)

    @model_validator(mode="after")
    def _timing(self) -> SpiralProtocol:
        from mrbridge.sequence.builders_noncartesian import spiral_plan

        spiral_plan(self)  # raises ProtocolValueError naming the key when the timing does not fit
        return self


_KIND_MODELS = (SpinEchoProtocol, GreProtocol, TseProtocol, BssfpProtocol, IrGreProtocol, EpiProtocol, RadialProtocol,
                SpiralProtocol)
Protocol = Annotated[
    SpinEchoProtocol | GreProtocol | TseProtocol | BssfpProtocol | IrGreProtocol | EpiProtocol | RadialProtocol
    | SpiralProtocol,
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter[Protocol] = TypeAdapter(Protocol)

_EXPECT = {
    "greater_than": "must be > {gt:g}",
    "greater_than_equal": "must be ≥ {ge:g}",
    "less_than": "must be < {lt:g}",
    "less_than_equal": "must be ≤ {le:g}",
    "extra_forbidden": "unknown key; allowed keys: {allowed}",
    "missing": "required key is missing",
    "literal_error": "must be one of {expected}",
    "union_tag_invalid": "must be one of " + ", ".join(repr(k) for k in KINDS),
    "union_tag_not_found": "required key is missing; one of " + ", ".join(repr(k) for k in KINDS),
}


def _allowed_keys(kind: Any) -> str:
    for model in _KIND_MODELS:
        if model.model_fields["kind"].default == kind:
            return ", ".join(model.model_fields)
    return "see protocols/*.yaml"


def _describe(err: Any, data: Any, source: str) -> str:
    """One line naming the source, the key, the value and what was expected."""
    error = err.get("ctx", {}).get("error")
    if isinstance(error, ProtocolValueError):
        return f"{source}: {error.describe(data)}"
    loc = list(err["loc"])
    kind = data.get("kind") if isinstance(data, dict) else None
    if loc and loc[0] == kind:  # discriminated unions prefix the tag
        loc = loc[1:]
    key = ".".join(str(part) for part in loc) or "kind"
    ctx = dict(err.get("ctx", {}))
    template = _EXPECT.get(err["type"])
    if template is None:
        expectation = err["msg"][:1].lower() + err["msg"][1:]
    else:
        expectation = template.format(allowed=_allowed_keys(kind), **ctx)
    if err["type"] in ("missing", "union_tag_not_found"):
        return f"{source}: field '{key}': {expectation}"
    value = ctx["tag"] if err["type"] == "union_tag_invalid" else err["input"]
    return f"{source}: field '{key}' = {value!r}: {expectation}"


def parse_protocol(data: Any, source: str = "protocol") -> Protocol:
    """Validate a mapping (as read from YAML) into a protocol; ConfigError with one line on failure."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], data, source) + more) from None


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol YAML file.

    Raises
    ------
    ConfigError
        One line: the file, the key, the value and what was expected.
    """
    return parse_protocol(load_yaml(path), str(path))


def with_matrix(protocol: Protocol, matrix: int) -> Protocol:
    """The protocol re-validated with another matrix (ConfigError when its timing no longer fits). An accelerated
    protocol's ACS lines keep their share of the lines (at least 2)."""
    data = protocol.model_dump()
    data["matrix"] = matrix
    if data.get("undersampling") is not None:
        acs = data["undersampling"]["acs_lines"]
        data["undersampling"]["acs_lines"] = min(max(round(acs * matrix / protocol.matrix), min(acs, 2)), matrix)
    return parse_protocol(data, f"protocol '{protocol._title()}' with matrix {matrix}")
