"""Threaded keep-alive HTTP(S) server base shared by the local emulators.

Each response goes out in one socket write with Nagle off, so keep-alive clients never
wait for a delayed ACK; stop() closes the listener and every open connection promptly.
The ready line an emulator prints when it runs as a program is devstack/processes.py's.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import time
from typing import Any

# HTTP/1.1 status lines, built once.
_STATUS_LINES: dict[int, bytes] = {
    int(status): b"HTTP/1.1 %d %s\r\n" % (int(status), status.phrase.encode("latin-1")) for status in HTTPStatus
}
_QUIET_ERRORS = (OSError,)  # hang-ups, timeouts and failed TLS handshakes


def status_line(status: int) -> bytes:
    """Return the HTTP/1.1 status line for a status code."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Status\r\n" % status


class _DateHeader:
    """The `Date` header value, recomputed at most once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def value(self) -> bytes:
        """Return the current date as an HTTP date."""
        now = int(time())
        if now != self._second:
            self._value = formatdate(now, usegmt=True).encode("ascii")
            self._second = now
        return self._value


_DATE = _DateHeader()


class EmulatorServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks connections so stop() can end them, with optional TLS."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs under benchmark concurrency

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        app: Any,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address, handler)
        self.app = app
        self.ssl_context = ssl_context
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection in its own thread, doing the TLS handshake here rather than in accept()."""
        with self._connections_lock:
            self._connections.add(request)
        try:
            if self.ssl_context is not None:
                tls = self.ssl_context.wrap_socket(request, server_side=True)
                with self._connections_lock:
                    self._connections.discard(request)
                    self._connections.add(tls)
                request = tls
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - reported by handle_error, as the base class does
            self.handle_error(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up or fail the TLS handshake; report real bugs."""
        if isinstance(sys.exc_info()[1], _QUIET_ERRORS):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut down every open connection so blocked handler threads see EOF and exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                # socket.socket.shutdown on purpose: SSLSocket.shutdown would drop its SSL object
                # under the handler thread that is still reading from it.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive request handler with one-write responses and no request logging."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        """Do not log requests."""

    def read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked) so the connection stays usable."""
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                self.close_connection = True
                return b""
            return self.rfile.read(size) if size > 0 else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def send_raw(
        self,
        status: int,
        body: bytes,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> None:
        """Write status line, headers and body with a single socket write."""
        parts = [
            status_line(status),
            b"Date: ",
            _DATE.value(),
            b"\r\nContent-Type: ",
            content_type.encode("latin-1"),
            b"\r\nContent-Length: ",
            str(len(body)).encode("ascii"),
            b"\r\n",
        ]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.close_connection:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self.wfile.write(b"".join(parts))

    def send_json(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a JSON body."""
        self.send_raw(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"), headers)

    def drop_connection(self) -> None:
        """Close the connection without sending any response."""
        self.close_connection = True
        try:
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)
        except OSError:
            pass


class AppHandler(QuietHandler):
    """Hands every request to the server's `app` callable, whatever its method."""

    def do_GET(self) -> None:
        """Serve GET."""
        self.server.app(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class BackgroundServer:
    """Runs an EmulatorServer's serve_forever loop in a daemon thread."""

    def __init__(self, server: EmulatorServer, name: str) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    @property
    def port(self) -> int:
        """Return the bound port."""
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wake sleeping handlers, close the listener and all open connections."""
        self.server.stopping.set()
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()
        self.server.close_connections()
