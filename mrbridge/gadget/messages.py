"""The Gadgetron messages this gadget reads and writes, the limits every client is held to, and its errors."""

from __future__ import annotations

import ctypes
import math
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

import ismrmrd
from gadgetron.external.constants import (
    GADGET_MESSAGE_ERROR,
    GadgetMessageIdentifier,
    uint64,
)

from mrbridge.errors import MrbridgeError

#: how long closing waits for the peer to finish sending (s); unread input would reset the connection and
#: could destroy a just-sent ERROR before the client reads it
DRAIN_SECONDS = 2.0
#: the same for a connection refused because the server is busy (drained by the accept loop, never a thread)
REFUSED_DRAIN_SECONDS = 1.0
#: refused connections being drained at once; older ones are closed outright
MAX_REFUSED = 64
#: a reason sent to the client is cut to this many characters
MAX_REASON_CHARS = 2000
CHUNK = 1 << 16

ACQ_HEAD = ctypes.sizeof(ismrmrd.AcquisitionHeader)
IMAGE_HEAD = ctypes.sizeof(ismrmrd.ImageHeader)
WAVEFORM_HEAD = ctypes.sizeof(ismrmrd.WaveformHeader)
_MESSAGE_NAMES = {
    1: "FILENAME", 2: "CONFIG", 3: "HEADER", 4: "CLOSE", 5: "TEXT", 6: "QUERY", 7: "RESPONSE", 8: "ERROR",
    1008: "acquisition", 1022: "image", 1023: "recon data", 1024: "image array", 1026: "waveform",
    1050: "acquisition bucket",
}
ACCEPTED = "acquisitions (1008), images (1022), waveforms (1026) or CLOSE (4)"


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


def describe(mid: int) -> str:
    name = _MESSAGE_NAMES.get(mid)
    return f"message id {mid} ({name})" if name else f"unknown message id {mid}"


def shown(name: str) -> str:
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
