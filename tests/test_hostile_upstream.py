"""An upstream that misbehaves on purpose: huge bodies, trickled bytes, redirects, broken JSON."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from devstack.openai_sim import FineTuningSimulator
from shared.upstream import MAX_BODY_BYTES


class TrickleServer:
    """Answers every request with headers at once, then one body byte every `interval` seconds."""

    def __init__(self, *, interval: float = 0.2) -> None:
        self.interval = interval
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self._sock.getsockname()[1]

    def __enter__(self) -> TrickleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        body = b'{"id": "ftjob-abc", "status": "cancelled", "object": "fine_tuning.job"}'
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                )
                for byte in body:
                    if self._stop.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return


@pytest.fixture
def trickle(monkeypatch: pytest.MonkeyPatch, app_settings: dict[str, str]) -> Iterator[TrickleServer]:
    with TrickleServer() as server:
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.endpoint)
        monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "1")
        yield server


def test_trickled_body_ends_at_the_read_timeout_as_503(trickle: TrickleServer, call_http) -> None:
    # Each byte arrives within the socket timeout; only our own clock can stop the trickle (70 bytes x 0.2 s).
    call = call_http("ftjob-abc")
    assert call.response.status_code == 503 and call.record["retryable"] is True
    assert "read timeout" in call.record["error"]["message"]
    assert call.record["attempts"] == 2 and trickle.connections == 2


def test_body_over_the_cap_is_502_and_not_read_in_full(simulator: FineTuningSimulator, call_http) -> None:
    simulator.fail_next(status=200, body=b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}', path_suffix="/cancel")
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 502
    assert call.record["error"]["code"] == "internalFailure"
    assert str(MAX_BODY_BYTES) in call.record["error"]["message"]


def test_redirect_to_another_host_is_not_followed_with_the_key(
    simulator: FineTuningSimulator, call_http
) -> None:
    with FineTuningSimulator(api_key="other") as elsewhere:
        target = elsewhere.endpoint + "/openai/fine_tuning/jobs/ftjob-x/cancel?api-version=2024-10-21"
        for status in (301, 302, 307, 308):
            simulator.fail_next(status=status, headers={"location": target}, body=b"", path_suffix="/cancel")
            call = call_http(simulator.create_job()["id"])
            assert call.response.status_code == 502
            assert call.record["error"]["code"] == "internalFailure"
            assert "redirect" in call.record["error"]["message"] and "not followed" in call.record["error"]["message"]
        assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>"),
        ("application/json", b'{"id": "ftjob-abc", "status": "cancel'),
        ("application/json", b'"just a string"'),
        ("application/json", b"null"),
        ("text/plain", b""),
    ],
    ids=["html-page", "truncated-json", "json-string", "json-null", "empty"],
)
def test_malformed_success_body_is_502_saying_what_came_back(
    simulator: FineTuningSimulator, call_http, content_type: str, body: bytes
) -> None:
    simulator.fail_next(status=200, headers={"content-type": content_type}, body=body, path_suffix="/cancel")
    call = call_http(simulator.create_job()["id"])
    assert call.response.status_code == 502
    message = call.record["error"]["message"]
    assert "200" in message and content_type in message
