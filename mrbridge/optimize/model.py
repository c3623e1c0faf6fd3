"""The differentiable chain of one task: parameters → Sequence → simulation → RawData → Recon → loss.

Images are compared as (batch, contrasts, y, x), scaled by each twin's reference scale (the maximum of its
target image for ``reference`` targets, else the maximum of the image itself, detached), so losses and
metrics are on a 0…1 range whatever the matrix or the recon's normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mrbridge.errors import ConfigError
from mrbridge.optimize import losses
from mrbridge.optimize.data import TwinSet
from mrbridge.optimize.measured import MeasuredSet
from mrbridge.optimize.parametrize import SequenceParameters
from mrbridge.optimize.sampling import LineSampling, select_lines
from mrbridge.optimize.task import HardwareLoss, ImageLoss, ResolvedTask, SarLoss, ScanTimeLoss, T1Target
from mrbridge.optimize.voxelmlp import VoxelMLP
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.pipeline import Recon
from mrbridge.sequence.model import Sequence
from mrbridge.sim.bloch import DEFAULT_SPINS, simulate_bloch
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.twin import Twin

ENGINES = ("bloch", "graph")


def noise_seed(*parts: int) -> int:
    """A 31-bit seed from integers (task seed, step, twin index …)."""
    return int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class Outputs:
    """What one batch gives: images (batch, contrasts, y, x) scaled, targets alike (or (batch, y, x) T1 in s
    and its mask for quantitative tasks), and the sequence they came from."""

    images: torch.Tensor
    targets: torch.Tensor
    sequence: Sequence
    mask: torch.Tensor | None = None
    t1: torch.Tensor | None = None


class JointModel(nn.Module):
    """Trainable sequence + recon (network and/or per-voxel MLP) of a task, and its forward chain."""

    def __init__(self, task: ResolvedTask, data: TwinSet | MeasuredSet, *, engine: str | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        t = task.task
        self.task, self.data, self.device = task, data, torch.device(device)
        self.engine = engine or t.sim.engine
        if self.engine not in ENGINES:
            raise ConfigError(f"{task.source}: field 'sim.engine' = {self.engine!r}: expected one of {ENGINES}")
        self.params = SequenceParameters(task.template(), task.sequence_specs, seed=t.optimizer.seed).to(self.device)
        self.sampling = None
        if task.sampling is not None and task.undersampling is not None:
            self.sampling = LineSampling(task.sampling, task.protocol.matrix, task.undersampling,
                                         seed=t.optimizer.seed).to(self.device)
        self.recon = Recon(t.recon.config).to(self.device)
        self.mlp = VoxelMLP(t.sequence.repeat, t.recon.mlp.hidden).to(self.device) if t.recon.mlp else None
        self.reference = task.reference_sequence()
        self._targets: dict[int, tuple[torch.Tensor, float, float]] = {}  # index -> (target, scale, max |signal|)
        self._signals: dict[int, torch.Tensor] = {}
        self._images: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- parameters of the two groups ------------------------------------------------------------------
    def sequence_parameters(self) -> list[nn.Parameter]:
        """The sequence's raw parameters, then the sampling logits (if any)."""
        return list(self.params.parameters()) + (list(self.sampling.parameters()) if self.sampling else [])

    def bundle_sequence(self) -> Sequence:
        """The sequence as the bundle saves it (detached, CPU). With ``sampling``: the protocol acquiring only the
        chosen lines (a shorter scan) when nothing else trains; else the learned sequence with the ADCs of the
        chosen lines only (every repetition kept, as trained)."""
        seq = self.params.sequence().detach().to("cpu")
        if self.sampling is None:
            return seq
        if not self.params.raw:
            return self.task.sampled_sequence(self.sampling.chosen())
        return select_lines(seq, self.sampling.chosen())

    def recon_parameters(self) -> list[nn.Parameter]:
        return list(self.recon.parameters()) + (list(self.mlp.parameters()) if self.mlp is not None else [])

    # ---- simulation ------------------------------------------------------------------------------------
    def simulate(self, seq: Sequence, indices: list[int]) -> list[torch.Tensor]:
        """Noise-free signals, one (coils, adc_samples) complex tensor per twin."""
        assert isinstance(self.data, TwinSet), "measured scans are not simulated"
        sim = self.task.task.sim
        if self.engine == "graph":
            batch = self.data.batch(indices).to(self.device)
            return list(simulate_graph(seq, batch, accuracy=sim.accuracy).unbind(0))
        spins = sim.spins or DEFAULT_SPINS
        return [simulate_bloch(seq, self.data[i].to(self.device), spins=spins) for i in indices]

    def cached_signals(self, seq: Sequence, indices: list[int]) -> list[torch.Tensor]:
        """Signals of a fixed (non-trainable) sequence, cached per twin until :meth:`forget_signals`."""
        missing = [i for i in indices if i not in self._signals]
        if missing:
            with torch.no_grad():
                for i, s in zip(missing, self.simulate(seq.detach(), missing), strict=True):
                    self._signals[i] = s
        return [self._signals[i] for i in indices]

    def forget_signals(self) -> None:
        """Drop the cached signals (and images) of the sequence: it is about to change."""
        self._signals = {k: v for k, v in self._signals.items() if k < 0}  # reference signals stay
        self._images.clear()

    def raw(self, seq: Sequence, signal: torch.Tensor, index: int, seed: int) -> RawData:
        """RawData with the task's noise: σ relative to the simulated or the reference signal's maximum, or to
        the reference image's maximum (the FFT and adjoint recons are unitary: image noise σ = k-space σ)."""
        d = self.task.task.data
        noise = d.noise
        if noise and d.noise_of != "signal":
            _, image_max, signal_max = self.target(index)
            absolute = image_max if d.noise_of == "reference_image" else signal_max
            noise = noise * absolute / max(float(signal.detach().abs().max()), 1e-30)
        return to_rawdata(seq, signal, noise=noise, seed=seed)

    # ---- targets -----------------------------------------------------------------------------------------
    def _image(self, raw: RawData, *, unrolled: bool = False, lines: torch.Tensor | None = None) -> torch.Tensor:
        """(contrasts, y, x) complex or real image of one twin, before the network (which runs batched); an
        unrolled recon's network runs inside it when ``unrolled`` (targets are plain SENSE); ``lines`` (N,): the
        weight of each phase-encoding line (learned sampling)."""
        weights = None if lines is None else lines[raw.labels["kspace_encode_step_1"].to(lines.device)]
        return self.recon(raw, network=unrolled, weights=weights).data[0, :, 0]

    def target(self, index: int) -> tuple[torch.Tensor, float, float]:
        """(target, scale, reference max |signal|) of twin ``index``: the target is (contrasts, y, x) scaled
        for image targets, (y, x) T1 in s for ``t1``; cached (a trained λ keeps the target of its first value)."""
        if index in self._targets:
            return self._targets[index]
        t = self.task.task.target
        peak = 1.0
        with torch.no_grad():
            if t.kind == "reference":
                raw = self._reference_raw(index)
                peak = float(raw.kdata.abs().max())
                image = self._image(raw)
                image = image.abs() if self.task.task.recon.magnitude else image
                scale = float(image.abs().max())
                value = image / scale
            elif t.kind == "t1":
                value, scale = self._twin(index).t1[0].to(self.device), 1.0
            elif t.kind == "mask":
                twin = self._twin(index)
                assert twin.labels is not None, "mask targets need twins with labels"
                value = torch.isin(twin.labels[0], torch.tensor(t.labels)).float()[None].to(self.device)
                scale = 1.0
            else:
                assert self.task.target_image is not None
                value = torch.from_numpy(self.task.target_image).float()[None].to(self.device)
                scale = 1.0
        self._targets[index] = (value, scale, peak)
        return self._targets[index]

    # ---- forward ----------------------------------------------------------------------------------------
    def forward(self, indices: list[int], seeds: list[int], *, train_sequence: bool = True,
                on_reference: bool = False, binary_sampling: bool = False) -> Outputs:
        """Simulate, reconstruct and scale twins ``indices`` with noise seeds ``seeds`` (measured scans: take them,
        their lines weighted by the sampling mask, and reconstruct and scale them).

        train_sequence: differentiate through the simulation (else, and always when no sequence parameter
        trains, the signals of the current sequence are cached and reused); on_reference: use the reference
        sequence (recon pretraining, SPIN); binary_sampling: the binary line mask of ``sampling`` (validation),
        else a relaxed one drawn for this batch (from its noise seeds).
        """
        t = self.task.task
        lines = None
        if self.sampling is not None and not on_reference:
            lines = self.sampling.weights(binary=binary_sampling, seed=noise_seed(*seeds))
        if isinstance(self.data, MeasuredSet):  # the scans undersampled by the line weights; nothing simulated
            seq = self.params.sequence().detach()  # the template (no sequence parameter trains), for its losses
            raws = [self.data.fully_sampled(i) if on_reference else self.data.scan(i, seed)
                    for i, seed in zip(indices, seeds, strict=True)]
            images = [self._image(raw.to(self.device), unrolled=self.recon.unrolled is not None, lines=lines)
                      for raw in raws]
        else:
            seq, images = self._simulated_images(indices, seeds, lines, train_sequence and len(self.params.raw) > 0,
                                                 on_reference)
        targets, scales = [], []
        for i, image in zip(indices, images, strict=True):
            target, scale, _ = self.target(i)
            if t.target.kind not in ("reference", "t1"):
                scale = float(image.detach().abs().max())
            targets.append(target)
            scales.append(scale)
        stacked = torch.stack(images)  # (batch, contrasts, y, x)
        if self.recon.network is not None:
            stacked = self.recon.network(stacked[:, :, None])[:, :, 0]
        if t.recon.magnitude or self.mlp is not None:
            stacked = stacked.abs()
        stacked = stacked / torch.tensor(scales, dtype=stacked.real.dtype, device=stacked.device)[:, None, None, None]
        out = Outputs(images=stacked, targets=torch.stack(targets), sequence=seq)
        if self.mlp is not None:
            assert isinstance(t.target, T1Target)
            mask = torch.stack([self._twin(i).pd[0] > t.target.pd_threshold for i in indices]).to(self.device)
            out.t1, out.mask = self.mlp(stacked), mask
        return out

    def _simulated_images(self, indices: list[int], seeds: list[int], lines: torch.Tensor | None,
                          train_sequence: bool, on_reference: bool) -> tuple[Sequence, list[torch.Tensor]]:
        """The sequence (or the reference) simulated on twins ``indices`` and reconstructed before the network:
        (the sequence, one (contrasts, y, x) image per twin)."""
        if on_reference:
            assert self.reference is not None
            seq = self.reference.to(self.device)
            signals = [self._reference_signal(i) for i in indices]
        else:
            seq = self.params.sequence()
            signals = self.simulate(seq, indices) if train_sequence else self.cached_signals(seq, indices)
            seq = seq if train_sequence else seq.detach()
        images = []
        for i, signal, seed in zip(indices, signals, seeds, strict=True):
            if self.recon.unrolled is not None or lines is not None:
                image = self._image(self.raw(seq, signal, i, seed), unrolled=self.recon.unrolled is not None,
                                    lines=lines)
            elif (train_sequence or self.task.task.data.noise or on_reference
                  or self.recon.log_tikhonov is not None):
                image = self._image(self.raw(seq, signal, i, seed))
            else:  # a fixed sequence without noise through a fixed solver: the image is as fixed as the signal
                image = self._fixed_image(seq, signal, i)
            images.append(image)
        return seq, images

    def _fixed_image(self, seq: Sequence, signal: torch.Tensor, index: int) -> torch.Tensor:
        """The noise-free base image of a cached signal, cached alongside it (keyed by the signal)."""
        key = ("image", index)
        cached = self._images.get(key)
        if cached is None or cached[0] is not signal:
            with torch.no_grad():
                cached = (signal, self._image(self.raw(seq, signal, index, 0)))
            self._images[key] = cached
        return cached[1]

    def _reference_raw(self, index: int) -> RawData:
        """Noise-free RawData of the reference sequence on twin ``index``, or measured scan ``index`` fully
        sampled."""
        if isinstance(self.data, MeasuredSet):
            return self.data.fully_sampled(index).to(self.device)
        assert self.reference is not None
        return to_rawdata(self.reference.to(self.device), self._reference_signal(index))

    def _twin(self, index: int) -> Twin:
        assert isinstance(self.data, TwinSet), "measured scans have no twin"
        return self.data[index]

    def _reference_signal(self, index: int) -> torch.Tensor:
        """Noise-free reference signal of twin ``index`` (cached like the targets)."""
        key = -1 - index
        if key not in self._signals:
            assert self.reference is not None
            with torch.no_grad():
                self._signals[key] = self.simulate(self.reference.to(self.device), [index])[0]
        return self._signals[key]

    def loss_terms(self, out: Outputs) -> dict[str, torch.Tensor]:
        """Every loss term of the task (weighted) and their sum under 'loss'."""
        terms: dict[str, torch.Tensor] = {}
        for spec in self.task.task.losses:
            if isinstance(spec, ImageLoss):
                if out.t1 is not None:
                    assert out.mask is not None
                    pred, ref = out.t1[out.mask], out.targets[out.mask]
                    value = losses.l1(pred, ref) if spec.kind == "l1" else losses.mse(pred, ref)
                else:
                    images = losses.fit_scale(out.images, out.targets) if spec.scale_invariant else out.images
                    if spec.kind == "ssim":
                        value = 1 - losses.ssim(images.abs(), out.targets.abs())
                    else:
                        value = getattr(losses, spec.kind)(images, out.targets)
            elif isinstance(spec, SarLoss):
                if spec.model == "flip_squared":
                    value = losses.flip_squared(out.sequence)
                else:
                    system = self.task.systems[spec.system]
                    value = losses.sar_estimate(out.sequence, system, patient_kg=spec.patient_kg)
            elif isinstance(spec, ScanTimeLoss):
                value = losses.scan_time(out.sequence)
            else:
                assert isinstance(spec, HardwareLoss)
                value = losses.hardware_penalty(out.sequence, self.task.systems[spec.system], margin=spec.margin)
            terms[spec.kind] = terms.get(spec.kind, 0) + spec.weight * value
        terms["loss"] = torch.stack([v for v in terms.values()]).sum()
        return terms

    def metrics(self, out: Outputs) -> dict[str, float]:
        """Validation metrics: PSNR, SSIM (magnitudes), NRMSE (as compared: complex or magnitude) of the images
        (after the least-squares scale when an image loss is scale-invariant), or the T1 error."""
        with torch.no_grad():
            if out.t1 is not None:
                assert out.mask is not None
                pred, ref = out.t1[out.mask], out.targets[out.mask]
                return {"t1_mae_s": float((pred - ref).abs().mean()),
                        "t1_rel_err": float(((pred - ref).abs() / ref).mean()),
                        "nrmse": float(losses.nrmse(pred, ref))}
            images = out.images
            if any(isinstance(s, ImageLoss) and s.scale_invariant for s in self.task.task.losses):
                images = losses.fit_scale(images, out.targets)  # judged as the loss judges them
            x, y = images.abs(), out.targets.abs()
            return {"psnr": float(losses.psnr(x, y)), "ssim": float(losses.ssim(x, y)),
                    "nrmse": float(losses.nrmse(images, out.targets))}
