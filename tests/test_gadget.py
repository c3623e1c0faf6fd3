"""The Gadgetron gadget, driven over localhost sockets by a client speaking Gadgetron's protocol.

The client sends with ``ismrmrd.serialization.ProtocolSerializer`` (CONFIG text, HEADER, acquisitions, CLOSE)
and reads ISMRMRD images, ERROR (id 8, uint64 length, text) and CLOSE. Both launch modes: the listening server
(``GadgetServer``) and ``python -m gadgetron PORT mrbridge.gadget handle`` started the way Gadgetron starts it.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
import torch
from ismrmrd.serialization import ConfigText, ProtocolSerializer

from mrbridge.gadget import GadgetServer
from mrbridge.raw.mrd import read_mrd, write_mrd
from mrbridge.recon.pipeline import Recon, ReconConfig
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from tests.helpers import REPO

TIMEOUT = 60.0


# ---- a minimal Gadgetron client ------------------------------------------------------------------------
def acquisitions(path: Path) -> tuple[ismrmrd.xsd.ismrmrdHeader, list[ismrmrd.Acquisition]]:
    """The header and every acquisition of an ISMRMRD file, read by the ismrmrd package."""
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    return header, acqs


def send(sock: socket.socket, header: ismrmrd.xsd.ismrmrdHeader | bytes, acqs: list[ismrmrd.Acquisition], *,
         config: str = "<configuration/>", close: bool = True, extra: bytes = b"") -> None:
    """CONFIG, HEADER (an object, or raw bytes sent as a HEADER message), acquisitions, ``extra`` bytes, CLOSE."""
    stream = sock.makefile("wb")
    serializer = ProtocolSerializer(stream)
    serializer.serialize(ConfigText(config))
    if isinstance(header, bytes):
        stream.write(struct.pack("<HI", 3, len(header)) + header)
    else:
        serializer.serialize(header)
    for acq in acqs:
        serializer.serialize(acq)
    stream.write(extra)
    if close:
        serializer.close()
    stream.flush()


def receive(sock: socket.socket) -> tuple[list[ismrmrd.Image], list[str], bool]:
    """Read until CLOSE or end of stream: (images, error texts, CLOSE seen)."""
    stream = sock.makefile("rb")
    images: list[ismrmrd.Image] = []
    errors: list[str] = []
    while True:
        head = stream.read(2)
        if len(head) < 2:
            return images, errors, False
        (mid,) = struct.unpack("<H", head)
        if mid == 4:
            return images, errors, True
        if mid == 8:
            (length,) = struct.unpack("<Q", stream.read(8))
            errors.append(stream.read(length).decode())
        elif mid == 1022:
            images.append(ismrmrd.Image.deserialize_from(stream.read))
        else:
            raise AssertionError(f"unexpected message id {mid} from the gadget")


def exchange(address: tuple[str, int], header: ismrmrd.xsd.ismrmrdHeader | bytes, acqs: list[ismrmrd.Acquisition],
             **kwargs: object) -> tuple[list[ismrmrd.Image], list[str], bool]:
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        send(sock, header, acqs, **kwargs)  # type: ignore[arg-type]
        return receive(sock)


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-coil GRE with a noise scan (16 × 16, 2 repetitions' worth of labels via contrasts = 1)."""
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(update={"dummies": 0})
    raw = simulate(build(protocol, matrix=16), builtin("brain", matrix=16, coils=3), noise=0.01, seed=3)
    path = tmp_path_factory.mktemp("gadget") / "gre.h5"
    write_mrd(raw, path)
    return path


@pytest.fixture(scope="module")
def server() -> Iterator[GadgetServer]:
    srv = GadgetServer(port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(TIMEOUT)


def assert_same_as_recon(images: list[ismrmrd.Image], recon: Recon, path: Path,
                         acqs: list[ismrmrd.Acquisition]) -> None:
    """The gadget's images equal ``recon`` on the same file (what ``mrbridge recon`` computes), with geometry.

    Equal to float32 rounding: a gadget launched in another process may sum in another order (threads)."""
    with torch.no_grad():
        expected = recon(read_mrd(path))
    frames = expected.data.numpy().reshape(-1, *expected.data.shape[-3:])
    assert len(images) == frames.shape[0]
    first = next(a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT))
    for img, frame in zip(images, frames, strict=True):
        assert img.data.shape == (1, *frame.shape)
        np.testing.assert_allclose(img.data[0], frame, rtol=1e-5, atol=1e-6 * float(np.abs(frame).max()))
        assert tuple(img.matrix_size) == tuple(reversed(frame.shape))
        np.testing.assert_allclose(tuple(img.field_of_view), [f * 1e3 for f in expected.fov], rtol=1e-6)
        np.testing.assert_allclose(tuple(img.read_dir), tuple(first.read_dir))
        np.testing.assert_allclose(tuple(img.position), tuple(first.position))
        assert img.meta["DataRole"] == "Image"
        assert img.meta["mrbridge.method"] == recon.config.method


# ---- listening mode ------------------------------------------------------------------------------------
def test_binds_to_localhost_by_default(server: GadgetServer) -> None:
    assert server.address[0] == "127.0.0.1"


def test_listening_gadget_gives_the_recon_images(server: GadgetServer, raw_file: Path) -> None:
    header, acqs = acquisitions(raw_file)
    assert any(a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT) for a in acqs)  # prewhitening runs too
    images, errors, closed = exchange(server.address, header, acqs)
    assert errors == [] and closed
    assert_same_as_recon(images, Recon(), raw_file, acqs)


def test_disconnect_mid_stream_leaves_the_server_serving(server: GadgetServer, raw_file: Path) -> None:
    header, acqs = acquisitions(raw_file)
    half = acqs[: len(acqs) // 2]
    partial = b"".join([struct.pack("<H", 1008), acqs[-1].to_bytes()[:100]])  # cut inside an acquisition
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        send(sock, header, half, close=False, extra=partial)
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:  # gone before the header
        sock.sendall(struct.pack("<HI", 2, 1000) + b"<config")
    images, errors, closed = exchange(server.address, header, acqs)
    assert errors == [] and closed and len(images) == 1
    for thread in list(server.threads):  # the abandoned connections' threads ended (none spins on EOF)
        thread.join(10.0)
        assert not thread.is_alive()


@pytest.mark.parametrize("case", ["unknown message", "bad header", "labels outside the matrix", "cut message id"])
def test_malformed_input_reaches_the_client_as_an_error(server: GadgetServer, raw_file: Path, case: str) -> None:
    header, acqs = acquisitions(raw_file)
    if case == "unknown message":
        images, errors, closed = exchange(server.address, header, acqs[:5], extra=struct.pack("<H", 999) + b"x" * 64)
        expected = "message id 999"
    elif case == "bad header":
        images, errors, closed = exchange(server.address, b"<ismrmrdHeader><oops", acqs[:5])
        expected = "header rejected"
    elif case == "labels outside the matrix":
        bad = acqs[-1]
        bad.idx.kspace_encode_step_1 = 500
        images, errors, closed = exchange(server.address, header, acqs)
        expected = "kspace_encode_step_1 up to 500"
    else:
        with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
            send(sock, header, acqs[:5], close=False, extra=struct.pack("<H", 4)[:1])
            sock.shutdown(socket.SHUT_WR)
            images, errors, closed = receive(sock)
        expected = "the client ended the stream inside a message id (1 of 2 bytes)"  # still told, then CLOSE
    assert images == [] and closed
    assert len(errors) == 1 and expected in errors[0], errors
    good, errors, _ = exchange(server.address, *acquisitions(raw_file))  # the server survived
    assert errors == [] and len(good) == 1


# ---- launched by Gadgetron ------------------------------------------------------------------------------
def run_launched(config: str, header: ismrmrd.xsd.ismrmrdHeader, acqs: list[ismrmrd.Acquisition], *,
                 hang_up: bool = False, bundles: Path | None = None
                 ) -> tuple[list[ismrmrd.Image], list[str], bool, int | None]:
    """Play Gadgetron: listen, start ``python -m gadgetron PORT mrbridge.gadget handle``, stream, collect.

    ``hang_up``: send only the first acquisitions and part of the next one, then close the socket.
    ``bundles``: the bundle folder given to the module (``MRBRIDGE_GADGET_BUNDLES``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRBRIDGE_GADGET_")}
    if bundles is not None:
        env["MRBRIDGE_GADGET_BUNDLES"] = str(bundles)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "gadgetron", str(port), "mrbridge.gadget", "handle"],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        images: list[ismrmrd.Image] = []
        errors: list[str] = []
        closed = False
        try:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(TIMEOUT)
                if hang_up:
                    send(sock, header, acqs[:3], config=config, close=False, extra=b"\xf0\x03" + b"\0" * 40)
                    sock.shutdown(socket.SHUT_RDWR)
                else:
                    send(sock, header, acqs, config=config)
                    images, errors, closed = receive(sock)
            _, stderr = proc.communicate(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert b"Traceback" not in stderr, stderr.decode()
    return images, errors, closed, proc.returncode


@pytest.mark.slow
def test_launched_gadget_runs_the_named_bundle_recon_and_reports_errors(raw_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    recon = Recon(ReconConfig(method="fft", coil_combine="sensitivity"))
    recon.save(root / "run1")
    header, acqs = acquisitions(raw_file)
    config = '<configuration><property name="bundle" value="run1"/></configuration>'
    images, errors, closed, code = run_launched(config, header, acqs, bundles=root)
    assert errors == [] and closed and code == 0
    assert images[0].data.dtype == np.complex64
    assert_same_as_recon(images, Recon.load(root / "run1"), raw_file, acqs)

    for name, bundles in [("no-bundle", root), (str(root / "run1"), root), ("run1", None)]:
        config = f'<configuration><property name="bundle" value="{name}"/></configuration>'
        images, errors, closed, code = run_launched(config, header, acqs, bundles=bundles)
        assert images == [] and closed and code == 0
        assert len(errors) == 1 and f"bundle {name!r} is not available" in errors[0], errors
        assert str(tmp_path) not in errors[0].replace(repr(name), "")  # no server path beyond the client's words

    _, _, _, code = run_launched("<configuration/>", header, acqs, hang_up=True)  # Gadgetron gone mid-stream
    assert code == 0  # and no traceback (checked in run_launched): the module ends cleanly, no spinning
