"""The cheapest HTTP/1.1 client this machine has: pre-encoded requests over raw keep-alive sockets.

Used where the client must cost next to nothing: measuring the simulator's own ceiling, and
creating the jobs each case cancels (outside any timed region). One thread drives every
connection through `selectors`; each connection has one request in flight at a time.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

API_VERSION = "2024-10-21"
JOBS_PATH = "/openai/fine_tuning/jobs"
_HEADER_END = b"\r\n\r\n"
_CREATE_BODY = json.dumps({"model": "gpt-4o-mini-2024-07-18", "training_file": "file-bench"}).encode()


@dataclass
class Exchange:
    """What a batch of requests got back, in the order the requests were given."""

    seconds: float
    statuses: list[int]
    bodies: list[bytes] = field(default_factory=list)


@dataclass
class _Connection:
    sock: socket.socket
    index: int = -1  # the request in flight
    buffer: bytes = b""


def create_request(api_key: str) -> bytes:
    """POST /openai/fine_tuning/jobs: a new job in status `pending`, which a cancel accepts."""
    return (
        f"POST {JOBS_PATH}?api-version={API_VERSION} HTTP/1.1\r\nHost: 127.0.0.1\r\napi-key: {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(_CREATE_BODY)}\r\n\r\n"
    ).encode() + _CREATE_BODY


def cancel_request(job_id: str, api_key: str) -> bytes:
    """POST /openai/fine_tuning/jobs/{id}/cancel, as any client sends it."""
    return (
        f"POST {JOBS_PATH}/{job_id}/cancel?api-version={API_VERSION} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"api-key: {api_key}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def exchange(port: int, requests: Sequence[bytes], *, concurrency: int, keep_bodies: bool = False) -> Exchange:
    """Send every request over `concurrency` keep-alive connections to 127.0.0.1:port."""
    statuses = [0] * len(requests)
    bodies: list[bytes] = [b""] * len(requests) if keep_bodies else []
    selector = selectors.DefaultSelector()
    next_request = 0
    started = time.perf_counter()
    for _ in range(min(concurrency, len(requests))):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock, index=next_request)
        sock.sendall(requests[next_request])
        next_request += 1
        selector.register(sock, selectors.EVENT_READ, connection)
    try:
        while selector.get_map():
            for key, _ in selector.select(timeout=30):
                connection = key.data
                chunk = connection.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"the server closed a connection during request {connection.index}")
                connection.buffer += chunk
                while (answered := _split_response(connection.buffer)) is not None:
                    status, body, connection.buffer = answered
                    statuses[connection.index] = status
                    if keep_bodies:
                        bodies[connection.index] = body
                    if next_request < len(requests):
                        connection.index = next_request
                        connection.sock.sendall(requests[next_request])
                        next_request += 1
                    else:
                        selector.unregister(connection.sock)
                        connection.sock.close()
                        break
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()
    return Exchange(time.perf_counter() - started, statuses, bodies)


def create_jobs(port: int, api_key: str, count: int, *, concurrency: int = 8) -> list[str]:
    """Create `count` cancellable jobs in the simulator and return their ids."""
    if count == 0:
        return []
    result = exchange(port, [create_request(api_key)] * count, concurrency=concurrency, keep_bodies=True)
    if any(status != 201 for status in result.statuses):
        raise RuntimeError(f"the simulator refused to create jobs: statuses {sorted(set(result.statuses))}")
    return [json.loads(body)["id"] for body in result.bodies]


def _split_response(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """(status, body, rest of the buffer) when a whole response is buffered, else None."""
    header_end = buffer.find(_HEADER_END)
    if header_end < 0:
        return None
    head = buffer[:header_end]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    body_start = header_end + len(_HEADER_END)
    if len(buffer) < body_start + length:
        return None
    status = int(head[9:12])
    return status, buffer[body_start : body_start + length], buffer[body_start + length :]
