"""Virtual line readouts: a readout that crosses several k-space lines, split into one row per line.

Some EPIs sample the whole echo train with ONE ADC event (the pulseq tutorials' single-trajectory EPI: ramps,
flat tops and the y blips between them all sampled). Such a readout is not line-like (its k_y changes), so the
line regridding and N/2 ghost correction (``mrbridge.recon.regrid``, ``mrbridge.recon.epi``) would not apply.
Here it becomes *virtual line readouts*: the runs of consecutive samples along which k_y and k_z stay constant
(the plateaus between blips), each a row of its own with its own k_x samples. The samples during the blips
belong to no line and are dropped.

- A run is a maximal stretch of samples whose k_y and k_z (in grid steps) change by less than STILL from the
  sample before and to the sample after. k is known only at the samples, so a sample next to one that moved
  may already lie in the blip (a few tenths of a µs in, its k_y off by less than STILL but its k_x past the
  plateau's, which would widen the k_x grid by two points): it belongs to no line, and the lines end where
  the blips begin, at the cost of one sample at each k_x edge of a line.
- A run counts as a line when its k_x spans at least MIN_FRACTION of the longest span found, it is at least
  MIN_FRACTION of the median line's length, and its k_y, k_z spread is below GRID_TOLERANCE (so each row is
  line-like by the regridding's own test). Lines must hold MIN_FRACTION of every kept readout's samples, else
  nothing is split (a spiral, radial spokes).
- Rows must have one sample count, the median line length: a longer run keeps the window of that many
  consecutive samples centred on its sample nearest k_x = 0 (e.g. the first and last line of a train, which
  have no blip on one side, lose only samples at their k_x ends, beyond those of the other lines; runs that
  differ by one sample from ramp timing lose one end sample); a shorter run (a line the ADC cut: it started
  late or ended early) repeats its last sample. A repeated sample is the same measurement at the same k, which
  the least-squares regridding merely weighs more, so nothing is invented or interpolated here: the rows are
  the measured samples at their own k, and the regridding that follows stays exact. (A delay the ghost
  correction applies moves the k_x of a line's samples; its repeated copies keep the edge's k_x.)
- Each row's ``kspace_encode_step_1`` (and ``_2`` for 3-D) is the k-step of its k_y (k_z) at the row's
  sample nearest k_x = 0, as ``mrbridge.raw.seqreadouts`` labels line readouts; all other labels and flags
  are those of the readout the row comes from. This relabelling is the recon's view only: the RawData it was
  given is not modified.

The split is index selection, so the view's kdata (and traj) are differentiable w.r.t. the input's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mrbridge.raw.rawdata import RawData
from mrbridge.recon.regrid import GRID_TOLERANCE, line_like

#: k_y, k_z changes between neighbouring samples below this many grid steps count as no change
STILL = 1e-3
#: a run is a line when its k_x span and its length reach this fraction of the longest span / median length;
#: the lines must hold this fraction of every readout's samples
MIN_FRACTION = 0.5


@dataclass(frozen=True)
class Lines:
    """Where the virtual lines lie in the source readouts.

    readout: (rows,) int64 source readout of each row;  first, last: (rows,) int64 the first and last sample of
    its run;  start: (rows,) int64 the sample the row starts at;  length: samples per row;  centre: (rows,)
    int64 the row's sample nearest k_x = 0 (index within the row)
    """

    readout: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    start: torch.Tensor
    length: int
    centre: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.readout.shape[0])

    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, length) readout and sample indices of every row's samples (a run shorter than ``length``
        repeats its edge samples)."""
        samples = self.start[:, None] + torch.arange(self.length, device=self.start.device)
        samples = torch.minimum(torch.maximum(samples, self.first[:, None]), self.last[:, None])
        return self.readout[:, None].expand_as(samples), samples

    def repeated(self) -> int:
        """Samples repeated to fill rows of runs shorter than ``length``."""
        return int((self.start + self.length - 1 - self.last).clamp_min(0).sum())


def find_lines(traj: torch.Tensor, fov: tuple[float, float, float], keep: torch.Tensor) -> Lines | None:
    """The virtual lines of the kept readouts, or None when they are line-like already or do not split into
    lines (a spiral, radial spokes, an FID).

    traj: (readouts, samples, 3) 1/m;  keep: (readouts,) bool, the imaging readouts
    """
    keep = keep.to(traj.device)
    if not bool(keep.any()) or bool(line_like(traj[keep], fov).all()):
        return None
    rows = keep.nonzero()[:, 0]
    scale = torch.tensor(fov, dtype=torch.float64, device=traj.device)
    steps = traj.detach()[rows].double() * scale  # (kept, samples, 3) in grid steps
    kept, samples = steps.shape[:2]
    moving = (steps[:, 1:, 1:] - steps[:, :-1, 1:]).abs().amax(-1) >= STILL  # (kept, samples − 1): s → s + 1
    edge = torch.zeros(kept, 1, dtype=torch.bool, device=traj.device)
    still = ~(torch.cat([edge, moving], 1) | torch.cat([moving, edge], 1))  # no move into s nor out of s
    starts = (still & ~torch.cat([edge, still[:, :-1]], 1)).reshape(-1)
    pick = still.reshape(-1).nonzero()[:, 0]  # flat index (readout·samples + sample) of every still sample
    if pick.numel() < 2:
        return None
    run = (torch.cumsum(starts.to(torch.int64), 0) - 1)[pick]  # run of every still sample, in order
    n_runs = int(run[-1]) + 1
    length = torch.bincount(run, minlength=n_runs)
    first = starts.nonzero()[:, 0]  # flat index of each run's first sample
    flat = steps.reshape(-1, 3)[pick]

    def spread(values: torch.Tensor) -> torch.Tensor:
        hi = values.new_full((n_runs,), -torch.inf).scatter_reduce(0, run, values, "amax")
        lo = values.new_full((n_runs,), torch.inf).scatter_reduce(0, run, values, "amin")
        return hi - lo

    span = spread(flat[:, 0])
    if float(span.max()) <= GRID_TOLERANCE:
        return None  # no k_x encoding along the readouts
    flat_yz = torch.maximum(spread(flat[:, 1]), spread(flat[:, 2]))
    line = (span >= MIN_FRACTION * span.max()) & (flat_yz < GRID_TOLERANCE) & (length >= 2)
    if not bool(line.any()):
        return None
    line &= length >= MIN_FRACTION * length[line].double().median()
    source = first // samples  # (runs,) index into the kept readouts
    covered = torch.zeros(kept, dtype=torch.int64, device=traj.device).index_add(0, source[line], length[line])
    if bool((covered < MIN_FRACTION * samples).any()):
        return None  # some readout is mostly not lines
    common = int(length[line].median())
    # each line's sample nearest k_x = 0 (the first of equals), as a flat index
    dist = flat[:, 0].abs()
    nearest = dist.new_full((n_runs,), torch.inf).scatter_reduce(0, run, dist, "amin")
    beyond = kept * samples
    at_min = torch.where(dist == nearest[run], pick, beyond)
    zero = torch.full((n_runs,), beyond, device=traj.device).scatter_reduce(0, run, at_min, "amin")
    start = torch.minimum(torch.maximum(zero - common // 2, first), (first + length - common).clamp_min(first))
    offset = (first - source * samples)[line]
    return Lines(readout=rows[source[line]], first=offset, last=offset + length[line] - 1,
                 start=(start - first)[line] + offset, length=common, centre=(zero - start)[line])


def _encode_steps(k_steps: torch.Tensor, n: int) -> torch.Tensor:
    """(rows,) int64 encoding steps round(k·FOV) + n//2; lines spanning n steps one off the centred grid are
    moved onto it (as ``mrbridge.raw.seqreadouts`` does: a whole k-step is only a linear phase)."""
    steps = torch.round(k_steps).to(torch.int64) + n // 2
    lo, hi = int(steps.min()), int(steps.max())
    if hi - lo < n and (lo < 0 or hi >= n):
        steps = steps - (lo if lo < 0 else hi - n + 1)
    return steps.clamp_min(0)


def virtual_lines(raw: RawData, kdata: torch.Tensor, keep: torch.Tensor
                  ) -> tuple[RawData, torch.Tensor, dict[str, str]]:
    """The recon's view of ``raw`` with multi-line readouts split into virtual line readouts (see the module
    docstring); ``raw``, ``kdata`` and no meta when there is nothing to split.

    kdata: (coils, readouts, samples) complex, as the recon uses it (e.g. prewhitened);  keep: (readouts,) bool,
    the imaging readouts (only these become rows; the others are left out of the view).
    Returns (view with kdata (coils, rows, length), the same kdata, Image meta entries).
    """
    if raw.traj is None:
        return raw, kdata, {}
    fov = raw.header.encoded_fov
    lines = find_lines(raw.traj, fov, keep)
    if lines is None:
        return raw, kdata, {}
    ro, s = lines.index()
    ro, s = ro.to(kdata.device), s.to(kdata.device)
    view_k = kdata[:, ro, s]
    traj = raw.traj.to(kdata.device)[ro, s]
    centre = traj.detach()[torch.arange(lines.rows, device=kdata.device), lines.centre.to(kdata.device)].double()
    labels = {k: v.to(kdata.device)[ro[:, 0]] for k, v in raw.labels.items()}
    _, ny, nz = raw.header.encoded_matrix
    labels["kspace_encode_step_1"] = _encode_steps(centre[:, 1] * fov[1], ny)
    if nz > 1:
        labels["kspace_encode_step_2"] = _encode_steps(centre[:, 2] * fov[2], nz)
    assert raw.flags is not None
    sample_time = None if raw.sample_time is None else raw.sample_time.to(kdata.device)[ro, s]
    view = replace(raw, kdata=view_k, traj=traj, labels=labels, flags=raw.flags.to(kdata.device)[ro[:, 0]],
                   sample_time=sample_time, center_sample=int(torch.mode(lines.centre).values))
    kept = int(keep.sum())
    repeated = lines.repeated()
    dropped = kept * raw.samples - (lines.rows * lines.length - repeated)
    meta = {"virtual_lines": f"{lines.rows} lines of {lines.length} samples from {kept} readout(s) of "
                             f"{raw.samples} samples ({dropped} samples between or beyond the lines left out, "
                             f"{repeated} repeated to fill short lines)"}
    return view, view_k, meta
