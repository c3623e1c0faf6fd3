"""Gadgetron external Python gadget: mrbridge's Recon where the scanner's recon runs.

Two launch modes, one conversation (the ``gadgetron`` package's external-module protocol):

* Gadgetron launches it itself: ``python -m gadgetron PORT mrbridge.gadget handle`` connects to Gadgetron on
  localhost:PORT and calls :func:`handle` with the connection (config and ISMRMRD header already read). The
  bundles come from the environment Gadgetron starts it with: ``MRBRIDGE_GADGET_BUNDLES`` (the bundle folder,
  see below) and ``MRBRIDGE_GADGET_BUNDLE`` (the default bundle); ``MRBRIDGE_GADGET_IDLE_TIMEOUT`` (s).
* It listens and Gadgetron connects (``<connect port="9002"/>``): :class:`GadgetServer` (``mrbridge gadget
  --port 9002``) binds to 127.0.0.1 unless told otherwise and serves each connection in its own thread, at most
  ``max_connections`` at a time; one over the cap gets an ERROR "server busy" and CLOSE at once.

Per connection: the config XML, the ISMRMRD header and the acquisitions up to CLOSE are read, converted to
RawData through the one ISMRMRD reader (:func:`mrbridge.raw.mrd.read_mrd`), reconstructed, and returned as
ISMRMRD images (one per repetition and contrast, (z, y, x) each) with the geometry of their acquisitions and the
recon's metadata. Images and waveforms that arrive are passed back unchanged.

Which Recon: the config may name a bundle (``<property name="bundle" value="NAME"/>``). A name is one folder
name inside the bundle folder fixed when the server starts (``--bundles DIR``), never a path: names with ``/``,
``..``, a leading dot, or that resolve (through symlinks) outside that folder are refused, and a server started
without ``--bundles`` refuses every named bundle. Without a name: the bundle fixed at start (``--with``), else
``Recon()``. Errors sent to the client name the bundle as the client named it, never a server path.

The peer is not trusted. Every message is read under :class:`Limits`: at most ``idle_timeout`` s waiting for a
message to start and ``message_timeout`` s for the rest of it; text messages (config, header, image attributes)
at most ``max_text_bytes``; the size of an acquisition is computed from its header (samples × channels × 8
bytes + samples × trajectory dimensions × 4), checked against the ISMRMRD header (receiver channels, encodings)
and the acquisitions before it (one sample and channel count), and against ``max_bytes`` for the whole
connection — all before its payload is allocated. Every failure (bad or truncated data, an unknown message, a
timeout, a recon error) is sent to the client as a Gadgetron ERROR message (id 8, uint64 length, UTF-8 text,
never empty) before CLOSE while the socket still takes data — Gadgetron raises it as a RemoteError — and ends
only its own connection: the server keeps serving. (gadgetron-python 1.4.1 itself reports nothing to its peer
and spins forever on a closed socket; its reader is used only for what Gadgetron's launcher reads first.)
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import selectors
import socket
import struct
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
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
    GADGET_MESSAGE_ERROR,
    GADGET_MESSAGE_HEADER,
    GADGET_MESSAGE_ISMRMRD_ACQUISITION,
    GADGET_MESSAGE_ISMRMRD_IMAGE,
    GADGET_MESSAGE_ISMRMRD_WAVEFORM,
    GadgetMessageIdentifier,
    uint32,
    uint64,
)
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype
from ismrmrd.image import get_dtype_from_data_type

from mrbridge.errors import MrbridgeError
from mrbridge.raw.mrd import read_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.image import Image
from mrbridge.recon.pipeline import Recon

log = logging.getLogger(__name__)

#: how long closing waits for the peer to finish sending (s); unread input would reset the connection and
#: could destroy a just-sent ERROR before the client reads it
DRAIN_SECONDS = 2.0
#: the same for a connection refused because the server is busy (drained by the accept loop, never a thread)
REFUSED_DRAIN_SECONDS = 1.0
#: refused connections being drained at once; older ones are closed outright
MAX_REFUSED = 64
#: a reason sent to the client is cut to this many characters
MAX_REASON_CHARS = 2000
_CHUNK = 1 << 16

_ACQ_HEAD = ctypes.sizeof(ismrmrd.AcquisitionHeader)
_IMAGE_HEAD = ctypes.sizeof(ismrmrd.ImageHeader)
_WAVEFORM_HEAD = ctypes.sizeof(ismrmrd.WaveformHeader)
_MESSAGE_NAMES = {
    1: "FILENAME", 2: "CONFIG", 3: "HEADER", 4: "CLOSE", 5: "TEXT", 6: "QUERY", 7: "RESPONSE", 8: "ERROR",
    1008: "acquisition", 1022: "image", 1023: "recon data", 1024: "image array", 1026: "waveform",
    1050: "acquisition bucket",
}
_ACCEPTED = "acquisitions (1008), images (1022), waveforms (1026) or CLOSE (4)"


class ProtocolError(MrbridgeError):
    """The peer sent something the Gadgetron protocol or this gadget does not accept (or nothing in time)."""


@dataclass(frozen=True)
class Limits:
    """What one client may make the server wait for or hold.

    idle_timeout: s waiting for the next message to start (30: a live scan streams every TR; Gadgetron opens a
        connection per scan). message_timeout: s for one message from its first byte to its last, and for
        sending one (60: a 1 GiB message at 20 MB/s). max_bytes: acquisition payload of one connection in all
        (1 GiB: 8 connections at the cap hold at most ~8 GiB of raw data, ~3x that while reconstructing).
        max_connections: served at once (8, one thread each). max_text_bytes: one config, header or image
        attribute text (16 MiB; real headers are a few hundred kB).
    """

    idle_timeout: float = 30.0
    message_timeout: float = 60.0
    max_bytes: int = 1 << 30
    max_connections: int = 8
    max_text_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "message_timeout", "max_bytes", "max_connections", "max_text_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise MrbridgeError(f"gadget: {name} = {value!r}; expected a positive finite number")


def _describe(mid: int) -> str:
    name = _MESSAGE_NAMES.get(mid)
    return f"message id {mid} ({name})" if name else f"unknown message id {mid}"


def _shown(name: str) -> str:
    """A client-chosen name, quoted and cut for an error message."""
    return repr(name if len(name) <= 80 else name[:80] + "…")


def send_error(write: Any, message: str) -> None:
    """Write a Gadgetron ERROR message (id 8, uint64 length, UTF-8 text) with ``write``."""
    text = message.encode("utf-8")
    write(GadgetMessageIdentifier.pack(GADGET_MESSAGE_ERROR) + uint64.pack(len(text)) + text)


def config_parameters(config: ElementTree.Element | None) -> dict[str, str]:
    """``<property name=… value=…/>`` entries of the config XML (as Gadgetron's legacy gadgets read them)."""
    if config is None:
        return {}
    return {p.get("name", ""): p.get("value", "") for p in config.iter("property")}


def _refuse_declarations(text: bytes, what: str) -> None:
    """No DTD: entity declarations (external files, entity expansion) have no place in config or header."""
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise ProtocolError(f"malformed {what}: DOCTYPE/ENTITY declarations are not accepted")


def parse_config(text: bytes) -> dict[str, str]:
    """The config message's properties (empty text: none); malformed XML is a ProtocolError."""
    if not text.strip(b" \t\r\n\0"):
        return {}
    _refuse_declarations(text, "config")
    try:
        return config_parameters(ElementTree.fromstring(text))
    except ElementTree.ParseError as err:
        raise ProtocolError(f"malformed config: {err}") from None


def parse_header(text: bytes) -> Any:
    """The ISMRMRD header (an ``ismrmrd.xsd.ismrmrdHeader``); anything the schema parser rejects is a
    ProtocolError naming what it said."""
    _refuse_declarations(text, "ISMRMRD header")
    try:
        return ismrmrd.xsd.CreateFromDocument(text)
    except Exception as err:  # the xsdata/lxml parser raises many kinds; all mean "not a valid header"
        raise ProtocolError(f"ISMRMRD header rejected: {type(err).__name__}: {err}") from None


# ---- bundles -------------------------------------------------------------------------------------------
class Bundles:
    """Where a connection's Recon comes from: a default fixed at start and, optionally, a folder of bundles
    that clients may name (one folder name each, never a path).

    root: the bundle folder (None: clients may not name bundles). default: the bundle used when the client
    names none (None: ``Recon()``). Both are the server operator's choice and checked now.
    """

    def __init__(self, root: str | Path | None = None, default: str | Path | None = None) -> None:
        self.root: Path | None = None
        if root is not None:
            resolved = Path(root).expanduser().resolve()
            if not resolved.is_dir():
                raise MrbridgeError(f"gadget: --bundles {root}: not a folder; expected the folder of run bundles")
            self.root = resolved
        self.default = Recon.load(default).eval() if default is not None else None

    @classmethod
    def from_environment(cls) -> Bundles:
        """``MRBRIDGE_GADGET_BUNDLES`` and ``MRBRIDGE_GADGET_BUNDLE`` (for the mode Gadgetron launches)."""
        return cls(os.environ.get("MRBRIDGE_GADGET_BUNDLES") or None, os.environ.get("MRBRIDGE_GADGET_BUNDLE") or None)

    def locate(self, name: str) -> Path:
        """The folder of the bundle a client named; ProtocolError (without server paths) if it is not one."""
        if self.root is None:
            raise ProtocolError(f"bundle {_shown(name)} is not available: this server serves no named bundles "
                                "(started without --bundles)")
        unavailable = ProtocolError(f"bundle {_shown(name)} is not available (a bundle is named by its folder "
                                    "name inside the server's bundle folder, not by a path)")
        if (not name or len(name) > 255 or name.startswith(".") or any(c in name for c in "/\\\0")
                or not name.isprintable()):
            raise unavailable
        try:
            path = (self.root / name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, a loop of links
            raise unavailable from None
        if path.parent != self.root or not path.is_dir():  # a symlink out of the folder, or not a folder
            raise unavailable
        return path

    def recon(self, name: str | None) -> Recon:
        """The Recon for a connection whose config names ``name`` (None or empty: the default)."""
        if not name:
            return self.default if self.default is not None else Recon().eval()
        path = self.locate(name)
        try:
            return Recon.load(path).eval()
        except (MrbridgeError, OSError, RuntimeError) as err:
            log.error("bundle %r: %s", name, err)
            text = str(err).replace(str(path), name).replace(str(self.root), "<bundles>")
            raise ProtocolError(f"bundle {_shown(name)} could not be loaded: {text}") from None


# ---- reading, under the limits -------------------------------------------------------------------------
class _Peer:
    """One client's socket, read message by message under :class:`Limits`; every wait is bounded."""

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock = sock
        self.limits = limits
        self.ended = False  # the peer closed its sending side
        self._deadline = math.inf
        self._what = "a message"

    def next_message(self, what: str) -> int | None:
        """Wait (at most idle_timeout) for the next message; its id, or None when the peer ended the stream
        between messages. ``what``: what is expected (for the idle-timeout message)."""
        buffer = bytearray(2)
        self.sock.settimeout(self.limits.idle_timeout)
        try:
            got = self.sock.recv_into(buffer, 2)
        except TimeoutError:
            raise ProtocolError(f"idle timeout: no {what} within {self.limits.idle_timeout:g} s") from None
        if got == 0:
            self.ended = True
            return None
        self._deadline = time.monotonic() + self.limits.message_timeout
        self._what = "the next message"
        if got < 2:
            self._fill(memoryview(buffer)[got:], "a message id", 2, got)
        (mid,) = GadgetMessageIdentifier.unpack(buffer)
        return int(mid)

    def start(self, what: str) -> None:
        """Name the message being read (for timeout and truncation messages)."""
        self._what = what

    def read(self, n: int, part: str) -> bytearray:
        """Exactly ``n`` bytes (the caller has checked ``n``) within the message's deadline."""
        buffer = bytearray(n)
        self._fill(memoryview(buffer), part, n, 0)
        return buffer

    def _fill(self, view: memoryview, part: str, total: int, before: int) -> None:
        done = 0
        while done < len(view):
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError(f"{self._what} not complete within {self.limits.message_timeout:g} s "
                                    f"(message timeout; {part}: {before + done} of {total} bytes)")
            self.sock.settimeout(left)
            try:
                got = self.sock.recv_into(view[done:])
            except TimeoutError:
                continue  # the loop reports it
            if got == 0:
                self.ended = True
                raise ProtocolError(f"{self._what} truncated: the client ended the stream inside {part} "
                                    f"({before + done} of {total} bytes)")
            done += got

    def text(self, what: str) -> bytes:
        """A uint32-length text message body (config, header), its length checked before it is read."""
        self.start(what)
        (n,) = uint32.unpack(self.read(uint32.size, f"the {what} length"))
        if n > self.limits.max_text_bytes:
            raise ProtocolError(f"the {what} message declares {n} bytes; at most {self.limits.max_text_bytes} "
                                "are accepted")
        return bytes(self.read(n, f"the {what}"))

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.limits.message_timeout)
        self.sock.sendall(data)

    def report(self, reason: str) -> None:
        """Send an ERROR with ``reason`` if the socket still takes data; a gone peer is only logged."""
        reason = reason.strip() or "unspecified failure"
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "…"
        try:
            send_error(self.send, f"mrbridge gadget: {reason}")
        except OSError as lost:
            log.warning("could not report the error, connection lost: %s", lost)

    def finish(self) -> None:
        """CLOSE, half-close, read what the peer still sends (at most DRAIN_SECONDS), close. Never raises."""
        try:
            self.sock.settimeout(min(self.limits.message_timeout, DRAIN_SECONDS))
            self.sock.sendall(GadgetMessageIdentifier.pack(GADGET_MESSAGE_CLOSE))
            self.sock.shutdown(socket.SHUT_WR)
            sink = bytearray(_CHUNK)
            deadline = time.monotonic() + DRAIN_SECONDS
            while not self.ended and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv_into(sink):
                    break
        except OSError:
            pass
        finally:
            self.sock.close()


class _Stream:
    """What the ISMRMRD header and the acquisitions so far declare; each message is checked against it
    before its payload is allocated."""

    def __init__(self, peer: _Peer, header: Any) -> None:
        self.peer = peer
        system = header.acquisitionSystemInformation
        self.receiver_channels = int(system.receiverChannels) if system and system.receiverChannels else None
        self.encodings = len(header.encoding)
        self.channels: int | None = None  # of the first acquisition (noise scans included)
        self.imaging: tuple[int, int] | None = None  # samples, trajectory dimensions of the first imaging one
        self.received = 0  # bytes of acquisition payload held
        self.count = 0

    def _budget(self, what: str, nbytes: int, formula: str) -> None:
        limit = self.peer.limits.max_bytes
        if self.received + nbytes > limit:
            raise ProtocolError(f"{what} declares {nbytes} bytes ({formula}); with the {self.received} bytes "
                                f"already received this exceeds the limit of {limit} bytes per connection")

    def acquisition(self) -> ismrmrd.Acquisition:
        self.count += 1
        what = f"acquisition {self.count}"
        self.peer.start(what)
        head_bytes = self.peer.read(_ACQ_HEAD, "its header")
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(head_bytes)
        samples, channels, dims = int(head.number_of_samples), int(head.active_channels), int(
            head.trajectory_dimensions)
        if channels < 1:
            raise ProtocolError(f"{what} declares {channels} active channels; expected at least 1")
        if self.receiver_channels is not None and channels > self.receiver_channels:
            raise ProtocolError(f"{what} declares {channels} active channels; the ISMRMRD header declares "
                                f"{self.receiver_channels} receiver channels")
        if self.channels is not None and channels != self.channels:
            raise ProtocolError(f"{what} declares {channels} active channels; the acquisitions before it "
                                f"{self.channels}")
        if int(head.encoding_space_ref) >= self.encodings:
            raise ProtocolError(f"{what} refers to encoding {int(head.encoding_space_ref)}; the ISMRMRD header "
                                f"declares {self.encodings}")
        if not head.flags & (1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)):
            if self.imaging is not None and (samples, dims) != self.imaging:
                raise ProtocolError(f"{what} declares {samples} samples and {dims} trajectory dimensions; the "
                                    f"imaging acquisitions before it {self.imaging[0]} and {self.imaging[1]}")
            self.imaging = (samples, dims)
        self.channels = channels
        traj_bytes, data_bytes = samples * dims * 4, samples * channels * 8
        self._budget(what, traj_bytes + data_bytes,
                     f"{samples} samples × {channels} channels × 8 + {samples} × {dims} trajectory dimensions × 4")
        parts = iter([bytes(head_bytes), bytes(self.peer.read(traj_bytes, "its trajectory")),
                      bytes(self.peer.read(data_bytes, "its data"))])
        self.received += traj_bytes + data_bytes
        return ismrmrd.Acquisition.deserialize_from(lambda _n: next(parts))

    def image(self) -> ismrmrd.Image:
        what = "an image"
        self.peer.start(what)
        head_bytes = bytes(self.peer.read(_IMAGE_HEAD, "its header"))
        head = ismrmrd.ImageHeader.from_buffer_copy(head_bytes)
        try:
            itemsize = np.dtype(get_dtype_from_data_type(int(head.data_type))).itemsize
        except (TypeError, KeyError, ValueError):
            raise ProtocolError(f"{what} declares data type {int(head.data_type)}; not an ISMRMRD data type") from None
        x, y, z = (int(v) for v in head.matrix_size)
        nbytes = x * y * z * int(head.channels) * itemsize
        self._budget(what, nbytes, f"{x} × {y} × {z} × {int(head.channels)} channels × {itemsize}")
        length_bytes = bytes(self.peer.read(uint64.size, "its attribute length"))
        (length,) = uint64.unpack(length_bytes)
        if length > self.peer.limits.max_text_bytes:
            raise ProtocolError(f"{what} declares {length} bytes of attributes; at most "
                                f"{self.peer.limits.max_text_bytes} are accepted")
        parts = iter([length_bytes, bytes(self.peer.read(length, "its attributes")),
                      bytes(self.peer.read(nbytes, "its data"))])
        try:
            return ismrmrd.Image.deserialize_from_with_header(head_bytes, lambda _n: next(parts))
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} has attributes that are not UTF-8 text") from None

    def waveform(self) -> ismrmrd.Waveform:
        what = "a waveform"
        self.peer.start(what)
        head_bytes = bytes(self.peer.read(_WAVEFORM_HEAD, "its header"))
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        samples, channels = int(head.number_of_samples), int(head.channels)
        nbytes = samples * channels * 4
        self._budget(what, nbytes, f"{samples} samples × {channels} channels × 4")
        parts = iter([head_bytes, bytes(self.peer.read(nbytes, "its data"))])
        return ismrmrd.Waveform.deserialize_from(lambda _n: next(parts))


# ---- the conversation ----------------------------------------------------------------------------------
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


def _converse(peer: _Peer, bundles: Bundles, config: bytes | None = None, header_xml: bytes | None = None) -> None:
    """Config, header (unless already read), the stream up to CLOSE, the recon, the images. Raises on failure."""
    if config is None or header_xml is None:
        mid = peer.next_message("config message")
        if mid is None:
            raise ProtocolError("the client ended the stream before the config message (id 2)")
        if mid != GADGET_MESSAGE_CONFIG:
            raise ProtocolError(f"{_describe(mid)} where the config message (id 2) was expected")
        config = peer.text("config")
        parse_config(config)  # malformed: said now, not after the header
        mid = peer.next_message("ISMRMRD header")
        if mid is None:
            raise ProtocolError("the client ended the stream before the ISMRMRD header (id 3)")
        if mid != GADGET_MESSAGE_HEADER:
            raise ProtocolError(f"{_describe(mid)} where the ISMRMRD header (id 3) was expected")
        header_xml = peer.text("ISMRMRD header")
    parameters = parse_config(config)
    stream = _Stream(peer, parse_header(header_xml))
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
            raise ProtocolError(f"{_describe(mid)} is not accepted here (expected {_ACCEPTED})")
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


def _run(peer: _Peer, bundles: Bundles | None, config: bytes | None = None, header_xml: bytes | None = None) -> None:
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
    _run(_Peer(sock, limits), None, connection.raw_bytes.config or b"", connection.raw_bytes.header or b"")


def serve_connection(sock: socket.socket, bundles: Bundles, limits: Limits | None = None) -> None:
    """Serve one accepted connection to its end: config, header, stream, images or ERROR, CLOSE, close."""
    _run(_Peer(sock, limits or Limits()), bundles)


# ---- listening -----------------------------------------------------------------------------------------
class GadgetServer:
    """Listen for Gadgetron (or any client speaking its protocol); each connection is served in a thread.

    bundle: the default bundle (``--with``); bundles: the folder clients may name bundles in (``--bundles``);
    limits: timeouts, sizes and the connection cap (:class:`Limits`).

    >>> server = GadgetServer(port=0, limits=Limits(idle_timeout=5))  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    """

    def __init__(self, *, port: int = 9002, host: str = "127.0.0.1", bundle: str | Path | None = None,
                 bundles: str | Path | None = None, limits: Limits | None = None) -> None:
        self.bundles = Bundles(bundles, bundle)
        self.limits = limits or Limits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise MrbridgeError(f"gadget: cannot listen on {host}:{port} ({err.strerror})") from None
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self.threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def _serve(self, sock: socket.socket) -> None:
        try:
            serve_connection(sock, self.bundles, self.limits)
        finally:
            self._slots.release()

    def _refuse(self, sock: socket.socket, refused: dict[socket.socket, float],
                selector: selectors.BaseSelector) -> None:
        """ERROR "server busy" and CLOSE without blocking; the socket is drained by the accept loop."""
        try:
            sock.setblocking(False)
            send_error(sock.send, f"mrbridge gadget: server busy ({self.limits.max_connections} connections "
                                  "being served); try again later")
            sock.send(GadgetMessageIdentifier.pack(GADGET_MESSAGE_CLOSE))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(refused) >= MAX_REFUSED:
            oldest = next(iter(refused))
            del refused[oldest]
            selector.unregister(oldest)
            oldest.close()
        selector.register(sock, selectors.EVENT_READ)
        refused[sock] = time.monotonic() + REFUSED_DRAIN_SECONDS

    def serve_forever(self, *, stop_after: int | None = None) -> None:
        """Accept connections until :meth:`shutdown` (or ``stop_after`` have been served)."""
        served = 0
        refused: dict[socket.socket, float] = {}
        selector = selectors.DefaultSelector()
        selector.register(self._sock, selectors.EVENT_READ)
        try:
            while not self._stop.is_set() and (stop_after is None or served < stop_after):
                for key, _ in selector.select(timeout=0.2):
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    if conn is self._sock:
                        try:
                            sock, peer = self._sock.accept()
                        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                            continue
                        except OSError as err:  # out of file descriptors or memory: wait, keep listening
                            log.error("cannot accept a connection: %s", err)
                            time.sleep(0.1)
                            continue
                        if not self._slots.acquire(blocking=False):
                            log.warning("connection from %s refused: server busy", peer)
                            self._refuse(sock, refused, selector)
                            continue
                        log.info("connection from %s", peer)
                        sock.setblocking(True)
                        thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                        try:
                            thread.start()
                        except RuntimeError as err:  # no thread to be had: the client is told, nothing leaks
                            log.error("cannot serve %s: %s", peer, err)
                            self._slots.release()
                            self._refuse(sock, refused, selector)
                            continue
                        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
                        served += 1
                    else:
                        try:
                            more = conn.recv(_CHUNK)
                        except BlockingIOError:
                            continue
                        except OSError:
                            more = b""
                        if not more:
                            del refused[conn]
                            selector.unregister(conn)
                            conn.close()
                now = time.monotonic()
                for sock in [s for s, deadline in refused.items() if deadline <= now]:
                    del refused[sock]
                    selector.unregister(sock)
                    sock.close()
            for thread in self.threads:
                thread.join()
        finally:
            for sock in refused:
                sock.close()
            selector.close()
            self._sock.close()

    def shutdown(self) -> None:
        """Stop accepting; :meth:`serve_forever` returns once running connections end."""
        self._stop.set()


def serve(port: int = 9002, *, host: str = "127.0.0.1", bundle: str | Path | None = None,
          bundles: str | Path | None = None, limits: Limits | None = None) -> None:
    """``mrbridge gadget --port PORT [--host HOST] [--with BUNDLE] [--bundles DIR]``: serve until interrupted."""
    GadgetServer(port=port, host=host, bundle=bundle, bundles=bundles, limits=limits).serve_forever()
