"""Listening for Gadgetron: a thread per connection, a cap on connections, busy clients refused at once."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from pathlib import Path

from gadgetron.external.constants import GADGET_MESSAGE_CLOSE, GadgetMessageIdentifier

from mrbridge.errors import MrbridgeError
from mrbridge.gadget.bundles import Bundles
from mrbridge.gadget.conversation import serve_connection
from mrbridge.gadget.messages import CHUNK, MAX_REFUSED, REFUSED_DRAIN_SECONDS, Limits, send_error

log = logging.getLogger(__name__)


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
                            more = conn.recv(CHUNK)
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
