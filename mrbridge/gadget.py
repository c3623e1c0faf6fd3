"""Gadgetron external Python gadget: mrbridge's Recon where the scanner's recon runs.

Two launch modes, one handler (the ``gadgetron`` package's external-module protocol):

* Gadgetron launches it itself: ``python -m gadgetron PORT mrbridge.gadget handle`` connects to Gadgetron on
  localhost:PORT and calls :func:`handle` with the connection (config and ISMRMRD header already read).
* It listens and Gadgetron connects (``<connect port="9002"/>``): :class:`GadgetServer` (``mrbridge gadget
  --port 9002``) binds to 127.0.0.1 unless told otherwise and serves every connection in its own thread.

Per connection: the config XML (``<property name="bundle" value="RUN_BUNDLE"/>`` picks the bundle when the
server has none), the ISMRMRD header and the acquisitions up to CLOSE are collected, converted to RawData
through the one ISMRMRD reader (:func:`mrbridge.raw.mrd.read_mrd`), reconstructed by the bundle's Recon (or the
default), and returned as ISMRMRD images (one per repetition and contrast, (z, y, x) each) with the geometry of
their acquisitions and the recon's metadata. Images and waveforms that arrive are passed back unchanged.

gadgetron-python 1.4.1 never reports a failure to its peer and spins forever on a closed socket. Here a
failure (bad data, a malformed or unknown message, a recon error) is sent to the client as a Gadgetron ERROR
message (id 8, uint64 length, UTF-8 text) before CLOSE — Gadgetron raises it as a RemoteError — and a client
that disconnects mid-stream ends only its own connection; the server keeps listening.
"""

from __future__ import annotations

import logging
import socket
import struct
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import ismrmrd
import numpy as np
import torch
from gadgetron.external.connection import Connection
from gadgetron.external.constants import (
    GADGET_MESSAGE_CLOSE,
    GADGET_MESSAGE_ERROR,
    GadgetMessageIdentifier,
    uint64,
)
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype
from xsdata.exceptions import ParserError

from mrbridge.errors import MrbridgeError
from mrbridge.raw.mrd import read_mrd
from mrbridge.raw.rawdata import RawData
from mrbridge.recon.image import Image
from mrbridge.recon.pipeline import Recon

log = logging.getLogger(__name__)

#: a single message may not claim more bytes than this (a malformed header must not exhaust memory)
MAX_MESSAGE_BYTES = 1 << 31
_RECV_CHUNK = 1 << 20
#: how long closing waits for the peer to finish (s)
DRAIN_SECONDS = 2.0

#: failures that are the data's or the peer's fault: reported to the client as an ERROR message
REPORTED_ERRORS: tuple[type[BaseException], ...] = (
    MrbridgeError, ValueError, TypeError, KeyError, IndexError, AssertionError, RuntimeError, ParserError,
    struct.error, ElementTree.ParseError, UnicodeDecodeError, OverflowError, MemoryError,
)
#: failures of the connection itself: nothing can reach the client any more
LOST_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, EOFError)


class ProtocolError(MrbridgeError):
    """The peer sent something the Gadgetron protocol or this gadget does not accept."""


class _GuardedSocket:
    """The socket a gadgetron ``Connection`` reads through, made safe.

    ``recv(n)`` returns exactly n bytes or raises ConnectionError when the peer has closed (the package's own
    wrapper loops forever on a closed socket); claims above MAX_MESSAGE_BYTES are a ProtocolError. ``send`` is
    used by the package only for its final CLOSE, which must not fail on a gone peer.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float | None = None) -> None:
        self._sock = sock
        self._sock.settimeout(idle_timeout)

    def settimeout(self, _timeout: float | None) -> None:
        """Ignored: the idle timeout chosen at construction stays."""

    def recv(self, n: int, _flags: int = 0) -> bytes:
        if n > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"a message claims {n} bytes (more than {MAX_MESSAGE_BYTES}); malformed header?")
        buffer = bytearray()
        while len(buffer) < n:
            part = self._sock.recv(min(n - len(buffer), _RECV_CHUNK))
            if not part:
                raise ConnectionError(f"the client closed the connection {len(buffer)} bytes into a "
                                      f"{n}-byte read")
            buffer += part
        return bytes(buffer)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def send(self, data: bytes) -> int:
        try:
            return self._sock.send(data)
        except OSError:
            return 0

    def close(self) -> None:
        """Half-close, read what the peer still sends (at most DRAIN_SECONDS), then close.

        Closing with unread input would reset the connection and could destroy a just-sent ERROR message
        before the client reads it.
        """
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            self._sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if not self._sock.recv(_RECV_CHUNK):
                    break
        except OSError:
            pass
        finally:
            self._sock.close()


class _Readers(dict[int, Callable[..., Any]]):
    """The connection's reader table; an unknown message id is a ProtocolError naming it (the package would
    silently treat it as the end of the stream)."""

    def get(self, key: int, default: Any = None) -> Callable[..., Any]:
        if key in self:
            return self[key]

        def unknown(_source: Any) -> Any:
            raise ProtocolError(f"message id {key} is not accepted here (expected acquisitions (1008), "
                                "images (1022), waveforms (1026) or CLOSE (4))")

        return unknown


def send_error(write: Callable[[bytes], Any], message: str) -> None:
    """Write a Gadgetron ERROR message (id 8, uint64 length, UTF-8 text) with ``write``."""
    text = message.encode("utf-8")
    write(GadgetMessageIdentifier.pack(GADGET_MESSAGE_ERROR) + uint64.pack(len(text)) + text)


def config_parameters(config: ElementTree.Element | None) -> dict[str, str]:
    """``<property name=… value=…/>`` entries of the config XML (as Gadgetron's legacy gadgets read them)."""
    if config is None:
        return {}
    return {p.get("name", ""): p.get("value", "") for p in config.iter("property")}


def acquisitions_to_rawdata(header_xml: bytes, acquisitions: list[ismrmrd.Acquisition]) -> RawData:
    """RawData of streamed acquisitions, through the ISMRMRD file reader (one importer for files and streams).

    The acquisitions are written with their header XML into a temporary ISMRMRD file that ``read_mrd`` reads.
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
        return read_mrd(path)


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


def _recon_for(connection: Connection, recon: Recon | None) -> Recon:
    if recon is not None:
        return recon
    bundle = config_parameters(connection.config).get("bundle")
    return (Recon.load(bundle) if bundle else Recon()).eval()


def process(connection: Connection, recon: Recon | None = None) -> None:
    """Read acquisitions up to CLOSE, reconstruct, send the images; report any failure to the client.

    ``recon``: the Recon to run (None: the config's ``bundle`` property, else ``Recon()``). Does not close
    the connection. A lost connection is logged and ends this function.
    """
    connection.readers = _Readers(connection.readers)
    acquisitions: list[ismrmrd.Acquisition] = []
    try:
        for item in connection:
            if isinstance(item, ismrmrd.Acquisition):
                acquisitions.append(item)
            else:
                connection.send(item)
        if not any(not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acquisitions):
            raise ProtocolError(f"no imaging acquisitions received ({len(acquisitions)} noise scans)")
        reconstruct = _recon_for(connection, recon)
        raw = acquisitions_to_rawdata(connection.raw_bytes.header, acquisitions)
        with torch.no_grad():
            image = reconstruct(raw)
        for img in to_ismrmrd_images(image, acquisitions):
            connection.send(img)
        log.info("sent %d images %s", int(np.prod(image.data.shape[:-3])), tuple(image.data.shape))
    except LOST_ERRORS as err:
        log.warning("connection lost: %s", err)
    except REPORTED_ERRORS as err:
        log.error("reporting to the client: %s", err)
        try:
            send_error(connection.socket.write, f"mrbridge gadget: {type(err).__name__}: {err}")
        except OSError as lost:
            log.warning("could not report the error, connection lost: %s", lost)


def handle(connection: Connection) -> None:
    """Entry point for ``python -m gadgetron PORT mrbridge.gadget handle`` (Gadgetron starts the module).

    gadgetron's ``main`` has read config and header and closes the connection (CLOSE) after this returns.
    """
    connection.socket.socket = _GuardedSocket(connection.socket.socket)
    process(connection)


def serve_connection(sock: socket.socket, recon: Recon | None, *, idle_timeout: float | None = None) -> None:
    """Run one accepted connection to its end: read config and header, process, send CLOSE, close."""
    guarded = _GuardedSocket(sock, idle_timeout)
    try:
        connection = Connection(guarded)
    except LOST_ERRORS as err:
        log.warning("connection lost before the header: %s", err)
        guarded.close()
        return
    except REPORTED_ERRORS as err:
        log.error("bad config or header: %s", err)
        try:
            send_error(guarded.sendall, f"mrbridge gadget: config or header rejected: {type(err).__name__}: {err}")
            guarded.send(GadgetMessageIdentifier.pack(GADGET_MESSAGE_CLOSE))
        except OSError as lost:
            log.warning("could not report the error, connection lost: %s", lost)
        guarded.close()
        return
    try:
        process(connection, recon)
    finally:
        connection.socket.close()  # CLOSE, then close; never raises on a gone peer


class GadgetServer:
    """Listen for Gadgetron (or any client speaking its protocol); each connection is served in a thread.

    >>> server = GadgetServer(port=0)  # doctest: +SKIP
    >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
    """

    def __init__(self, *, port: int = 9002, host: str = "127.0.0.1", bundle: str | Path | None = None,
                 idle_timeout: float | None = None) -> None:
        self.recon = Recon.load(bundle) if bundle is not None else None  # None: per connection, see process
        if self.recon is not None:
            self.recon.eval()
        self.idle_timeout = idle_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise MrbridgeError(f"gadget: cannot listen on {host}:{port} ({err.strerror})") from None
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 picks a free one)."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def serve_forever(self, *, max_connections: int | None = None) -> None:
        """Accept connections until :meth:`shutdown` (or ``max_connections`` have been served)."""
        served = 0
        try:
            while not self._stop.is_set() and (max_connections is None or served < max_connections):
                try:
                    sock, peer = self._sock.accept()
                except TimeoutError:
                    continue
                log.info("connection from %s", peer)
                thread = threading.Thread(target=serve_connection, args=(sock, self.recon),
                                          kwargs={"idle_timeout": self.idle_timeout}, daemon=True)
                thread.start()
                self.threads = [t for t in self.threads if t.is_alive()] + [thread]
                served += 1
            for thread in self.threads:
                thread.join()
        finally:
            self._sock.close()

    def shutdown(self) -> None:
        """Stop accepting; :meth:`serve_forever` returns once running connections end."""
        self._stop.set()


def serve(port: int = 9002, *, host: str = "127.0.0.1", bundle: str | Path | None = None) -> None:
    """``mrbridge gadget --port PORT [--host HOST] [--with BUNDLE]``: serve until interrupted."""
    GadgetServer(port=port, host=host, bundle=bundle).serve_forever()
