"""ISMRMRD (MRD) raw data files ↔ RawData, through the ismrmrd package's schema and on-disk acquisition type.

Both directions are vectorised: the whole acquisition table is one structured numpy array of
``ismrmrd.hdf5.acquisition_dtype`` (header fields filled column-wise), read and written by h5py in one call.

File conventions (what a scanner's converted raw data carries, and what mrbridge adds):

* XML header built with the ismrmrd schema classes: one encoding (encoded and recon space with FOV in mm,
  encoding limits from the labels, trajectory type), acquisition system (vendor, model, field strength,
  receiver channels), H1 resonance frequency, measurement information, sequence parameters (TR/TE in ms,
  flip angle in degrees). :class:`RawData.provenance` entries travel as user string parameters
  ``mrbridge.provenance.KEY``.
* The noise scan (``RawData.noise``) comes first, as acquisitions flagged ``ACQ_IS_NOISE_MEASUREMENT``, split
  into pieces of the readout length; on reading, every noise acquisition is concatenated into ``noise``.
* One acquisition per readout with its labels (``idx``), flags, ``center_sample``, ``sample_time_us`` (dwell),
  all channels active, and ``acquisition_time_stamp`` = time of its first sample in ticks of
  ``mrbridge.time_stamp_tick_s`` (user double parameter, 1 µs when mrbridge writes; 2.5 ms, the Siemens
  convention Gadgetron assumes, when a file does not say).
* Trajectory (non-Cartesian only): ``traj`` holds k·FOV/matrix of the *encoded* space per axis, so the encoded
  grid spans [−0.5, 0.5) as Gadgetron expects; 2 dimensions (kx, ky) when the encoded matrix has one
  partition and kz is zero, else 3. Reading multiplies by matrix/FOV back to 1/m, for any file that
  stores one (also a Cartesian file written with coordinates).
* Reading flips readouts flagged ``ACQ_IS_REVERSE`` (samples and trajectory) so that every readout runs
  forward, and clears that flag. Readout oversampling is kept: the header records the encoded and the recon
  matrix and FOV, and recon crops.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from ismrmrd import xsd
from ismrmrd.constants import ACQ_IS_NOISE_MEASUREMENT, ACQ_IS_REVERSE
from ismrmrd.hdf5 import acquisition_dtype
from xsdata.exceptions import ParserError

from mrbridge.atomic import atomic_path
from mrbridge.errors import InputError
from mrbridge.raw.rawdata import LABELS, RawData, RawHeader

#: ticks of ``acquisition_time_stamp`` in files mrbridge writes (s)
TIME_STAMP_TICK = 1e-6
#: tick assumed for files that do not record theirs (Siemens, as Gadgetron assumes) (s)
DEFAULT_TIME_STAMP_TICK = 2.5e-3
_TICK_PARAM = "mrbridge.time_stamp_tick_s"
_PROVENANCE = "mrbridge.provenance."
_NOISE_BIT = 1 << (ACQ_IS_NOISE_MEASUREMENT - 1)
_REVERSE_BIT = 1 << (ACQ_IS_REVERSE - 1)
_U16 = 65535


# --------------------------------------------------------------------------------------------------- writing


def _limit(values: np.ndarray, center: int = 0) -> xsd.limitType:
    return xsd.limitType(minimum=int(values.min()), maximum=int(values.max()), center=center)


def _xml_header(raw: RawData) -> str:
    """The ISMRMRD XML header of ``raw`` (schema classes of the ismrmrd package)."""
    h = raw.header
    labels = {k: v.cpu().numpy() for k, v in raw.labels.items()}

    def space(fov: tuple[float, float, float], matrix: tuple[int, int, int]) -> xsd.encodingSpaceType:
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0] * 1e3, y=fov[1] * 1e3, z=fov[2] * 1e3),
        )

    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=raw.samples - 1, center=raw.center_sample),
        kspace_encoding_step_1=_limit(labels["kspace_encode_step_1"], h.encoded_matrix[1] // 2),
        kspace_encoding_step_2=_limit(labels["kspace_encode_step_2"], h.encoded_matrix[2] // 2),
        average=_limit(labels["average"]),
        slice=_limit(labels["slice"]),
        contrast=_limit(labels["contrast"]),
        phase=_limit(labels["phase"]),
        repetition=_limit(labels["repetition"]),
        set=_limit(labels["set"]),
        segment=_limit(labels["segment"]),
    )
    encoding = xsd.encodingType(
        encodedSpace=space(h.encoded_fov, h.encoded_matrix),
        reconSpace=space(h.recon_fov, h.recon_matrix),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType(h.trajectory),
    )
    user = xsd.userParametersType(
        userParameterDouble=[xsd.userParameterDoubleType(name=_TICK_PARAM, value=TIME_STAMP_TICK)],
        userParameterString=[
            xsd.userParameterStringType(name=_PROVENANCE + k, value=v) for k, v in raw.provenance.items()
        ],
    )
    header = xsd.ismrmrdHeader(
        measurementInformation=xsd.measurementInformationType(
            protocolName=h.sequence_name,
            sequenceName=h.sequence_name,
            patientPosition=xsd.patientPositionType.HFS,
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor=h.system_vendor,
            systemModel=h.system_model,
            systemFieldStrength_T=h.field_strength_t,
            receiverChannels=raw.coils,
        ),
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=round(h.larmor_hz)),
        encoding=[encoding],
        sequenceParameters=xsd.sequenceParametersType(
            TR=[t * 1e3 for t in h.tr], TE=[t * 1e3 for t in h.te], flipAngle_deg=list(h.flip_angle_deg)
        )
        if h.tr or h.te or h.flip_angle_deg
        else None,
        userParameters=user,
    )
    return str(xsd.ToXML(header, encoding="utf-8"))  # provenance may hold any text (paths, units)


def _table(n: int, samples: int, coils: int, dwell: float, traj_dims: int) -> np.ndarray:
    """An acquisition table of ``n`` rows with the fields every acquisition shares."""
    table = np.zeros(n, dtype=acquisition_dtype)
    head = table["head"]
    head["version"] = 1
    head["number_of_samples"] = samples
    head["available_channels"] = coils
    head["active_channels"] = coils
    mask = np.zeros(16, dtype=np.uint64)
    for c in range(coils):
        mask[c // 64] |= np.uint64(1 << (c % 64))
    head["channel_mask"] = mask
    head["trajectory_dimensions"] = traj_dims
    head["sample_time_us"] = dwell * 1e6
    head["read_dir"] = (1.0, 0.0, 0.0)
    head["phase_dir"] = (0.0, 1.0, 0.0)
    head["slice_dir"] = (0.0, 0.0, 1.0)
    return table


def _rows(values: np.ndarray) -> np.ndarray:
    """(n, m) float32 → (n,) object array of row views (the variable-length columns)."""
    out = np.empty(values.shape[0], dtype=object)
    out[:] = list(np.ascontiguousarray(values, dtype=np.float32))
    return out


def _noise_table(noise: torch.Tensor, samples: int, dwell: float) -> np.ndarray:
    """Noise acquisitions of (at most) ``samples`` samples each, in order."""
    noise_np = noise.detach().cpu().numpy().astype(np.complex64)
    coils, total = noise_np.shape
    step = max(1, min(samples, _U16))
    starts = range(0, total, step)
    tables = []
    for s in starts:  # one numpy block per noise acquisition (a scan has a handful)
        block = noise_np[:, s : s + step]
        t = _table(1, block.shape[1], coils, dwell, 0)
        t["head"]["flags"] = _NOISE_BIT
        t["data"][0] = block.reshape(-1).view(np.float32)
        t["traj"][0] = np.zeros(0, dtype=np.float32)
        tables.append(t)
    return np.concatenate(tables) if tables else np.zeros(0, dtype=acquisition_dtype)


def _check_range(path: Path, name: str, values: np.ndarray, high: int) -> None:
    if values.size and (values.min() < 0 or values.max() > high):
        raise InputError(
            f"{path}: {name} = {int(values.min())}..{int(values.max())}; ISMRMRD stores 0..{high}"
        )


def write_mrd(raw: RawData, path: str | Path, *, group: str = "dataset") -> None:
    """Write ``raw`` as an ISMRMRD file (atomically), the way a scanner's converted raw data looks.

    Parameters
    ----------
    raw : RawData
        kdata (coils, readouts, samples) complex; traj (readouts, samples, 3) 1/m, written only when
        ``raw.header.trajectory != "cartesian"``; noise (coils, noise_samples) complex, written first.
    path : str or Path
        Output file; replaced atomically.
    group : str
        HDF5 group of the dataset.
    """
    path = Path(path)
    h = raw.header
    coils, n_ro, n_s = raw.kdata.shape
    _check_range(path, "samples per readout", np.array([n_s]), _U16)
    _check_range(path, "coils", np.array([coils]), _U16)
    labels = {k: raw.labels[k].detach().cpu().numpy() for k in LABELS}
    for name, values in labels.items():
        _check_range(path, f"label {name}", values, _U16)

    traj_dims = 0
    traj_rows: np.ndarray = np.zeros((n_ro, 0), dtype=np.float32)
    if h.trajectory != "cartesian" and raw.traj is not None:
        scale = np.array(h.encoded_fov, dtype=np.float64) / np.array(h.encoded_matrix, dtype=np.float64)
        norm = raw.traj.detach().cpu().double().numpy() * scale  # (readouts, samples, 3), grid in [-0.5, 0.5)
        traj_dims = 3 if h.encoded_matrix[2] > 1 or np.any(norm[..., 2] != 0) else 2
        traj_rows = norm[..., :traj_dims].reshape(n_ro, n_s * traj_dims)

    table = _table(n_ro, n_s, coils, raw.dwell, traj_dims)
    head = table["head"]
    flags = raw.flags if raw.flags is not None else torch.zeros(n_ro, dtype=torch.int64)
    head["flags"] = flags.detach().cpu().numpy().astype(np.uint64)
    head["center_sample"] = raw.center_sample
    head["scan_counter"] = np.arange(1, n_ro + 1)
    if raw.sample_time is not None:
        ticks = np.rint(raw.sample_time[:, 0].detach().cpu().double().numpy() / TIME_STAMP_TICK)
        _check_range(path, "acquisition_time_stamp (µs)", ticks, 2**32 - 1)
        head["acquisition_time_stamp"] = ticks.astype(np.uint32)
    for name in LABELS:
        head["idx"][name] = labels[name]
    # (readouts, coils, samples)
    kdata = raw.kdata.detach().cpu().numpy().astype(np.complex64).transpose(1, 0, 2)
    table["data"] = _rows(kdata.reshape(n_ro, coils * n_s).view(np.float32))
    table["traj"] = _rows(traj_rows)

    if raw.noise is not None:
        table = np.concatenate([_noise_table(raw.noise, n_s, raw.dwell), table])
        table["head"]["scan_counter"] = np.arange(1, table.shape[0] + 1)

    xml = _xml_header(raw)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        g = f.create_group(group)
        g.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
        g["xml"][0] = xml.encode()
        g.create_dataset("data", data=table, maxshape=(None,), chunks=True)


# --------------------------------------------------------------------------------------------------- reading


def _find_group(f: h5py.File, path: Path, group: str | None) -> h5py.Group:
    if group is not None:
        if group not in f or not isinstance(f[group], h5py.Group):
            raise InputError(f"{path}: no group '{group}' (groups: {sorted(f.keys())})")
        return f[group]
    candidates = [k for k, v in f.items() if isinstance(v, h5py.Group) and "data" in v]
    if "dataset" in candidates:
        return f["dataset"]
    if len(candidates) != 1:
        raise InputError(
            f"{path}: expected one ISMRMRD dataset group (e.g. 'dataset') holding 'data'; "
            f"found {sorted(f.keys())}; name it with group="
        )
    return f[candidates[0]]


def _parse_header(xml: bytes | str, path: Path) -> tuple[xsd.ismrmrdHeader, xsd.encodingType]:
    try:
        hdr = xsd.CreateFromDocument(xml)
    except (ParserError, ValueError, TypeError) as err:
        raise InputError(f"{path}: XML header does not follow the ISMRMRD schema ({err})") from err
    if not hdr.encoding:
        raise InputError(f"{path}: XML header has no <encoding>; expected one encoding with matrix and FOV")
    enc = hdr.encoding[0]
    for space_name in ("encodedSpace", "reconSpace"):
        space = getattr(enc, space_name, None)
        if space is None or space.matrixSize is None or space.fieldOfView_mm is None:
            raise InputError(f"{path}: <encoding><{space_name}> lacks matrixSize or fieldOfView_mm")
        fov = space.fieldOfView_mm
        if min(fov.x, fov.y, fov.z) <= 0:
            raise InputError(
                f"{path}: <{space_name}><fieldOfView_mm> = ({fov.x}, {fov.y}, {fov.z}); expected > 0"
            )
    return hdr, enc


def _raw_header(hdr: xsd.ismrmrdHeader, enc: xsd.encodingType, xml: str, coils: int) -> RawHeader:
    def fov(space: xsd.encodingSpaceType) -> tuple[float, float, float]:
        f = space.fieldOfView_mm
        return (f.x * 1e-3, f.y * 1e-3, f.z * 1e-3)

    def matrix(space: xsd.encodingSpaceType) -> tuple[int, int, int]:
        m = space.matrixSize
        return (int(m.x), int(m.y), int(m.z))

    system = hdr.acquisitionSystemInformation
    larmor = float(hdr.experimentalConditions.H1resonanceFrequency_Hz)
    field = system.systemFieldStrength_T if system and system.systemFieldStrength_T else larmor / 42.577478e6
    info = hdr.measurementInformation
    seq = hdr.sequenceParameters
    trajectory = enc.trajectory.value
    return RawHeader(
        sequence_name=(info and (info.sequenceName or info.protocolName)) or "unknown",
        trajectory=trajectory if trajectory in ("cartesian", "radial", "spiral", "epi") else "other",
        encoded_fov=fov(enc.encodedSpace),
        encoded_matrix=matrix(enc.encodedSpace),
        recon_fov=fov(enc.reconSpace),
        recon_matrix=matrix(enc.reconSpace),
        field_strength_t=float(field),
        larmor_hz=larmor,
        te=[t * 1e-3 for t in seq.TE] if seq else [],
        tr=[t * 1e-3 for t in seq.TR] if seq else [],
        flip_angle_deg=list(seq.flipAngle_deg) if seq else [],
        coils=int(system.receiverChannels) if system and system.receiverChannels else coils,
        system_vendor=(system and system.systemVendor) or "unknown",
        system_model=(system and system.systemModel) or "unknown",
        xml=xml,
    )


def _user_parameters(hdr: xsd.ismrmrdHeader) -> tuple[float, dict[str, str]]:
    user = hdr.userParameters
    tick = DEFAULT_TIME_STAMP_TICK
    provenance: dict[str, str] = {}
    if user is not None:
        for p in user.userParameterDouble:
            if p.name == _TICK_PARAM:
                tick = float(p.value)
        for s in user.userParameterString:
            if s.name.startswith(_PROVENANCE):
                provenance[s.name[len(_PROVENANCE) :]] = s.value
    return tick, provenance


def _stack(column: np.ndarray, path: Path, what: str) -> np.ndarray:
    """(n,) object array of equal-length float32 arrays → (n, m) float32."""
    lengths = {len(a) for a in column}
    if len(lengths) > 1:
        raise InputError(f"{path}: {what} differ in length ({sorted(lengths)}); expected one length")
    return np.stack(list(column)) if len(column) else np.zeros((0, 0), dtype=np.float32)


def read_mrd(path: str | Path, *, group: str | None = None) -> RawData:
    """Read an ISMRMRD raw data file into RawData (vectorised over acquisitions).

    Parameters
    ----------
    path : str or Path
        ISMRMRD HDF5 file (written by mrbridge, the ismrmrd tools, or a scanner converter).
    group : str, optional
        Dataset group; default ``dataset``, or the file's only group holding acquisitions.

    Returns
    -------
    RawData
        kdata (coils, readouts, samples) complex64 (a strided view of the file's (readouts, coils, samples)
        table) with reversed readouts flipped forward; noise
        (coils, noise_samples) from the noise acquisitions; traj (readouts, samples, 3) 1/m when the file
        stores one; labels and flags per readout; header with the full XML in ``header.xml``.

    Raises
    ------
    InputError
        Not HDF5 or truncated, no dataset group, header missing encoding/matrix/FOV, acquisitions whose
        sample or channel counts differ.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (expected ISMRMRD raw data)")
    try:
        with h5py.File(path, "r") as f:
            g = _find_group(f, path, group)
            if "xml" not in g:
                raise InputError(f"{path}: group '{g.name}' has no 'xml' header")
            if "data" not in g:
                raise InputError(f"{path}: group '{g.name}' has no acquisitions ('data')")
            xml_raw = g["xml"][0]
            table = g["data"][:]
    except OSError as err:
        raise InputError(f"{path}: cannot read HDF5 (truncated or damaged file?): {err}") from err
    xml = xml_raw.decode() if isinstance(xml_raw, bytes) else str(xml_raw)
    hdr, enc = _parse_header(xml, path)
    tick, provenance = _user_parameters(hdr)

    head = table["head"]
    flags = head["flags"].astype(np.uint64)
    is_noise = (flags & np.uint64(_NOISE_BIT)) != 0
    img = ~is_noise
    if not img.any():
        raise InputError(f"{path}: no imaging acquisitions (only {int(is_noise.sum())} noise scans)")
    h_img = head[img]
    for field in ("number_of_samples", "active_channels"):
        values = np.unique(h_img[field])
        if values.size != 1:
            raise InputError(
                f"{path}: acquisitions differ in {field} ({values.tolist()}); expected one value"
            )
    n_s = int(h_img["number_of_samples"][0])
    coils = int(h_img["active_channels"][0])
    n_ro = int(img.sum())

    data = _stack(table["data"][img], path, "acquisition data").view(np.complex64)
    kdata = data.reshape(n_ro, coils, n_s).transpose(1, 0, 2)  # a strided view, no copy

    noise = None
    if is_noise.any():
        h_noise = head[is_noise]
        if np.any(h_noise["active_channels"] != coils):
            raise InputError(
                f"{path}: noise scans have {np.unique(h_noise['active_channels']).tolist()} "
                f"channels; the imaging data {coils}"
            )
        parts = [
            a.view(np.complex64).reshape(coils, -1) for a in table["data"][is_noise]
        ]  # a few noise acquisitions
        noise = torch.from_numpy(np.concatenate(parts, axis=1))

    traj = None
    dims = int(h_img["trajectory_dimensions"].max())
    if dims > 0:
        if np.any(h_img["trajectory_dimensions"] != dims):
            raise InputError(f"{path}: acquisitions differ in trajectory_dimensions; expected one value")
        t = _stack(table["traj"][img], path, "trajectories").reshape(n_ro, n_s, dims)[..., :3]
        m, f_mm = enc.encodedSpace.matrixSize, enc.encodedSpace.fieldOfView_mm
        scale = np.array([m.x, m.y, m.z], float) / (np.array([f_mm.x, f_mm.y, f_mm.z]) * 1e-3)  # 1/m
        full = np.zeros((n_ro, n_s, 3), dtype=np.float64)
        full[..., : t.shape[-1]] = t * scale[: t.shape[-1]]
        traj = torch.from_numpy(full.astype(np.float32))

    flags_img = flags[img]
    reverse = (flags_img & np.uint64(_REVERSE_BIT)) != 0
    if reverse.any():
        kdata[:, reverse] = kdata[:, reverse, ::-1]
        if traj is not None:
            traj[torch.from_numpy(reverse)] = traj[torch.from_numpy(reverse)].flip(1)
        flags_img = flags_img & ~np.uint64(_REVERSE_BIT)

    dwell = float(h_img["sample_time_us"][0]) * 1e-6
    stamps = h_img["acquisition_time_stamp"].astype(np.float64)
    sample_time = None
    if np.any(stamps != 0):
        sample_time = torch.from_numpy(stamps[:, None] * tick + np.arange(n_s)[None, :] * dwell)

    centers, counts = np.unique(h_img["center_sample"], return_counts=True)
    return RawData(
        kdata=torch.from_numpy(kdata),
        header=_raw_header(hdr, enc, xml, coils),
        traj=traj,
        labels={k: torch.from_numpy(h_img["idx"][k].astype(np.int64)) for k in LABELS},
        flags=torch.from_numpy(flags_img.astype(np.int64)),
        sample_time=sample_time,
        noise=noise,
        dwell=dwell,
        center_sample=int(centers[np.argmax(counts)]),
        provenance=provenance,
    )
