"""Training loop of an optimization task: phases, checkpoints, exact resume, validation, the run bundle.

The run is a flat list of steps divided into phases (random-restart trials, recon pretraining, sequence and
recon rounds, or joint steps). Everything random is derived from (seed, step, twin index), so step ``n``
does the same thing whether the run got there directly or resumed from a checkpoint: a checkpoint (written
atomically every ``checkpoint_every`` steps: parameters, optimizers, history, RNG states) is all a resume
needs, and a run killed at any moment loses at most the steps since the last checkpoint.

Bundle (DESIGN.md): ``sequence.json`` (+ ``sampling.json``), ``recon.json`` + ``recon.pt`` (+ ``mlp.pt``),
``task.yaml``, ``history.csv``, ``summary.json``, ``plots/``, ``checkpoints/last.pt``. The bundle files are written
at the start and again, atomically, after every checkpoint, so a killed run is usable as it stands (``recon
--with``, ``export``, ``compare --with``): its ``summary.json`` says ``"partial": true`` and the step it reflects,
until the run ends (``plots/`` only then). The folder is locked while a run writes it (:mod:`mrbridge.runlock`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrbridge.atomic import atomic_path, atomic_write_text
from mrbridge.errors import InputError, MrbridgeError
from mrbridge.optimize import losses
from mrbridge.optimize.data import TwinSet
from mrbridge.optimize.distributed import Dist, setup, teardown
from mrbridge.optimize.measured import MeasuredSet
from mrbridge.optimize.model import JointModel, noise_seed
from mrbridge.optimize.plots import write_plots
from mrbridge.optimize.task import ResolvedTask, Schedule, load_task
from mrbridge.progress import StepProgress
from mrbridge.runlock import LOCK_NAME, RunLock
from mrbridge.sequence.model import Sequence

CHECKPOINT = Path("checkpoints") / "last.pt"
#: the step offset of validation noise seeds (validation noise does not change from one validation to the next)
_VALIDATION = 1 << 30


@dataclass(frozen=True)
class Phase:
    """``steps`` consecutive steps of one kind: trial (restart), recon, sequence or joint; ``final``: the recon
    alone for the binary sampling mask."""

    kind: str
    steps: int
    trial: int = -1
    on_reference: bool = False
    final: bool = False


def phases(task: ResolvedTask) -> list[Phase]:
    """The task's steps, in order."""
    o = task.task.optimizer
    out = [Phase("trial", o.restart_steps, trial=r) for r in range(o.restarts)]
    if o.mode == "joint":
        out.append(Phase("joint", o.iterations))
    else:
        a = o.alternating
        if a.pretrain_steps:
            out.append(Phase("recon", a.pretrain_steps, on_reference=a.pretrain_on == "reference"))
        for _ in range(a.rounds):
            out.append(Phase("sequence", a.sequence_steps))
            if a.recon_steps:
                out.append(Phase("recon", a.recon_steps))
    if o.final_recon_steps:
        out.append(Phase("recon", o.final_recon_steps, final=True))
    return out


def _factor(schedule: Schedule, step: int, total: int) -> float:
    if schedule.kind == "exponential":
        return float(schedule.gamma**step)
    if schedule.kind == "cosine":
        return schedule.final + (1 - schedule.final) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    return 1.0


class Trainer:
    """Runs one task into a bundle folder ``out``.

    >>> Trainer(load_task("protocols/mrzero_gre_from_zero.yaml"), "runs/gre0").run()  # doctest: +SKIP
    """

    def __init__(self, task: ResolvedTask, out: str | Path, *, resume: bool = False, engine: str | None = None,
                 device: torch.device | str = "cpu", progress: bool | None = None, dist: Dist | None = None) -> None:
        self.task, self.out, self.resume = task, Path(out), resume
        self.dist = dist or Dist()
        t = task.task
        seed = t.optimizer.seed
        torch.manual_seed(seed)
        self.data = MeasuredSet(task, device) if t.data.kind == "raw" else \
            TwinSet(t.data, task.protocol.matrix, task.source, task.base)
        self.model = JointModel(task, self.data, engine=engine, device=device)
        self.phases = phases(task)
        self.total = sum(p.steps for p in self.phases)
        self.opt_seq = torch.optim.Adam(self._groups(t.optimizer.lr), lr=t.optimizer.lr,
                                        betas=(t.optimizer.momentum, 0.999))
        recon = self.model.recon_parameters()
        self.opt_recon = torch.optim.Adam(recon, lr=t.optimizer.recon_lr) if recon else None
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best_val = math.inf
        self.bad_validations = 0
        self.stopped = False
        self.initial: dict[str, float] = {}
        self.trial_best: tuple[float, list[torch.Tensor]] | None = None
        # None: a bar on a terminal, plain lines in a log; False: nothing (--quiet); only the main process shows
        self.show = (progress is None or progress) and self.dist.main
        self.plain = progress is None and not sys.stderr.isatty()
        side = task.protocol.fov
        note = self.data[self.data.train[0]].span_note((side, side)) if isinstance(self.data, TwinSet) else None
        self.notes = [note] if note else []
        for note in self.notes:
            if self.show:
                print(f"note: {note}", file=sys.stderr)
        if (self.out / CHECKPOINT).exists():
            if not resume:
                raise InputError(f"{self.out}: holds a checkpoint of an earlier run; resume it (--resume) or "
                                 "choose another output folder")
            self._load()

    def _groups(self, lr: float) -> list[dict[str, Any]]:
        """One optimizer group per task parameter (its own learning rate): the sequence's, then the sampling's."""
        pairs: list[tuple[torch.Tensor, float | None]] = [
            (raw, spec.lr) for raw, spec in zip(self.model.params.raw, self.task.sequence_specs, strict=True)]
        if self.model.sampling is not None:
            pairs.append((self.model.sampling.logits, self.model.sampling.spec.lr))
        return [{"params": [raw], "lr": own or lr, "base_lr": own or lr} for raw, own in pairs]

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "history": self.history, "best_val": self.best_val,
            "bad_validations": self.bad_validations, "stopped": self.stopped, "initial": self.initial,
            "trial_best": self.trial_best,
            "model": self.model.state_dict(), "opt_seq": self.opt_seq.state_dict(),
            "opt_recon": self.opt_recon.state_dict() if self.opt_recon else None,
            "rng": torch.get_rng_state(),
        }

    def _save(self) -> None:
        """A checkpoint, then the history and the (partial) bundle of the same step."""
        if not self.dist.main:
            return
        with atomic_path(self.out / CHECKPOINT) as tmp:
            torch.save(self._state(), tmp)
        self._write_history()
        self._write_bundle(partial=True)

    def _load(self) -> None:
        state = torch.load(self.out / CHECKPOINT, map_location=self.model.device, weights_only=True)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:  # another task's parameters or recon (another matrix, network, parameter)
            reason = str(err).splitlines()[-1].strip().rstrip(".")
            raise InputError(f"{self.out / CHECKPOINT}: a checkpoint of another task ({reason}); expected a run of "
                             f"{self.task.source} (the task that made it is {self.out / 'task.yaml'}), or choose "
                             "another output folder") from None
        self.opt_seq.load_state_dict(state["opt_seq"])
        if self.opt_recon is not None:
            self.opt_recon.load_state_dict(state["opt_recon"])
        self.step, self.history = state["step"], state["history"]
        self.best_val, self.bad_validations = state["best_val"], state["bad_validations"]
        self.stopped, self.trial_best = state["stopped"], state["trial_best"]
        self.initial = state["initial"]
        torch.set_rng_state(state["rng"])

    def _write_history(self) -> None:
        if not self.history:
            return
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    # ---- steps -------------------------------------------------------------------------------------------
    def _phase(self, step: int) -> tuple[Phase, int]:
        start = 0
        for phase in self.phases:
            if step < start + phase.steps:
                return phase, step - start
            start += phase.steps
        raise IndexError(step)

    def _batch(self, step: int) -> list[int]:
        train = self.data.train
        size = self.task.task.optimizer.batch
        if size >= len(train):
            return list(train)
        rng = np.random.default_rng([self.task.task.optimizer.seed, step])
        return sorted(int(i) for i in rng.choice(train, size=size, replace=False))

    def _begin(self, phase: Phase) -> None:
        """Work at a phase's first step: a new trial re-draws the random initial values."""
        if phase.kind == "trial":
            self.model.params.initialize(self.task.task.optimizer.seed + 1 + phase.trial)
            self.opt_seq.state.clear()
        if phase.kind in ("recon", "sequence"):
            self.model.forget_signals()

    def _end(self, phase: Phase, loss: float) -> None:
        """A trial's last step: keep the best trial; after the last trial continue from the best."""
        if phase.kind != "trial":
            return
        raws = [r.detach().clone() for r in self.model.params.raw]
        if self.trial_best is None or loss < self.trial_best[0]:
            self.trial_best = (loss, raws)
        if phase.trial == self.task.task.optimizer.restarts - 1:
            with torch.no_grad():
                for raw, best in zip(self.model.params.raw, self.trial_best[1], strict=True):
                    raw.copy_(best)
            self.opt_seq.state.clear()

    def _one_step(self) -> dict[str, Any]:
        phase, local = self._phase(self.step)
        if local == 0:
            self._begin(phase)
        o = self.task.task.optimizer
        factor = _factor(o.schedule, self.step, self.total)
        for group in self.opt_seq.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.opt_recon is not None:
            for group in self.opt_recon.param_groups:
                group["lr"] = o.recon_lr * factor
        train_seq = phase.kind in ("trial", "sequence", "joint")
        train_recon = phase.kind in ("recon", "joint") and self.opt_recon is not None
        batch = self._batch(self.step)
        mine = self.dist.shard(batch)
        seeds = [noise_seed(o.seed, self.step, i) for i in mine]
        self.opt_seq.zero_grad(set_to_none=True)
        if self.opt_recon is not None:
            self.opt_recon.zero_grad(set_to_none=True)
        share = len(mine) / len(batch)
        if mine:
            out = self.model(mine, seeds, train_sequence=train_seq, on_reference=phase.on_reference,
                             binary_sampling=phase.final)
            terms = self.model.loss_terms(out)
            (terms["loss"] * share).backward()
            seq = out.sequence
        else:  # more processes than twins: contribute zero gradients
            terms, seq = {}, self.model.params.sequence()
        if train_seq:
            self.dist.sum_gradients(self.model.sequence_parameters())
            self.opt_seq.step()
            self.model.params.project()
        if train_recon:
            assert self.opt_recon is not None
            self.dist.sum_gradients(self.model.recon_parameters())
            self.opt_recon.step()
        names = sorted({spec.kind for spec in self.task.task.losses} | {"loss"})  # the same on every process
        summed = self.dist.sum(torch.tensor([float(terms[k].detach()) * share if k in terms else 0.0 for k in names],
                                            dtype=torch.float64))
        row: dict[str, Any] = {"step": self.step + 1, "phase": phase.kind}
        row.update({k: float(v) for k, v in zip(names, summed, strict=True)})
        seq = seq.detach()
        row["sar_flip2"] = float(losses.flip_squared(seq))
        row["scan_time_s"] = float(seq.duration)
        for key, value in self.model.params.values().items():
            row[f"{key}_mean"] = float(value.detach().mean())
        self._end(phase, row.get("loss", math.inf))
        return row

    def validate(self) -> dict[str, float]:
        """Loss and metrics on the validation twins (the training twins when there are none), fixed noise."""
        indices = self.data.validation or self.data.train
        mine = self.dist.shard(indices)
        o = self.task.task.optimizer
        totals: dict[str, float] = {}
        with torch.no_grad():
            for i in mine:
                out = self.model([i], [noise_seed(o.seed, _VALIDATION, i)], train_sequence=True, binary_sampling=True)
                values = {"loss": float(self.model.loss_terms(out)["loss"]), **self.model.metrics(out)}
                for k, v in values.items():
                    totals[k] = totals.get(k, 0.0) + v
        names = self._metric_names()  # the same on every process, even one without validation twins
        summed = self.dist.sum(torch.tensor([totals.get(k, 0.0) for k in names], dtype=torch.float64))
        return {f"val_{k}": float(v) / len(indices) for k, v in zip(names, summed, strict=True)}

    def _metric_names(self) -> list[str]:
        if self.model.mlp is not None:
            return ["loss", "nrmse", "t1_mae_s", "t1_rel_err"]
        return ["loss", "nrmse", "psnr", "ssim"]  # the keys of JointModel.metrics, and the loss

    # ---- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end (or early stop), checkpointing; write the bundle; return the summary."""
        o = self.task.task.optimizer
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "task.yaml", self.task.text)
        if self.step == 0:
            self.initial = self.validate()
            self._write_bundle(partial=True)  # usable from the start: the initial sequence
        progress = StepProgress("optimize", self.total, self.show, self.step, plain=self.plain)
        try:
            while self.step < self.total and not self.stopped:
                phase, local = self._phase(self.step)
                row = self._one_step()
                self.step += 1
                round_done = phase.kind == "recon" and local == phase.steps - 1
                if self.step % o.validate_every == 0 or self.step == self.total or round_done:
                    row.update(self.validate())
                    self._early_stop(row["val_loss"])
                self.history.append(row)
                progress.update(f"loss {row.get('loss', float('nan')):.4g}  SAR α²/s {row['sar_flip2']:.3g}  "
                                f"time {row['scan_time_s']:.3g} s")
                if self.step % o.checkpoint_every == 0 or self.step == self.total or self.stopped:
                    self._save()
        finally:
            progress.close()
        return self._finish()

    def _early_stop(self, value: float) -> None:
        es = self.task.task.optimizer.early_stopping
        if value < self.best_val - (es.min_delta if es else 0.0):
            self.best_val, self.bad_validations = value, 0
        else:
            self.bad_validations += 1
        if es is not None and self.bad_validations >= es.patience:
            self.stopped = True

    def _summary(self, *, partial: bool) -> dict[str, Any]:
        """What ``summary.json`` holds; ``final``: the last validation (of the last step once the run ends)."""
        validated = [row for row in self.history if "val_loss" in row]
        final = {k: v for k, v in validated[-1].items() if k.startswith("val_")} if validated else {}
        return {"task": self.task.task.name, "partial": partial, "steps": self.step, "total_steps": self.total,
                "stopped_early": self.stopped, "engine": self.model.engine, "world": self.dist.world,
                "notes": self.notes, "initial": self.initial, "final": final,
                "final_step": int(validated[-1]["step"]) if validated else 0,
                "parameters": {k: v.detach().cpu().reshape(-1).tolist()
                               for k, v in self.model.params.values().items()},
                **({"sampling": self._sampling()["lines"]} if self.model.sampling is not None else {})}

    def _sampling(self) -> dict[str, Any]:
        """What ``sampling.json`` holds: the binary mask's lines (ACS included), the ACS lines, the budget and
        each line's probability (ACS lines 1)."""
        s = self.model.sampling
        assert s is not None
        probability = torch.ones(s.lines).index_put((s.outer.cpu(),), s.probabilities().detach().cpu())
        return {"matrix": s.lines, "budget": len(s.acs) + s.extra, "lines": s.chosen(), "acs_lines": s.acs,
                "probability": [round(float(p), 6) for p in probability]}

    def _write_bundle(self, *, partial: bool) -> Sequence:
        """Write ``sequence.json`` (learned sampling: only the chosen lines' ADCs), ``sampling.json`` (the
        binary mask, with ``sampling``), ``recon.json`` + ``recon.pt`` (+ ``mlp.pt``), then ``summary.json`` (last:
        its step is that of the files before it); each atomically. Returns the sequence."""
        seq = self.model.bundle_sequence()
        seq.save(self.out / "sequence.json")
        if self.model.sampling is not None:
            atomic_write_text(self.out / "sampling.json", json.dumps(self._sampling(), indent=1) + "\n")
        self.model.recon.to("cpu").save(self.out)
        self.model.recon.to(self.model.device)
        if self.model.mlp is not None:
            with atomic_path(self.out / "mlp.pt") as tmp:
                torch.save(self.model.mlp.state_dict(), tmp)
        atomic_write_text(self.out / "summary.json", json.dumps(self._summary(partial=partial), indent=2) + "\n")
        return seq

    def _finish(self) -> dict[str, Any]:
        summary = self._summary(partial=False)
        if not self.dist.main:
            return summary
        self._write_history()
        seq = self._write_bundle(partial=False)
        write_plots(self.out / "plots", self.history, seq)
        return summary


def optimize(task_path: str | Path, out: str | Path, *, resume: bool = False, device: str | None = None,
             engine: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """What ``mrbridge optimize TASK -o OUT`` runs (also under torchrun): load, train, write the bundle.

    Returns the summary (also written to ``OUT/summary.json``).
    """
    task = load_task(task_path)
    out = Path(out)
    dist, where = setup(device)
    lock = RunLock(out, resume=resume)
    before = set(os.listdir(out)) if out.is_dir() else None
    try:
        _lock_all(lock, dist, where)
        try:
            trainer = Trainer(task, out, resume=resume, engine=engine, device=where, progress=progress, dist=dist)
            return trainer.run()
        except MrbridgeError:
            if dist.main and not (out / CHECKPOINT).exists():  # refused before any result: leave nothing behind
                lock.release()
                _remove_refused_run(out, before)
            raise
    finally:
        lock.release()
        teardown()


def _lock_all(lock: RunLock, dist: Dist, where: torch.device) -> None:
    """The main process takes the run folder's lock; every process learns whether it did (under torchrun the
    others must not start waiting on a main process that has given up)."""
    failure: InputError | None = None
    if dist.main:
        try:
            lock.acquire()
        except InputError as e:
            failure = e
    if dist.world > 1:
        ok = dist.sum(torch.tensor([0.0 if failure else 1.0], dtype=torch.float64, device=where))
        if failure is None and float(ok.sum()) < dist.world:
            failure = InputError(f"{lock.folder}: refused by the main process (rank 0); see its message")
    if failure is not None:
        raise failure


#: what a run writes before its first checkpoint
_STARTED = (LOCK_NAME, "task.yaml", "sequence.json", "sampling.json", "recon.json", "recon.pt", "mlp.pt",
            "summary.json", "history.csv")


def _remove_refused_run(folder: Path, before: set[str] | None) -> None:
    """Remove what a run refused before its first checkpoint wrote (not what was there before it started), and
    the folder if the run created it and it is empty now."""
    for name in set(_STARTED) - (before or set()):
        (folder / name).unlink(missing_ok=True)
    if before is None:
        try:
            folder.rmdir()
        except OSError:
            pass
