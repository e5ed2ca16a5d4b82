"""`make demo` and `make run` as a user runs them: child processes, printed examples, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from devstack.stack import ChildProcess, StackError

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_TIMEOUT_SECONDS = 120
_LOOPBACK_PORT = re.compile(r"https?://127\.0\.0\.1:(\d+)")


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def python(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STACK_TIMEOUT_SECONDS,
        **kwargs,
    )


def test_demo_prints_four_records_stops_everything_and_exits_0(tmp_path: Path):
    demo = python("-m", "devstack.demo", "--log-dir", str(tmp_path / "logs"))

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert sorted(table_rows(demo.stdout)) == [
        ("http", "cancelled"),
        ("queue", "already_terminal"),
        ("queue", "cancelled"),
        ("queue", "rejected"),
    ]
    assert "HTTP 200 OK" in demo.stdout
    ports = {int(port) for port in _LOOPBACK_PORT.findall(demo.stdout)}
    assert len(ports) >= 4  # Azurite, Key Vault, simulator, runner
    assert [port for port in ports if listening(port)] == []
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == [
        "azurite.log",
        "keyvault.log",
        "openai-sim.log",
        "runner.log",
    ]


def table_rows(output: str) -> list[tuple[str, str]]:
    """(trigger, outcome) of each row of the records table the demo prints."""
    lines = output[output.index("received (UTC)") :].splitlines()[2:]
    rows = [re.split(r"\s{2,}", line) for line in lines[: lines.index("")]]
    return [(row[1], row[3]) for row in rows]


def test_run_serves_the_printed_examples_until_sigterm(tmp_path: Path):
    env = {**os.environ, "DEVSTACK_STATE_DIR": str(tmp_path)}
    stack = subprocess.Popen(
        [sys.executable, "-m", "devstack.stack", "run", "--port", "0", "--azurite-port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        printed = read_until(stack, "Read the result records")
        curl = re.search(r"curl -s -X POST -H 'x-functions-key: (\S+)' \\\n\s+(\S+)", printed)
        assert curl, printed
        response = requests.post(curl.group(2), headers={"x-functions-key": curl.group(1)}, timeout=30)
        assert (response.status_code, response.json()["status"]) == (200, "cancelled")
        enqueue = python("-m", "devstack.stack", "enqueue", "ftjob-local2", env=env)
        assert enqueue.returncode == 0, enqueue.stderr
        deadline = time.monotonic() + 30
        while True:
            results = python("-m", "devstack.stack", "results", env=env)
            assert results.returncode == 0, results.stderr
            if "2 record(s)" in results.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert re.search(r"queue\s+ftjob-local2\s+cancelled", results.stdout), results.stdout
        assert re.search(r"http\s+ftjob-local1\s+cancelled", results.stdout), results.stdout
        ports = {int(port) for port in _LOOPBACK_PORT.findall(printed)}
    finally:
        stack.send_signal(signal.SIGTERM)
        rest, _ = stack.communicate(timeout=60)
    assert stack.returncode == 0, rest
    assert [port for port in ports if listening(port)] == []
    assert not (tmp_path / "stack.json").exists()


def read_until(process: subprocess.Popen[str], marker: str, *, timeout: float = STACK_TIMEOUT_SECONDS) -> str:
    """The process's output up to two lines past the one holding `marker`; fails on exit or timeout."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        after_marker = None
        for line in process.stdout:
            lines.append(line)
            if after_marker is None and marker in line:
                after_marker = 0
            elif after_marker is not None:
                after_marker += 1
            if after_marker == 2:
                seen.set()
                return
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(timeout)
    printed = "".join(lines)
    assert marker in printed, "the stack did not get ready:\n" + printed
    return printed


def test_a_part_that_fails_to_start_is_named_with_its_log(tmp_path: Path):
    log = tmp_path / "broken.log"
    part = ChildProcess(
        "Broken part",
        [sys.executable, "-c", "import sys; print('cannot bind the port'); sys.exit(3)"],
        log_path=log,
        ready=re.compile("ready"),
    ).start()

    with pytest.raises(StackError) as failure:
        part.wait_ready(timeout=30)

    assert str(failure.value) == f"Broken part: exited with code 3 before it was ready; log: {log}"
    assert "cannot bind the port" in failure.value.log_tail()
