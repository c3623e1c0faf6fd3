"""Optimization tasks (``protocols/*.yaml`` with ``kind: task``): what trains, against what, on which data.

A task names a sequence template (a protocol file or an inline protocol), the sequence parameters that train
(each with bounds and a parametrisation; or ``sampling``: the lines of an accelerated Cartesian protocol,
:mod:`mrbridge.optimize.sampling`), the target, the loss terms, the reconstruction, the training data
and the optimizer. Keys name their non-SI units (``bounds_deg``, ``bounds_ms``); unknown keys are errors.
:func:`load_task` reports every mistake as a ConfigError naming the file, the key, the value and what was
expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from mrbridge.errors import ConfigError
from mrbridge.optimize.parametrize import build_template, selection
from mrbridge.optimize.sampling import SamplingParam
from mrbridge.recon.pipeline import ReconConfig
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import Protocol, ProtocolValueError, parse_protocol
from mrbridge.sequence.undersampling import Undersampling, acquired_lines, budget
from mrbridge.system import System
from mrbridge.yamlfile import load_yaml

Init = Literal["template", "zero", "random"] | float
Axis = Literal["x", "y", "z"]
Usage = Literal["excitation", "refocusing", "inversion", "other"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Param(_Strict):
    """Shared keys of a trainable parameter."""

    pulses: list[Usage] | None = Field(
        default=None, description="repetitions whose pulse has one of these usages (None: the default of the name)"
    )
    shared: bool | Literal["repetition"] = Field(
        default=False, description="true: one value for every selected entry; repetition: one per repetition"
    )
    init: Init = Field(default="template", description="template, zero, random (uniform in bounds) or a value")
    lr: float | None = Field(default=None, gt=0, description="learning rate (default: optimizer.lr)")

    @model_validator(mode="after")
    def _bounds(self) -> _Param:
        lo, hi = self.bounds()
        if lo is not None and hi is not None and not lo < hi:
            raise ProtocolValueError(self.bounds_key(), [lo, hi], "impossible bounds: expected lower < upper")
        if self.parametrization() == "sigmoid" and (lo is None or hi is None):
            raise ProtocolValueError(self.bounds_key(), [lo, hi], "parametrization 'sigmoid' needs both bounds")
        if self.parametrization() == "softplus" and lo is None:
            raise ProtocolValueError(self.bounds_key(), [lo, hi], "parametrization 'softplus' needs a lower bound")
        if self.init == "random" and (lo is None or hi is None):
            raise ProtocolValueError("init", "random", f"needs both bounds in '{self.bounds_key()}'")
        if isinstance(self.init, float) and not _inside(self.init, lo, hi):
            raise ProtocolValueError("init", self.init, f"must lie inside {self.bounds_key()} = {[lo, hi]}")
        return self

    def bounds(self) -> tuple[float | None, float | None]:
        """(lower, upper) in the key's unit."""
        value = getattr(self, self.bounds_key())
        return (None, None) if value is None else (value[0], value[1])

    def bounds_key(self) -> str:
        return next(k for k in type(self).model_fields if k.startswith("bounds_"))

    def parametrization(self) -> str:
        return str(getattr(self, "parametrization_"))  # noqa: B009 (each subclass declares it)


def _inside(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


class FlipAngleParam(_Param):
    """Flip angles of the selected pulses (default: excitations), in degrees."""

    name: Literal["flip_angle"]
    bounds_deg: tuple[float, float] | None = (0.0, 180.0)
    parametrization_: Literal["sigmoid", "identity"] = Field(default="sigmoid", alias="parametrization")


class RfPhaseParam(_Param):
    """RF phases of the selected pulses (default: excitations), in degrees; unbounded by default."""

    name: Literal["rf_phase"]
    bounds_deg: tuple[float, float] | None = None
    parametrization_: Literal["sigmoid", "identity"] = Field(default="identity", alias="parametrization")


class GradmParam(_Param):
    """Gradient moments of the selected events, in cycles per FOV (1/FOV = one k-space step)."""

    name: Literal["gradm"]
    axes: list[Axis] = Field(default_factory=lambda: list[Axis](["x", "y"]), min_length=1)
    events: Literal["all", "adc", "non_adc"] = "all"
    bounds_cycles_per_fov: tuple[float, float] | None = None
    parametrization_: Literal["sigmoid", "identity"] = Field(default="identity", alias="parametrization")


class TimeParam(_Param):
    """Durations: ``event_time`` (selected events), ``ti`` (the event after each inversion) or ``recovery``
    (the last event before each inversion, and the last of the sequence), in ms."""

    name: Literal["event_time", "ti", "recovery"]
    events: Literal["all", "adc", "non_adc"] = "non_adc"
    bounds_ms: tuple[float, float | None] | None = (0.01, None)
    parametrization_: Literal["softplus", "sigmoid", "identity"] = Field(default="softplus", alias="parametrization")

    def bounds(self) -> tuple[float | None, float | None]:
        lo, hi = super().bounds()
        if lo is not None and lo < 0:
            raise ProtocolValueError("bounds_ms", [lo, hi], "durations cannot be negative")
        if lo is None and self.parametrization() == "identity":
            raise ProtocolValueError("bounds_ms", [lo, hi], "parametrization 'identity' needs a lower bound")
        return lo, hi


SequenceParamSpec = FlipAngleParam | RfPhaseParam | GradmParam | TimeParam
ParamSpec = Annotated[SequenceParamSpec | SamplingParam, Field(discriminator="name")]
PARAM_NAMES = ("flip_angle", "rf_phase", "gradm", "event_time", "ti", "recovery", "sampling")


class SequenceSpec(_Strict):
    """The template: a protocol file (relative to the task file) or an inline protocol, with overrides."""

    protocol: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict, description="protocol keys to override")
    repeat: int = Field(default=1, ge=1, le=64, description="copies of the sequence, labelled contrast 0 … n−1")


class ReferenceTarget(_Strict):
    """The image of a reference protocol (noise-free) through the same recon (its network excluded)."""

    kind: Literal["reference"]
    protocol: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    repeat: int = Field(default=1, ge=1, le=64)


class T1Target(_Strict):
    """The twin's T1 map (s) where pd > ``pd_threshold``, learned by the per-voxel MLP."""

    kind: Literal["t1"]
    pd_threshold: float = Field(default=0.0, ge=0)


class MaskTarget(_Strict):
    """A segmentation: 1 where the twin's label is one of ``labels``, else 0 (compared with the magnitude)."""

    kind: Literal["mask"]
    labels: list[int] = Field(min_length=1)


class FileTarget(_Strict):
    """A fixed image from a .npy file (relative to the task file), shape (y, x) = the sequence matrix."""

    kind: Literal["file"]
    path: str


Target = Annotated[ReferenceTarget | T1Target | MaskTarget | FileTarget, Field(discriminator="kind")]


class ImageLoss(_Strict):
    """Image similarity: mse, l1 or ssim (as 1 − SSIM), on magnitudes scaled by each target's maximum."""

    kind: Literal["mse", "l1", "ssim"]
    weight: float = Field(default=1.0, ge=0)
    scale_invariant: bool = Field(default=False, description="compare s·image with s = argmin ‖s·image − target‖")


class SarLoss(_Strict):
    """SAR: ``flip_squared`` = mean α² (rad²) per second of sequence, or ``estimate`` = the W/kg of the
    safety module's energy model for ``system`` (head coil)."""

    kind: Literal["sar"]
    weight: float = Field(default=1.0, ge=0)
    model: Literal["flip_squared", "estimate"] = "flip_squared"
    system: str = "generic3t"
    patient_kg: float = Field(default=70.0, gt=0)


class ScanTimeLoss(_Strict):
    """Total duration in seconds."""

    kind: Literal["scan_time"]
    weight: float = Field(default=1.0, ge=0)


class HardwareLoss(_Strict):
    """Gradient amplitude, slew and PNS beyond ``margin`` × ``system``'s limits (see :func:`~mrbridge.optimize.
    losses.hardware_penalty`): 0 when every event's mean gradient and every change between events fit."""

    kind: Literal["hardware"]
    weight: float = Field(default=1.0, ge=0)
    system: str = "generic3t"
    margin: float = Field(default=0.8, gt=0, le=1, description="fraction of each limit the penalty allows: the "
                          "exporter plays changes faster than the penalty's model (within one ADC dwell less a "
                          "gradient raster, at 0.95 of the PNS-safe slew)")


LossTerm = Annotated[ImageLoss | SarLoss | ScanTimeLoss | HardwareLoss, Field(discriminator="kind")]


class MlpSpec(_Strict):
    """Per-voxel MLP mapping each voxel's contrast signals to the quantitative target."""

    hidden: list[int] = Field(default_factory=lambda: [64, 64, 64], min_length=1)


class ReconSpec(_Strict):
    """The reconstruction (a ReconConfig, saved as recon.json) and, for quantitative targets, an MLP."""

    config: ReconConfig = Field(default_factory=ReconConfig)
    mlp: MlpSpec | None = None
    magnitude: bool = Field(default=True, description="compare magnitudes (else complex images)")


class SparseSpec(_Strict):
    """MRzero's sparse synthetic twins: a centred ``block``² square of voxels with random properties."""

    block: int = Field(default=12, ge=1)
    pd: tuple[float, float] = (0.0, 1.5)
    t1_s: tuple[float, float] = (0.3, 6.1)
    t2_s: tuple[float, float] = (0.01, 3.8)
    b0_hz: tuple[float, float] = (-60.0, 60.0)
    fov_mm: float = Field(default=200.0, gt=0)


class DataSpec(_Strict):
    """Training and validation twins."""

    kind: Literal["twin", "spin_random", "sparse", "files", "raw"]
    twin: str = Field(default="builtin:spin-brain", description="kind twin: builtin:NAME or a twin .h5 (relative "
                      "to the task file)")
    files: list[str] = Field(default_factory=list, description="kind files: twin .h5 paths (e.g. calibrated twins); "
                             "kind raw: fully sampled scans, ISMRMRD .h5 or twix .dat beside its .seq; relative to "
                             "the task file")
    sparse: SparseSpec = Field(default_factory=SparseSpec)
    train: int = Field(default=1, ge=1, description="training twins (spin_random, sparse)")
    validation: int = Field(default=0, ge=0, description="validation twins (the last ones of files)")
    coils: int = Field(default=1, ge=1, le=64, description="simulated receive coils of built-in twins")
    noise: float = Field(default=0.0, ge=0, description="σ relative to the max |signal| (SPIN: 0.025)")
    noise_of: Literal["signal", "reference", "reference_image"] = Field(
        default="signal", description="σ relative to: the max |signal| simulated, the reference's max |signal|, or "
                                      "the max of the reference image (σ of the image noise, as the recon is unitary)"
    )
    seed: int = 0


class SimSpec(_Strict):
    engine: str = "bloch"
    spins: int | None = Field(default=None, ge=1, description="Bloch isochromats per voxel")
    accuracy: float = Field(default=1e-3, gt=0, description="graph engine state threshold")


class Schedule(_Strict):
    kind: Literal["constant", "cosine", "exponential"] = "constant"
    gamma: float = Field(default=0.999, gt=0, le=1, description="exponential: lr·gamma^step")
    final: float = Field(default=0.01, ge=0, le=1, description="cosine: final lr / lr")


class Alternating(_Strict):
    """SPIN: pretrain the recon (on reference data), then rounds of sequence steps and recon steps."""

    pretrain_steps: int = Field(default=0, ge=0)
    pretrain_on: Literal["reference", "sequence"] = "reference"
    rounds: int = Field(default=1, ge=1)
    sequence_steps: int = Field(default=1, ge=1)
    recon_steps: int = Field(default=1, ge=0)


class EarlyStopping(_Strict):
    patience: int = Field(default=5, ge=1, description="validations without improvement")
    min_delta: float = Field(default=0.0, ge=0)


class OptimizerSpec(_Strict):
    mode: Literal["joint", "alternating"] = "joint"
    iterations: int = Field(default=100, ge=1, description="joint: steps after the restarts")
    alternating: Alternating = Field(default_factory=Alternating)
    lr: float = Field(default=0.01, gt=0, description="sequence parameters")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Adam's β1 of the sequence parameters; 0 in "
                            "alternating runs keeps a round's steps from carrying the gradients of the previous "
                            "round's network")
    recon_lr: float = Field(default=1e-3, gt=0, description="recon network / MLP")
    schedule: Schedule = Field(default_factory=Schedule)
    batch: int = Field(default=1, ge=1, description="twins per step (split over processes)")
    restarts: int = Field(default=0, ge=0, description="random restarts before the main run (best kept)")
    restart_steps: int = Field(default=50, ge=1)
    final_recon_steps: int = Field(default=0, ge=0, description="after the other steps, train the recon alone "
                                   "for the final sequence and binary sampling mask (what it will reconstruct)")
    checkpoint_every: int = Field(default=50, ge=1)
    validate_every: int = Field(default=50, ge=1)
    early_stopping: EarlyStopping | None = None
    seed: int = 0


class Task(_Strict):
    """One optimization task."""

    kind: Literal["task"]
    name: str = "task"
    sequence: SequenceSpec
    parameters: list[ParamSpec] = Field(min_length=1)
    target: Target
    losses: list[LossTerm] = Field(default_factory=lambda: list[LossTerm]([ImageLoss(kind="mse")]), min_length=1)
    recon: ReconSpec = Field(default_factory=ReconSpec)
    data: DataSpec
    sim: SimSpec = Field(default_factory=SimSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        quantitative = self.target.kind == "t1"
        if quantitative != (self.recon.mlp is not None):
            raise ProtocolValueError("recon.mlp", self.recon.mlp, "is required for (and only for) target kind 't1'")
        if quantitative and any(t.kind == "ssim" for t in self.losses):
            raise ProtocolValueError("losses", "ssim", "is an image loss; target kind 't1' uses mse or l1")
        if self.data.noise_of != "signal" and self.target.kind != "reference":
            raise ProtocolValueError("data.noise_of", self.data.noise_of, "needs target kind 'reference'")
        if self.optimizer.mode == "alternating" and self.optimizer.restarts:
            raise ProtocolValueError("optimizer.restarts", self.optimizer.restarts, "only with mode 'joint'")
        c = self.recon.config
        if self.optimizer.final_recon_steps and c.network == "none" and not c.train_tikhonov and not quantitative:
            raise ProtocolValueError("optimizer.final_recon_steps", self.optimizer.final_recon_steps,
                                     "needs a recon that trains (a network, train_tikhonov or an MLP)")
        return self


# ---- loading -----------------------------------------------------------------------------------------
_TASK = TypeAdapter(Task)


def _describe(err: Any, data: Any, source: str) -> str:
    error = err.get("ctx", {}).get("error")
    loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or p not in PARAM_NAMES + _TAGS)
    if isinstance(error, ProtocolValueError):
        key = f"{loc}.{error.key}" if loc else error.key
        return f"{source}: field '{key}' = {error.value!r}: {error.expectation}"
    if err["type"] == "missing":
        return f"{source}: field '{loc}': required key is missing"
    if err["type"] == "union_tag_invalid":
        ctx = err["ctx"]
        return f"{source}: field '{loc}.{ctx['discriminator'].strip(chr(39))}' = {ctx['tag']!r}: " \
               f"must be one of {ctx['expected_tags']}"
    if err["type"] == "extra_forbidden":
        return f"{source}: field '{loc}' = {err['input']!r}: unknown key"
    return f"{source}: field '{loc}' = {err.get('input')!r}: {err['msg']}"


_TAGS = ("reference", "t1", "mask", "file", "mse", "l1", "ssim", "sar", "scan_time", "hardware")


def parse_task(data: Any, source: str = "task", base: Path | None = None) -> ResolvedTask:
    """Validate a mapping into a task and resolve its protocols, systems and target file (relative to
    ``base``); ConfigError with one line naming ``source``, the key, the value and the expectation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    if data.get("kind") != "task":
        what = f"a protocol (kind {data['kind']!r})" if "kind" in data else "not a task (no 'kind: task')"
        raise ConfigError(f"{source}: field 'kind' = {data.get('kind')!r}: this is {what}; optimize takes a task "
                          "file with 'kind: task' (e.g. protocols/spin_flip_angle.yaml), whose 'sequence.protocol' "
                          "names the protocol to learn")
    try:
        task = _TASK.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], data, source) + more) from None
    return ResolvedTask(task, source, base or Path.cwd())


def load_task(path: str | Path) -> ResolvedTask:
    """Read, validate and resolve a task YAML file (see :func:`parse_task`)."""
    path = Path(path)
    resolved = parse_task(load_yaml(path), str(path), path.parent)
    resolved.text = path.read_text()
    return resolved


class ResolvedTask:
    """A validated task with its protocols, systems and target file read (paths relative to the task)."""

    def __init__(self, task: Task, source: str, base: Path) -> None:
        self.task, self.source, self.base = task, source, base
        self.text = yaml.safe_dump(task.model_dump(mode="json", by_alias=True), sort_keys=False)
        self.protocol = self._protocol(task.sequence.protocol, task.sequence.set, "sequence")
        self.reference: Protocol | None = None
        if isinstance(task.target, ReferenceTarget):
            self.reference = self._protocol(task.target.protocol, task.target.set, "target")
            if self.reference.matrix != self.protocol.matrix:
                raise ConfigError(f"{source}: field 'target.protocol': matrix {self.reference.matrix} gives a "
                                  f"target of shape ({self.reference.matrix}, {self.reference.matrix}); expected "
                                  f"the sequence's ({self.protocol.matrix}, {self.protocol.matrix})")
            if task.target.repeat != task.sequence.repeat:
                raise ConfigError(f"{source}: field 'target.repeat' = {task.target.repeat}: expected "
                                  f"sequence.repeat = {task.sequence.repeat} (one target image per contrast)")
        self.target_image: np.ndarray | None = None
        if isinstance(task.target, FileTarget):
            self.target_image = self._target_file(task.target.path)
        self.systems = {t.system: self._system(t.system, i) for i, t in enumerate(task.losses)
                        if isinstance(t, SarLoss | HardwareLoss)}
        self.sequence_specs: list[SequenceParamSpec] = [p for p in task.parameters if not isinstance(p, SamplingParam)]
        self.undersampling: Undersampling | None = getattr(self.protocol, "undersampling", None)
        self.sampling = self._sampling()
        self._check_parameters()
        self._check_measured()

    def _where(self, key: str) -> str:
        return f"{self.source}: field '{key}'"

    def _protocol(self, spec: str | dict[str, Any], overrides: dict[str, Any], key: str) -> Protocol:
        if isinstance(spec, str):
            try:
                data = load_yaml(self.base / spec)
            except ConfigError as err:
                raise ConfigError(f"{self._where(key + '.protocol')} = {spec!r}: {err}") from None
            where = f"{self.source} ({key}.protocol {spec})"
        else:
            data, where = spec, f"{self.source} ({key}.protocol)"
        if not isinstance(data, dict):
            raise ConfigError(f"{self._where(key + '.protocol')}: expected a protocol mapping")
        return parse_protocol({**data, **overrides}, where)

    def _target_file(self, name: str) -> np.ndarray:
        path = self.base / name
        try:
            image = np.load(path)
        except FileNotFoundError:
            raise ConfigError(f"{self._where('target.path')} = {name!r}: no such file {path}") from None
        except ValueError as err:
            raise ConfigError(f"{self._where('target.path')} = {name!r}: not a .npy array ({err})") from None
        n = self.protocol.matrix
        if image.shape != (n, n):
            raise ConfigError(f"{self._where('target.path')} = {name!r}: target of shape {image.shape}; "
                              f"expected the sequence matrix ({n}, {n})")
        return image

    def _system(self, name: str, index: int) -> System:
        try:
            return System.load(name)
        except ConfigError as err:
            raise ConfigError(f"{self._where(f'losses.{index}.system')} = {name!r}: {err}") from None

    def _sampling(self) -> SamplingParam | None:
        """The ``sampling`` parameter, checked against the protocol, the recon and the optimizer; or None."""
        found = [(i, p) for i, p in enumerate(self.task.parameters) if isinstance(p, SamplingParam)]
        if not found:
            return None
        i, spec = found[0]
        where = self._where(f"parameters.{i}.name") + " = 'sampling'"
        if len(found) > 1:
            raise ConfigError(f"{self._where(f'parameters.{found[1][0]}.name')} = 'sampling': expected at most one "
                              "sampling parameter")
        spec_us = self.undersampling
        if spec_us is None:
            raise ConfigError(f"{where}: needs a Cartesian protocol with an 'undersampling' key (its acceleration "
                              f"sets the budget, its acs_lines the calibration lines); the '{self.protocol.kind}' "
                              "template of 'sequence.protocol' has none")
        n = self.protocol.matrix
        if budget(n, spec_us) <= spec_us.acs_lines:
            raise ConfigError(f"{where}: the budget round(matrix/acceleration) = {budget(n, spec_us)} lines leaves "
                              f"none to learn beside undersampling.acs_lines = {spec_us.acs_lines}; expected fewer "
                              "ACS lines or a lower acceleration")
        if spec.init == "pattern" and (own := len(acquired_lines(n, spec_us)[0])) != budget(n, spec_us):
            raise ConfigError(f"{self._where(f'parameters.{i}.init')} = 'pattern': the protocol's "
                              f"{spec_us.pattern!r} lines ({own}) are not the budget round(matrix/acceleration) = "
                              f"{budget(n, spec_us)}; expected a variable_density or poisson_disc pattern")
        if not spec.train and spec.init == "zero":
            raise ConfigError(f"{self._where(f'parameters.{i}.train')} = false with init 'zero': every line is "
                              "equally likely, so the fixed mask would be arbitrary; expected init 'pattern' or "
                              "'random'")
        method = self.task.recon.config.method
        if method not in ("sense", "fft"):
            raise ConfigError(f"{self._where('recon.config.method')} = {method!r}: learned sampling weights the "
                              "lines of a Cartesian recon; expected 'sense' or 'fft'")
        if self.task.optimizer.restarts:
            raise ConfigError(f"{self._where('optimizer.restarts')} = {self.task.optimizer.restarts}: restarts "
                              "re-draw sequence parameters, not the sampling logits; expected 0 with 'sampling'")
        return spec

    def _check_parameters(self) -> None:
        """Selections that select nothing in the template are errors (e.g. ``ti`` without inversions)."""
        seq = self.template()
        for i, spec in enumerate(self.task.parameters):
            if isinstance(spec, SamplingParam):
                continue
            if not selection(seq, spec):
                raise ConfigError(f"{self._where(f'parameters.{i}.name')} = {spec.name!r}: selects nothing in "
                                  f"the '{self.protocol.kind}' template (pulses {spec.pulses})")
            lo, hi = spec.bounds()
            if spec.init == "template" and spec.parametrization() == "sigmoid":
                values = selection(seq, spec).template_values(seq, spec)
                if lo is not None and hi is not None and values.size and (values.min() < lo or values.max() > hi):
                    raise ConfigError(
                        f"{self._where(f'parameters.{i}.{spec.bounds_key()}')} = {[lo, hi]}: the template's "
                        f"values span [{values.min():.4g}, {values.max():.4g}], outside the bounds")

    def _check_measured(self) -> None:
        """Measured scans (data kind ``raw``) train the recon and the sampling mask only, against themselves."""
        t = self.task
        if t.data.kind != "raw":
            return
        why = None
        if not t.data.files or t.data.validation >= len(t.data.files):
            why = (f"field 'data.files' = {t.data.files!r}: expected at least one training scan beside the "
                   f"{t.data.validation} of data.validation")
        elif self.sampling is None:
            why = ("field 'parameters': no 'sampling' parameter; measured scans train a recon for a line mask: "
                   "expected one ('train: false' keeps the protocol's lines)")
        elif self.sequence_specs:
            i = t.parameters.index(self.sequence_specs[0])
            why = (f"field 'parameters.{i}.name' = {self.sequence_specs[0].name!r}: measured scans cannot be "
                   "simulated again for another sequence; expected only the 'sampling' parameter")
        elif t.target.kind != "reference":
            why = (f"field 'target.kind' = {t.target.kind!r}: the target of a measured scan is its own fully "
                   "sampled image; expected 'reference'")
        elif t.sequence.repeat != 1:
            why = f"field 'sequence.repeat' = {t.sequence.repeat}: a measured scan is one image; expected 1"
        elif t.data.noise_of != "signal":
            why = f"field 'data.noise_of' = {t.data.noise_of!r}: added noise is relative to the scan; expected 'signal'"
        if why:
            raise ConfigError(f"{self.source}: {why} (data kind 'raw')")

    def template(self) -> Sequence:
        """The template Sequence (``repeat`` copies of the protocol's sequence); with ``sampling`` the protocol
        fully sampled, its ACS lines flagged (the lines to choose from)."""
        protocol = self.protocol
        if self.sampling is not None and self.undersampling is not None:
            full = self.undersampling.model_copy(update={"acceleration": 1, "pattern": "uniform"})
            protocol = protocol.model_copy(update={"undersampling": full})
        return build_template(protocol, self.task.sequence.repeat)

    def sampled_sequence(self, lines: list[int]) -> Sequence:
        """The protocol acquiring only ``lines`` (ACS included), as its builder orders them: a learned mask as a
        scan (the lines not chosen take no time)."""
        assert self.undersampling is not None
        spec = self.undersampling.model_copy(update={"pattern": "explicit", "lines": lines})
        return build_template(self.protocol.model_copy(update={"undersampling": spec}), self.task.sequence.repeat)

    def reference_sequence(self) -> Sequence | None:
        """The reference Sequence of a ``reference`` target, or None."""
        if self.reference is None:
            return None
        return build_template(self.reference, self.task.sequence.repeat)
