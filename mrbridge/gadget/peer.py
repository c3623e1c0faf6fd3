"""Reading one client message by message under the limits; each message checked before its payload is allocated."""

from __future__ import annotations

import logging
import math
import socket
import time
from typing import Any

import ismrmrd
import numpy as np
from gadgetron.external.constants import (
    GADGET_MESSAGE_CLOSE,
    GadgetMessageIdentifier,
    uint32,
    uint64,
)
from ismrmrd.image import get_dtype_from_data_type

from mrbridge.gadget.messages import (
    ACQ_HEAD,
    CHUNK,
    DRAIN_SECONDS,
    IMAGE_HEAD,
    MAX_REASON_CHARS,
    WAVEFORM_HEAD,
    Limits,
    ProtocolError,
    send_error,
)

log = logging.getLogger(__name__)


class Peer:
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
            sink = bytearray(CHUNK)
            deadline = time.monotonic() + DRAIN_SECONDS
            while not self.ended and (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv_into(sink):
                    break
        except OSError:
            pass
        finally:
            self.sock.close()


class Stream:
    """What the ISMRMRD header and the acquisitions so far declare; each message is checked against it
    before its payload is allocated."""

    def __init__(self, peer: Peer, header: Any) -> None:
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
        head_bytes = self.peer.read(ACQ_HEAD, "its header")
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
        head_bytes = bytes(self.peer.read(IMAGE_HEAD, "its header"))
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
        head_bytes = bytes(self.peer.read(WAVEFORM_HEAD, "its header"))
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        samples, channels = int(head.number_of_samples), int(head.channels)
        nbytes = samples * channels * 4
        self._budget(what, nbytes, f"{samples} samples × {channels} channels × 4")
        parts = iter([head_bytes, bytes(self.peer.read(nbytes, "its data"))])
        return ismrmrd.Waveform.deserialize_from(lambda _n: next(parts))
