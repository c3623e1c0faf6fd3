"""One connection from config to images (or ERROR), for both launch modes."""

from __future__ import annotations

import logging
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import numpy as np
import torch
from gadgetron.external.connection import Connection
from gadgetron.external.constants import (
    GADGET_MESSAGE_CLOSE,
    GADGET_MESSAGE_CONFIG,
    GADGET_MESSAGE_HEADER,
    GADGET_MESSAGE_ISMRMRD_ACQUISITION,
    GADGET_MESSAGE_ISMRMRD_IMAGE,
    GADGET_MESSAGE_ISMRMRD_WAVEFORM,
    GadgetMessageIdentifier,
)
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

from mrbridge.errors import MrbridgeError
from mrbridge.gadget.bundles import Bundles
from mrbridge.gadget.messages import ACCEPTED, Limits, ProtocolError, describe, parse_config, parse_header
from mrbridge.gadget.peer import Peer, Stream
from mrbridge.raw.mrd import read_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.image import Image

log = logging.getLogger(__name__)


def acquisitions_to_rawdata(header_xml: bytes, acquisitions: list[ismrmrd.Acquisition]) -> RawData:
    """RawData of streamed acquisitions, through the ISMRMRD file reader (one importer for files and streams).

    The acquisitions are written with their header XML into a temporary ISMRMRD file that ``read_mrd`` reads;
    its errors name "the streamed data", not the temporary file.
    """
    table = np.zeros(len(acquisitions), dtype=acquisition_dtype)
    for i, acq in enumerate(acquisitions):
        table["head"][i] = np.frombuffer(acq.getHead(), dtype=acquisition_header_dtype)[0]
        table["data"][i] = np.ascontiguousarray(acq.data, dtype=np.complex64).view(np.float32).reshape(-1)
        table["traj"][i] = np.ascontiguousarray(acq.traj, dtype=np.float32).reshape(-1)
    with tempfile.TemporaryDirectory(prefix="mrbridge-gadget-") as folder:
        path = Path(folder) / "stream.h5"
        with h5py.File(path, "w") as f:
            g = f.create_group("dataset")
            g.create_dataset("xml", shape=(1,), dtype=h5py.special_dtype(vlen=bytes))
            g["xml"][0] = header_xml
            g.create_dataset("data", data=table)
        del table
        try:
            return read_mrd(path)
        except MrbridgeError as err:
            raise MrbridgeError(str(err).replace(str(path), "the streamed data")) from None


def to_ismrmrd_images(image: Image, acquisitions: list[ismrmrd.Acquisition]) -> list[ismrmrd.Image]:
    """One ISMRMRD image (z, y, x) per repetition and contrast of ``image`` (data (reps, contrasts, z, y, x)).

    Geometry (position, directions, table position, time stamps, slice) comes from the first imaging acquisition
    of the same repetition and contrast; FOV in mm from the recon; complex data stay complex, real data are
    magnitudes. Meta: ``DataRole``, ``ImageComment`` and every ``image.meta`` entry as ``mrbridge.KEY``.
    """
    data = image.data.detach().cpu().numpy()
    frames = data.reshape(-1, *data.shape[-3:])
    leading = data.shape[:-3]
    dtype = np.complex64 if np.iscomplexobj(frames) else np.float32
    imaging = [a for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    out = []
    for i, frame in enumerate(frames):
        index = tuple(int(v) for v in np.unravel_index(i, leading)) if leading else ()
        rep, con = (index[-2], index[-1]) if len(index) >= 2 else (0, index[0] if index else 0)
        ref = next((a for a in imaging if a.idx.repetition == rep and a.idx.contrast == con), imaging[0])
        img = ismrmrd.Image.from_array(np.ascontiguousarray(frame.astype(dtype)), acquisition=ref)
        img.field_of_view = tuple(float(f) * 1e3 for f in image.fov)
        img.image_index = i + 1
        img.image_series_index = 1
        img.repetition, img.contrast = rep, con
        img.image_type = ismrmrd.IMTYPE_COMPLEX if dtype == np.complex64 else ismrmrd.IMTYPE_MAGNITUDE
        meta = ismrmrd.Meta()
        meta["DataRole"] = "Image"
        meta["ImageComment"] = f"mrbridge recon ({image.meta.get('method', '?')})"
        for key, value in image.meta.items():
            meta[f"mrbridge.{key}"] = str(value)
        img.meta = meta
        out.append(img)
    return out


def _message(mid: int, item: Any) -> bytes:
    return GadgetMessageIdentifier.pack(mid) + item.to_bytes()


def _text_message(peer: Peer, wanted: int, name: str, what: str) -> bytes:
    """The body of the next message, which must be ``wanted`` (the config or the ISMRMRD header)."""
    mid = peer.next_message(name)
    if mid is None:
        raise ProtocolError(f"the client ended the stream before the {name} (id {wanted})")
    if mid != wanted:
        raise ProtocolError(f"{describe(mid)} where the {name} (id {wanted}) was expected")
    return peer.text(what)


def _converse(peer: Peer, bundles: Bundles, config: bytes | None = None, header_xml: bytes | None = None) -> None:
    """Config, header (unless already read), the stream up to CLOSE, the recon, the images. Raises on failure."""
    if config is None or header_xml is None:
        config = _text_message(peer, GADGET_MESSAGE_CONFIG, "config message", "config")
        parse_config(config)  # malformed: said now, not after the header
        header_xml = _text_message(peer, GADGET_MESSAGE_HEADER, "ISMRMRD header", "ISMRMRD header")
    parameters = parse_config(config)
    stream = Stream(peer, parse_header(header_xml))
    recon = bundles.recon(parameters.get("bundle"))  # refused before the client streams a whole scan

    acquisitions: list[ismrmrd.Acquisition] = []
    while (mid := peer.next_message("message")) != GADGET_MESSAGE_CLOSE:
        if mid is None:
            raise ProtocolError(f"the client ended the stream without CLOSE (id 4) after {len(acquisitions)} "
                                "acquisitions; nothing was reconstructed")
        if mid == GADGET_MESSAGE_ISMRMRD_ACQUISITION:
            acquisitions.append(stream.acquisition())
        elif mid == GADGET_MESSAGE_ISMRMRD_IMAGE:
            peer.send(_message(mid, stream.image()))
        elif mid == GADGET_MESSAGE_ISMRMRD_WAVEFORM:
            peer.send(_message(mid, stream.waveform()))
        else:
            raise ProtocolError(f"{describe(mid)} is not accepted here (expected {ACCEPTED})")
    if not any(not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acquisitions):
        raise ProtocolError(f"no imaging acquisitions received ({len(acquisitions)} noise scans)")
    raw = acquisitions_to_rawdata(header_xml, acquisitions)
    with torch.no_grad():
        image = recon(raw)
    del raw
    for img in to_ismrmrd_images(image, acquisitions):
        peer.send(_message(GADGET_MESSAGE_ISMRMRD_IMAGE, img))
    log.info("sent %d images %s", int(np.prod(image.data.shape[:-3])), tuple(image.data.shape))


def _scrub(text: str, bundles: Bundles | None) -> str:
    """No server path in what the client reads: the bundle folder and the temporary folder are named, not shown."""
    if bundles is not None and bundles.root is not None:
        text = text.replace(str(bundles.root), "<bundles>")
    return text.replace(tempfile.gettempdir(), "<tmp>")


def _run(peer: Peer, bundles: Bundles | None, config: bytes | None = None, header_xml: bytes | None = None) -> None:
    """One connection to its end: converse, report any failure as ERROR, then CLOSE and close. Never raises."""
    try:
        if bundles is None:
            try:
                bundles = Bundles.from_environment()
            except MrbridgeError as err:
                log.error("%s", err)
                raise MrbridgeError("the gadget's bundles (MRBRIDGE_GADGET_BUNDLES, MRBRIDGE_GADGET_BUNDLE) are "
                                    "not usable; the gadget's log says why") from None
        _converse(peer, bundles, config, header_xml)
    except (MrbridgeError, OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError, AssertionError,
            struct.error, UnicodeDecodeError, OverflowError, MemoryError) as err:
        lost = isinstance(err, OSError) and not isinstance(err, TimeoutError)
        log.warning("connection %s: %s: %s", "lost" if lost else "failed", type(err).__name__, err)
        if isinstance(err, ProtocolError):  # the client's own words and the limits; no server path by design
            peer.report(str(err))  # (scrubbing them would tell a client which of its guessed paths exist)
        else:  # a lost connection: tried, logged
            peer.report(_scrub(str(err) if isinstance(err, MrbridgeError) else f"{type(err).__name__}: {err}",
                               bundles))
    except Exception as err:  # a bug here must still answer the client and leave the server serving
        log.exception("internal error")
        peer.report(_scrub(f"internal error: {type(err).__name__}: {err}", bundles))
    finally:
        peer.finish()


class _Gone:
    """What gadgetron's launcher closes after :func:`handle` returned: the connection is already closed."""

    def send(self, _data: bytes) -> int:
        return 0

    def close(self) -> None:
        pass


def handle(connection: Connection) -> None:
    """Entry point for ``python -m gadgetron PORT mrbridge.gadget handle`` (Gadgetron starts the module).

    gadgetron's ``main`` has read config and header; the rest is read here under :class:`Limits` (idle timeout
    from ``MRBRIDGE_GADGET_IDLE_TIMEOUT``), bundles from the environment (see :meth:`Bundles.from_environment`).
    """
    sock = connection.socket.socket
    connection.socket.socket = _Gone()  # gadgetron's own CLOSE afterwards: already sent here
    idle = os.environ.get("MRBRIDGE_GADGET_IDLE_TIMEOUT")
    try:
        limits = Limits(idle_timeout=float(idle)) if idle else Limits()
    except (ValueError, MrbridgeError):
        log.error("MRBRIDGE_GADGET_IDLE_TIMEOUT = %r is not a positive number of seconds; using 30", idle)
        limits = Limits()
    _run(Peer(sock, limits), None, connection.raw_bytes.config or b"", connection.raw_bytes.header or b"")


def serve_connection(sock: socket.socket, bundles: Bundles, limits: Limits | None = None) -> None:
    """Serve one accepted connection to its end: config, header, stream, images or ERROR, CLOSE, close."""
    _run(Peer(sock, limits or Limits()), bundles)
