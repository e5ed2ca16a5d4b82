"""`ftcancel cancel` against a real local HTTP server standing in for the function app's bulk route.

What the CLI sends (one route, chunks of 100, the resource per item for one id and once for several)
and what it does with answers the real app gives only when storage fails (503 with the results).
The app's own answers, cancelled against already_terminal included, are in tests/e2e/test_cli.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from opscli.cli import main

KEY = "test-function-key"


@dataclass
class FakeBulkRoute:
    """Answers every POST with `answer(body)`; keeps each request's path, key header and JSON body."""

    url: str
    answer: Any = None
    requests: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)


def _records(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body["job_ids"]
    return [{"job_id": item if isinstance(item, str) else item["job_id"], "outcome": "cancelled", "status_code": 200,
             "attempts": 1, "request_id": f"r-{number}"} for number, item in enumerate(items)]


@pytest.fixture
def bulk_route() -> Iterator[FakeBulkRoute]:
    fake = FakeBulkRoute(url="")
    fake.answer = lambda body: (200, {"results": _records(body)})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            fake.requests.append((self.path, self.headers.get("x-functions-key"), body))
            status, answer = fake.answer(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}/api"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def cancel(bulk_route: FakeBulkRoute, *args: str) -> int:
    return main(["cancel", "--url", bulk_route.url, "--key", KEY, "--json", *args])


def test_one_id_goes_to_the_bulk_route_naming_its_resource_per_item(bulk_route: FakeBulkRoute, capsys):
    assert cancel(bulk_route, "ftjob-one1", "--resource", "sweden", "--wait", "30", "--correlation-id", "t-1") == 0

    assert bulk_route.requests == [("/api/cancel", KEY, {
        "job_ids": [{"job_id": "ftjob-one1", "resource": "sweden"}], "wait_seconds": 30, "correlation_id": "t-1",
    })]
    assert [record["job_id"] for record in map(json.loads, capsys.readouterr().out.splitlines())] == ["ftjob-one1"]


def test_several_ids_name_the_resource_once_and_go_in_requests_of_100(bulk_route: FakeBulkRoute, capsys):
    ids = [f"ftjob-many{number}" for number in range(150)]

    assert cancel(bulk_route, *ids, "--resource", "sweden") == 0

    assert [(path, body["job_ids"], body["resource"]) for path, _, body in bulk_route.requests] == [
        ("/api/cancel", ids[:100], "sweden"), ("/api/cancel", ids[100:], "sweden")
    ]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["job_id"] for record in printed] == ids


def test_a_503_with_results_prints_every_record_then_says_the_app_could_not_record_them(
    bulk_route: FakeBulkRoute, capsys
):
    message = "the results queue could not be written; the results below say what happened to each job"
    bulk_route.answer = lambda body: (503, {"error": {"code": "serviceUnavailable", "message": message,
                                                      "target": "results"}, "results": _records(body)})

    assert cancel(bulk_route, "ftjob-a1", "ftjob-b2") == 1

    out, err = capsys.readouterr()
    assert [json.loads(line)["job_id"] for line in out.splitlines()] == ["ftjob-a1", "ftjob-b2"]
    assert err == f"ftcancel: the bulk route answered 503: {message}; all 2 were sent\n"


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        ((200, {"results": []}), "the bulk route answered 200: no results list"),
        ((200, {"results": ["not a record"]}), "the bulk route answered 200: no results list"),
        ((400, {"error": {"code": "invalidPayload", "message": "resource 'x' is not one"}}),
         "the bulk route answered 400: resource 'x' is not one"),
    ],
)
def test_an_answer_without_one_record_per_id_prints_nothing_and_exits_1(
    bulk_route: FakeBulkRoute, capsys, answer: tuple[int, dict[str, Any]], shown: str
):
    bulk_route.answer = lambda body: answer

    assert cancel(bulk_route, "ftjob-a1") == 1

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"ftcancel: {shown}\n")
