"""`ftcancel guard` against a small local fake of the function app's host: the kill switch route and the admin API.

The fake answers as scripted and keeps every request, so each test sees what ftcancel sent. The
admin API's rules (path at the host's root, `{"input": ...}` body, master key in `x-functions-key`,
202 at once) are those of azure-functions-host `src/WebJobs.Script.WebHost/Controllers/FunctionsController.cs`,
`Invoke`. tests/e2e/test_e2e_guard.py runs `guard cancel-active` against the real route in the runner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack._http import AppHandler, BackgroundServer, EmulatorServer, QuietHandler
from opscli.cli import main

MASTER_KEY = "master-key-for-tests"
FUNCTION_KEY = "function-key-for-tests"


@dataclass
class FakeHost:
    """A function app's host on 127.0.0.1 answering every request with the next scripted (status, body)."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def __call__(self, handler: QuietHandler) -> None:
        body = handler.read_body()
        self.seen.append({
            "method": handler.command,
            "path": handler.path,
            "key": handler.headers.get("x-functions-key"),
            "body": json.loads(body) if body else None,
        })
        status, payload = self.answers.pop(0) if self.answers else (500, None)
        if payload is None:
            handler.send_raw(status, b"", content_type="text/plain")
        else:
            handler.send_json(status, payload)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


@pytest.fixture
def host() -> Iterator[FakeHost]:
    fake = FakeHost()
    server = BackgroundServer(EmulatorServer(("127.0.0.1", 0), AppHandler, app=fake), "fake-host")
    server.start()
    fake.port = server.port
    try:
        yield fake
    finally:
        server.stop()


def ftcancel(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- guard sweep: the host's admin API ----------------------------------------------------------


def test_sweep_invokes_the_timer_function_through_the_admin_api_with_the_master_key(host, capsys) -> None:
    host.answers.append((202, None))  # the host's Accepted(): no body
    code, out, _ = ftcancel(capsys, "guard", "sweep", "--url", host.api_url, "--master-key", MASTER_KEY)
    assert code == 0 and "sweep started" in out and "guard sweep:" in out
    assert host.seen == [
        {"method": "POST", "path": "/admin/functions/guard_sweep", "key": MASTER_KEY, "body": {"input": ""}}
    ]


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "master key refused"),
        (404, "no function guard_sweep"),
        (503, "answered 503"),
    ],
)
def test_sweep_reports_what_the_admin_api_answered(host, capsys, status: int, says: str) -> None:
    host.answers.append((status, None))
    code, out, err = ftcancel(capsys, "guard", "sweep", "--url", host.api_url, "--master-key", MASTER_KEY)
    assert code == 1 and out == "" and says in err and MASTER_KEY not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dry-run", "--master-key", MASTER_KEY], "dry_run\": true in GUARD_POLICY"),
        ([], "--master-key is needed"),
    ],
)
def test_sweep_sends_nothing_when_it_cannot_do_what_is_asked(host, capsys, monkeypatch, argv, says) -> None:
    monkeypatch.delenv("FTCANCEL_MASTER_KEY", raising=False)
    code, _, err = ftcancel(capsys, "guard", "sweep", "--url", host.api_url, *argv)
    assert code == 2 and says in err and host.seen == []


# --- guard cancel-active: the kill switch route -------------------------------------------------


def test_cancel_active_sends_the_contracts_body_and_prints_what_it_enqueued(host, capsys) -> None:
    host.answers.append((202, {"enqueued": 1, "would_cancel": ["ftjob-a", "ftjob-b"]}))
    code, out, err = ftcancel(
        capsys, "guard", "cancel-active", "--url", host.api_url, "--key", FUNCTION_KEY,
        "--resource", "second", "--states", "waiting", "paused", "waiting",
    )
    assert code == 0 and out.splitlines() == ["ftjob-a", "ftjob-b"]
    assert "enqueued 1 cancel request (guard:cancel-active) for 2 matching jobs; 1 already had one pending" in err
    assert host.seen == [{
        "method": "POST",
        "path": "/api/guard/cancel-active",
        "key": FUNCTION_KEY,
        "body": {"dry_run": False, "resource": "second", "states": ["waiting", "paused"]},
    }]


def test_a_dry_run_kill_switch_asks_for_one_and_says_nothing_was_enqueued(host, capsys) -> None:
    host.answers.append((200, {"enqueued": 0, "would_cancel": ["ftjob-a"]}))
    code, out, err = ftcancel(capsys, "guard", "cancel-active", "--url", host.api_url, "--key", FUNCTION_KEY,
                              "--dry-run", "--json")
    assert code == 0 and json.loads(out) == {"enqueued": 0, "would_cancel": ["ftjob-a"]}
    assert "dry run: 1 job would be cancelled; nothing enqueued" in err
    assert host.seen[0]["body"] == {"dry_run": True}


@pytest.mark.parametrize(
    ("status", "answer", "code", "says"),
    [
        (202, {"enqueued": 0, "would_cancel": [], "incomplete": [{"resource": "second", "problem": "page 1: 503"}]},
         1, "listing resource second is incomplete: page 1: 503"),
        (202, {"enqueued": 0, "would_cancel": ["ftjob-a"], "not_enqueued": ["default/ftjob-a: blob storage"]},
         1, "not enqueued: default/ftjob-a: blob storage"),
        (400, {"error": {"code": "invalidPayload", "message": "resource is not one of the app's resources",
                         "target": "resource"}}, 2, "the app refused the request: resource is not one"),
        (503, {"error": {"code": "serviceUnavailable", "message": "storage is down"}}, 1, "answered 503: storage is down"),
        (404, None, 1, "no guard route"),
        (202, {"enqueued": "3"}, 1, "answered 202"),
    ],
)
def test_cancel_active_says_what_it_could_not_do(host, capsys, status, answer, code, says) -> None:
    host.answers.append((status, answer))
    exit_code, _, err = ftcancel(capsys, "guard", "cancel-active", "--url", host.api_url, "--key", FUNCTION_KEY)
    assert exit_code == code and says in err and FUNCTION_KEY not in err


def test_cancel_active_refuses_a_state_that_is_not_active_before_sending(host, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["guard", "cancel-active", "--url", host.api_url, "--key", FUNCTION_KEY, "--states", "succeeded"])
    assert exit_info.value.code == 2 and "invalid choice: 'succeeded'" in capsys.readouterr().err
    assert host.seen == []
