"""The gadget under attack: every hostile or broken client gets an ERROR with a reason before CLOSE, no server
path is echoed, nothing is allocated before it is checked, and a valid client is served right afterwards.

Real sockets on 127.0.0.1; short limits (0.5 s idle, 1 s per message, 4 connections, 8 MiB per connection) so
that every test ends in seconds; every socket read has a timeout.
"""

from __future__ import annotations

import ctypes
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import quoteattr

import ismrmrd
import numpy as np
import pytest

from mrbridge.gadget import GadgetServer, Limits
from mrbridge.raw.mrd import write_mrd
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO
from tests.test_gadget import acquisitions, assert_same_as_recon, exchange, receive

TIMEOUT = 20.0
LIMITS = Limits(idle_timeout=0.5, message_timeout=1.0, max_connections=4, max_bytes=8 << 20)
Reply = tuple[list[ismrmrd.Image], list[str], bool]


# ---- fixtures and a raw client -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(update={"dummies": 0})
    raw = simulate(build(protocol, matrix=16), builtin("brain", matrix=16, coils=3), noise=0.01, seed=3)
    path = tmp_path_factory.mktemp("gadget-attacks") / "gre.h5"
    write_mrd(raw, path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bundles/good (fft, complex images), bundles/inner -> good (a link inside), bundles/escape -> ../outside."""
    base = tmp_path_factory.mktemp("gadget-bundles")
    folder = base / "bundles"
    Recon(ReconConfig(method="fft", coil_combine="sensitivity")).save(folder / "good")
    Recon().save(base / "outside")
    (folder / "inner").symlink_to(folder / "good")
    (folder / "escape").symlink_to(base / "outside")
    (folder / "broken").mkdir()
    (folder / "broken" / "recon.json").write_text("{not json")
    return folder


@contextmanager
def running(server: GadgetServer) -> Iterator[GadgetServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[GadgetServer]:
    with running(GadgetServer(port=0, bundles=root, limits=LIMITS)) as srv:
        yield srv


def message(mid: int, body: bytes = b"") -> bytes:
    return struct.pack("<H", mid) + body


def text(mid: int, content: str | bytes) -> bytes:
    data = content.encode() if isinstance(content, str) else content
    return message(mid, struct.pack("<I", len(data)) + data)


def config(bundle: str | None = None) -> bytes:
    prop = f"<property name=\"bundle\" value={quoteattr(bundle)}/>" if bundle is not None else ""
    return text(2, f"<configuration>{prop}</configuration>")


def opening(raw_file: Path, bundle: str | None = None) -> bytes:
    """CONFIG and HEADER as a client sends them."""
    header, _ = acquisitions(raw_file)
    return config(bundle) + text(3, header.toXML())


def talk(address: tuple[str, int], payload: bytes, *, half_close: bool = True) -> Reply:
    """Send ``payload``, end the sending side (unless told not to), read everything back."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return receive(sock)


def assert_refused(reply: Reply, *fragments: str) -> str:
    """No images, exactly one ERROR naming every fragment, then CLOSE; the reason."""
    images, errors, closed = reply
    assert images == [] and closed, reply
    assert len(errors) == 1 and errors[0].strip() != "mrbridge gadget:", errors
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_still_serving(address: tuple[str, int], raw_file: Path, bundle: str | None = None) -> list[ismrmrd.Image]:
    """A valid client gets its image (retried a bounded number of times while the server reports busy)."""
    header, acqs = acquisitions(raw_file)
    cfg = f"<configuration><property name=\"bundle\" value={quoteattr(bundle)}/></configuration>" if bundle else \
        "<configuration/>"
    for _ in range(40):
        images, errors, closed = exchange(address, header, acqs, config=cfg)
        if not (errors and "server busy" in errors[0]):
            break
        time.sleep(0.25)
    assert errors == [] and closed and len(images) == 1, errors
    return images


def acquisition_bytes(raw_file: Path, index: int = -1, **fields: int) -> bytes:
    """The bytes of one acquisition of the file, its header fields changed (the payload left as it was)."""
    _, acqs = acquisitions(raw_file)
    data = bytearray(acqs[index].to_bytes())
    head = ismrmrd.AcquisitionHeader.from_buffer(data)
    for name, value in fields.items():
        setattr(head, name, value)
    return bytes(data)


# ---- bundles: a name inside the root, never a path ------------------------------------------------------
@pytest.mark.parametrize("name", ["/etc", "../outside", "..", ".", "ABSOLUTE", "escape", "missing", ".hidden",
                                  "good/../escape", "good\\..", "a\tb"])
def test_a_bundle_outside_the_root_is_refused_without_server_paths(server: GadgetServer, raw_file: Path,
                                                                   root: Path, name: str) -> None:
    if name == "ABSOLUTE":
        name = str(root / "good")  # a real bundle, but named by its path
    reason = assert_refused(talk(server.address, opening(raw_file, name)), f"bundle {name!r} is not available")
    rest = reason.replace(repr(name), "")
    assert str(root.parent) not in rest and "/tmp" not in rest and "/etc" not in rest
    assert_still_serving(server.address, raw_file)


def test_a_bundle_that_fails_to_load_is_reported_without_server_paths(server: GadgetServer, raw_file: Path,
                                                                      root: Path) -> None:
    reason = assert_refused(talk(server.address, opening(raw_file, "broken")),
                            "bundle 'broken' could not be loaded", "not JSON")
    assert str(root) not in reason
    assert_still_serving(server.address, raw_file)


@pytest.mark.parametrize("name", ["good", "inner"])
def test_a_bundle_named_inside_the_root_is_served(server: GadgetServer, raw_file: Path, root: Path,
                                                  name: str) -> None:
    images = assert_still_serving(server.address, raw_file, bundle=name)
    assert images[0].data.dtype == np.complex64  # the bundle's recon, not the default
    assert_same_as_recon(images, Recon.load(root / "good"), raw_file, acquisitions(raw_file)[1])


def test_a_server_without_bundles_refuses_every_named_bundle(raw_file: Path, root: Path) -> None:
    with running(GadgetServer(port=0, bundle=root / "good", limits=LIMITS)) as srv:
        assert_refused(talk(srv.address, opening(raw_file, "good")),
                       "bundle 'good' is not available", "serves no named bundles")
        images = assert_still_serving(srv.address, raw_file)  # no name: the bundle fixed at start
        assert images[0].data.dtype == np.complex64


# ---- connections: a cap, idle and message timeouts ------------------------------------------------------
def test_fifty_idle_connections_are_capped_and_timed_out(server: GadgetServer, raw_file: Path) -> None:
    socks = [socket.create_connection(server.address, timeout=TIMEOUT) for _ in range(50)]
    try:
        reasons = [assert_refused(receive(sock)) for sock in socks]  # each read has TIMEOUT: all answered
    finally:
        for sock in socks:
            sock.close()
    busy = [r for r in reasons if "server busy (4 connections being served)" in r]
    idle = [r for r in reasons if "idle timeout: no config message within 0.5 s" in r]
    assert len(busy) + len(idle) == 50, reasons
    assert len(idle) >= 4 and len(busy) >= 25  # the first four were served (and timed out); most were refused
    assert_still_serving(server.address, raw_file)
    for thread in list(server.threads):
        thread.join(TIMEOUT)
        assert not thread.is_alive()  # one thread per served connection, and each ended


def test_an_idle_connection_mid_stream_times_out(server: GadgetServer, raw_file: Path) -> None:
    _, acqs = acquisitions(raw_file)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(opening(raw_file) + message(1008, acqs[0].to_bytes()))  # then nothing, socket left open
        assert_refused(receive(sock), "idle timeout: no message within 0.5 s")
    assert_still_serving(server.address, raw_file)


def test_a_message_that_trickles_in_times_out(server: GadgetServer, raw_file: Path) -> None:
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(message(2, struct.pack("<I", 100)) + b"<configuration")  # 14 of 100 bytes, then silence
        assert_refused(receive(sock), "config not complete within 1 s", "14 of 100 bytes")
    assert_still_serving(server.address, raw_file)


# ---- sizes: checked against the declared encoding before any allocation --------------------------------
def image_bytes(matrix: tuple[int, int, int], channels: int = 1, attributes: int = 0) -> bytes:
    head = ismrmrd.ImageHeader()
    head.version, head.data_type, head.channels = 1, ismrmrd.DATATYPE_CXFLOAT, channels
    head.matrix_size[:] = matrix
    return bytes(head) + struct.pack("<Q", attributes)


def waveform_bytes(samples: int, channels: int) -> bytes:
    head = ismrmrd.WaveformHeader()
    head.version, head.number_of_samples, head.channels = 1, samples, channels
    return bytes(head)


OVERSIZED: dict[str, tuple[Callable[[Path], bytes], tuple[str, ...]]] = {
    "config of 2 GB": (lambda _f: message(2, struct.pack("<I", 1 << 31)),
                       ("the config message declares 2147483648 bytes; at most 16777216 are accepted",)),
    "header of 4 GB": (lambda f: config() + message(3, struct.pack("<I", (1 << 32) - 1)),
                       ("the ISMRMRD header message declares 4294967295 bytes",)),
    "acquisition of 17 GB": (lambda f: opening(f) + message(1008, acquisition_bytes(
        f, number_of_samples=65535, trajectory_dimensions=65535)[:ctypes.sizeof(ismrmrd.AcquisitionHeader)]),
        (f"acquisition 1 declares {65535 * 3 * 8 + 65535 * 65535 * 4} bytes",
         "exceeds the limit of 8388608 bytes per connection")),
    "more channels than the header": (lambda f: opening(f) + message(1008, acquisition_bytes(
        f, active_channels=65535)), ("acquisition 1 declares 65535 active channels; the ISMRMRD header declares 3",)),
    "image of 2 PB": (lambda f: opening(f) + message(1022, image_bytes((65535, 65535, 65535), 2)),
                      ("an image declares", "exceeds the limit")),
    "image attributes of 1 TB": (lambda f: opening(f) + message(1022, image_bytes((4, 4, 1), 1, 1 << 40)),
                                 ("an image declares 1099511627776 bytes of attributes",)),
    "waveform of 17 GB": (lambda f: opening(f) + message(1026, waveform_bytes(65535, 65535)),
                          ("a waveform declares 17179344900 bytes", "exceeds the limit")),
}


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_an_oversized_declared_length_is_refused_before_allocation(server: GadgetServer, raw_file: Path,
                                                                   case: str) -> None:
    build_payload, fragments = OVERSIZED[case]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert_refused(talk(server.address, build_payload(raw_file)), *fragments)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB"
    assert_still_serving(server.address, raw_file)


def test_images_in_the_stream_are_passed_back_after_their_checks(server: GadgetServer, raw_file: Path) -> None:
    _, acqs = acquisitions(raw_file)
    passing = ismrmrd.Image.from_array(np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    passing.attribute_string = "<ismrmrdMeta/>"
    payload = (opening(raw_file) + message(1022, passing.to_bytes())
               + b"".join(message(1008, a.to_bytes()) for a in acqs) + message(4))
    images, errors, closed = talk(server.address, payload)
    assert errors == [] and closed and len(images) == 2
    np.testing.assert_array_equal(images[0].data, passing.data)  # unchanged, ahead of the recon's image


# ---- garbage, unknown messages, malformed text ---------------------------------------------------------
def garbage(first: bytes) -> bytes:
    """4 KB: ``first`` and then seeded random bytes."""
    return first + np.random.default_rng(13).integers(0, 256, 4096 - len(first), dtype=np.uint8).tobytes()


@pytest.mark.parametrize(("case", "fragments"), [
    ("garbage first", ("unknown message id 12345 where the config message (id 2) was expected",)),
    ("garbage after the header", ("unknown message id 48879 is not accepted here",)),
    ("garbage as a config", ("malformed config:",)),
    ("garbage as a header", ("ISMRMRD header rejected:",)),
    ("garbage as an acquisition", ("acquisition 1 ",)),
    ("a known id not served", ("message id 1024 (image array) is not accepted here",)),
    ("header first", ("message id 3 (HEADER) where the config message (id 2) was expected",)),
    ("entity in the header", ("DOCTYPE/ENTITY declarations are not accepted",)),
])
def test_garbage_gets_an_error_with_a_reason(server: GadgetServer, raw_file: Path, case: str,
                                             fragments: tuple[str, ...]) -> None:
    payload = {
        "garbage first": garbage(struct.pack("<H", 12345)),
        "garbage after the header": opening(raw_file) + garbage(struct.pack("<H", 0xBEEF)),
        "garbage as a config": text(2, garbage(b"<")),
        "garbage as a header": config() + text(3, garbage(b"<")),
        "garbage as an acquisition": opening(raw_file) + garbage(struct.pack("<H", 1008)),
        "a known id not served": opening(raw_file) + garbage(struct.pack("<H", 1024)),
        "header first": text(3, "<ismrmrdHeader/>"),
        "entity in the header": config() + text(3, '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                                                   "<ismrmrdHeader>&e;</ismrmrdHeader>"),
    }[case]
    reason = assert_refused(talk(server.address, payload), *fragments)
    assert "root:" not in reason
    assert_still_serving(server.address, raw_file)


# ---- truncation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cut", "fragments"), [
    ("in the header", ("acquisition 6 truncated", "inside its header (100 of 340 bytes)")),
    ("in the data", ("acquisition 6 truncated", "inside its data")),
    ("before CLOSE", ("ended the stream without CLOSE (id 4) after 5 acquisitions",)),
])
def test_a_truncated_acquisition_is_answered_with_an_error(server: GadgetServer, raw_file: Path, cut: str,
                                                           fragments: tuple[str, ...]) -> None:
    _, acqs = acquisitions(raw_file)
    payload = opening(raw_file) + b"".join(message(1008, a.to_bytes()) for a in acqs[:5])
    whole = acqs[5].to_bytes()
    payload += {"in the header": message(1008, whole[:100]), "in the data": message(1008, whole[:-10]),
                "before CLOSE": b""}[cut]
    assert_refused(talk(server.address, payload), *fragments)
    assert_still_serving(server.address, raw_file)


def test_a_client_gone_mid_acquisition_leaves_the_server_serving(server: GadgetServer, raw_file: Path) -> None:
    _, acqs = acquisitions(raw_file)
    for _ in range(3):
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            sock.sendall(opening(raw_file) + message(1008, acqs[0].to_bytes()[:200]))
        # closed without reading: the ERROR goes nowhere, the server logs it and moves on
    assert_still_serving(server.address, raw_file)


def test_memory_stays_bounded_over_repeated_attacks(server: GadgetServer, raw_file: Path) -> None:
    assert_still_serving(server.address, raw_file)  # the recon's own working set is in the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        for build_payload, fragments in OVERSIZED.values():
            assert_refused(talk(server.address, build_payload(raw_file)), *fragments)
        assert_refused(talk(server.address, garbage(struct.pack("<H", 12345))), "unknown message id 12345")
        assert_refused(talk(server.address, opening(raw_file) + message(1008, b"\0" * 50)), "truncated")
    assert_still_serving(server.address, raw_file)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB"


# ---- the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    (["--bundles", "/nonexistent-bundles"], "--bundles /nonexistent-bundles: not a folder"),
    (["--idle-timeout", "0"], "--idle-timeout 0.0: expected a positive number"),
    (["--max-connections", "-1"], "--max-connections -1: expected a positive number"),
    (["--message-timeout", "nan"], "--message-timeout nan: expected a positive number"),
    (["--port", "70000"], "--port 70000"),
])
def test_gadget_command_refuses_bad_options(args: list[str], expected: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mrbridge", "gadget", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_gadget_command_serves_named_bundles_from_its_folder(raw_file: Path, root: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mrbridge", "gadget", "--port", "0", "--bundles", str(root),
                             "--idle-timeout", "5", "--max-connections", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the gadget did not start"
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        address = ("127.0.0.1", int(line.split("127.0.0.1:")[1].split()[0]))
        assert_refused(talk(address, opening(raw_file, "/etc")), "bundle '/etc' is not available")
        images = assert_still_serving(address, raw_file, bundle="good")
        assert images[0].data.dtype == np.complex64
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)
