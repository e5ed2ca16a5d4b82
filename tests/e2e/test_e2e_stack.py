"""`make demo` and `make run` as a user runs them: child processes, printed examples, clean shutdown."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from devstack.processes import ChildProcess, StackError

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


LOGS = ["azurite-blob.log", "azurite.log", "keyvault.log", "openai-sim-keyless.log", "openai-sim.log", "runner.log"]


def test_demo_cancels_on_both_resources_prints_seven_records_stops_everything_and_exits_0(tmp_path: Path):
    demo = python("-m", "devstack.demo", "--log-dir", str(tmp_path / "logs"))

    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert sorted(table_rows(demo.stdout)) == [
        ("http", "default", "cancelled"),
        ("http", "keyless", "cancelled"),
        ("queue", "default", "already_terminal"),
        ("queue", "default", "cancelled"),
        ("queue", "default", "rejected"),
        ("queue", "keyless", "cancelled"),
        ("queue", "nowhere", "rejected"),  # a resource the app does not know
    ]
    assert demo.stdout.count("HTTP 200 OK") == 2
    assert "/resources/keyless/openai/fine_tuning/jobs/ftjob-keyless1/cancel" in demo.stdout
    ports = {int(port) for port in _LOOPBACK_PORT.findall(demo.stdout)}
    assert len(ports) >= 5  # Azurite, Key Vault, two simulators, runner
    assert [port for port in ports if listening(port)] == []
    assert sorted(path.name for path in (tmp_path / "logs").iterdir()) == LOGS


def table_rows(output: str) -> list[tuple[str, str, str]]:
    """(trigger, resource, outcome) of each row of the records table the demo prints."""
    lines = output[output.index("received (UTC)") :].splitlines()[2:]
    rows = [re.split(r"\s{2,}", line) for line in lines[: lines.index("")]]
    return [(row[1], row[2], row[4]) for row in rows]


def start_run(state_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`make run` on free ports, its state and logs in `state_dir`; and the environment that finds it."""
    env = {**os.environ, "DEVSTACK_STATE_DIR": str(state_dir)}
    stack = subprocess.Popen(
        [sys.executable, "-m", "devstack.stack", "run", "--port", "0", "--azurite-port", "0"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return stack, env


def run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """A command `make run` printed (an `ftcancel` one), as a user pastes it into a shell in the repository."""
    return subprocess.run(
        shlex.split(command), cwd=REPO_ROOT, capture_output=True, text=True, timeout=STACK_TIMEOUT_SECONDS
    )


def run_printed_curl(printed: str, *, which: int = 0) -> requests.Response:
    """The `which`-th HTTP cancel example `make run` printed, as a user pastes it."""
    curls = re.findall(r"curl -s -X POST -H 'x-functions-key: (\S+)' \\\n\s+(\S+)", printed)
    assert len(curls) > which, printed
    key, url = curls[which]
    return requests.post(url, headers={"x-functions-key": key}, timeout=30)


def test_run_serves_the_printed_examples_until_sigterm(tmp_path: Path):
    """Every command `make run` prints works as pasted: curl, ftcancel enqueue/results, the guard's two."""
    stack, _ = start_run(tmp_path)
    try:
        printed = read_until(stack, "Read the result records")
        response = run_printed_curl(printed)
        assert (response.status_code, response.json()["status"]) == (200, "cancelled")
        keyless = run_printed_curl(printed, which=1)
        assert (keyless.status_code, keyless.json()["id"], keyless.json()["status"]) == (
            200, "ftjob-keyless1", "cancelled"
        )
        printed_enqueues = re.findall(r"^  (\S*ftcancel enqueue .+)$", printed, re.MULTILINE)
        assert [shlex.split(command)[-3:] for command in printed_enqueues] == [
            ["--queue", "cancel-requests", "ftjob-local2"],
            ["--resource", "keyless", "ftjob-keyless2"],
        ]
        for command in printed_enqueues:
            enqueue = run_printed(command)
            assert enqueue.returncode == 0, enqueue.stderr
        [results_command] = re.findall(r"^  (\S*ftcancel results .+)$", printed, re.MULTILINE)
        deadline = time.monotonic() + 30
        while True:
            results = run_printed(results_command)
            assert results.returncode == 0, results.stderr
            if results.stderr.startswith("4 records") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert re.search(r"ftjob-local2\s+default\s+cancelled", results.stdout), results.stdout
        assert re.search(r"ftjob-local1\s+default\s+cancelled", results.stdout), results.stdout
        assert re.search(r"ftjob-keyless1\s+keyless\s+cancelled", results.stdout), results.stdout
        assert re.search(r"ftjob-keyless2\s+keyless\s+cancelled", results.stdout), results.stdout
        records = [json.loads(line) for line in run_printed(results_command + " --json").stdout.splitlines()]
        assert sorted((r["trigger"], r["resource"], r["job_id"], r["outcome"]) for r in records) == [
            ("http", "default", "ftjob-local1", "cancelled"),
            ("http", "keyless", "ftjob-keyless1", "cancelled"),
            ("queue", "default", "ftjob-local2", "cancelled"),
            ("queue", "keyless", "ftjob-keyless2", "cancelled"),
        ]
        printed += read_until(stack, "The guard (")
        [kill_switch] = re.findall(r"^  (\S*ftcancel guard cancel-active .+)$", printed, re.MULTILINE)
        dry_run = run_printed(kill_switch)
        assert dry_run.returncode == 0 and "nothing enqueued" in dry_run.stderr, dry_run.stderr
        [sweep_now] = re.findall(r"^  (\S*ftcancel guard sweep .+)$", printed, re.MULTILINE)
        swept = run_printed(sweep_now)
        assert swept.returncode == 0 and "sweep started" in swept.stdout, swept.stderr
        runner_log = tmp_path / "logs" / "runner.log"
        deadline = time.monotonic() + 30
        while "Executed 'Functions.guard_sweep' (Succeeded" not in runner_log.read_text(encoding="utf-8"):
            assert time.monotonic() < deadline, "the sweep the admin API started did not run"
            time.sleep(0.2)
        ports = {int(port) for port in _LOOPBACK_PORT.findall(printed)}
    finally:
        stack.send_signal(signal.SIGTERM)
        rest, _ = stack.communicate(timeout=60)
    assert stack.returncode == 0, rest
    assert [port for port in ports if listening(port)] == []
    assert not (tmp_path / "stack.json").exists()


def test_run_keeps_the_api_key_out_of_every_command_line_log_and_printed_line(tmp_path: Path):
    stack, _ = start_run(tmp_path)
    try:
        printed = read_until(stack, "Read the result records")
        assert run_printed_curl(printed).status_code == 200  # the runner read the key from Key Vault, sent it upstream
        children = {pid: (command_line(pid), environment(pid)) for pid in descendants(stack.pid)}
        state = (tmp_path / "stack.json").read_text()
    finally:
        stack.send_signal(signal.SIGTERM)
        rest, _ = stack.communicate(timeout=60)
    assert stack.returncode == 0, rest
    # /proc/<pid>/environ is the environment a process started with (readable by its user only, unlike argv)
    [api_key] = {env["DEVSTACK_API_KEY"] for argv, env in children.values() if "DEVSTACK_API_KEY" in env}
    [signing_key] = {env[name] for _, env in children.values() for name in env if name == "DEVSTACK_TOKEN_SIGNING_KEY"}
    assert (len(api_key), len(signing_key)) == (32, 64)
    assert holders(children, api_key) == ["keyvault-emulator", "openai-sim"]  # not the runner, not Azurite
    assert holders(children, signing_key) == ["keyvault-emulator", "openai-sim --key-access-disabled"]
    parts = {"devstack.runner", "azurite-queue", "openai-sim", "keyvault-emulator", "--key-access-disabled"}
    assert {part for argv, _ in children.values() for part in parts if any(part in arg for arg in argv)} == parts
    logs = sorted((tmp_path / "logs").iterdir())
    assert [log.name for log in logs] == LOGS
    for secret in (api_key, signing_key):
        assert [argv for argv, _ in children.values() if any(secret in arg for arg in argv)] == []
        assert [log.name for log in logs if secret in log.read_text(errors="replace")] == []
        assert secret not in printed + rest + state


def holders(children: dict[int, tuple[list[str], dict[str, str]]], secret: str) -> list[str]:
    """The `serve` children whose environment holds `secret`: the service, and whether its key access is disabled."""
    return sorted(
        " ".join([argv[argv.index("serve") + 1], *(flag for flag in argv if flag == "--key-access-disabled")])
        for argv, env in children.values()
        if secret in env.values()
    )


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from the parent pids in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        children = [child for child, its_parent in parents.items() if its_parent == parent]
        found.extend(children)
        pending.extend(children)
    return found


def command_line(pid: int) -> list[str]:
    """What `ps` shows of a process: its argv, from /proc/<pid>/cmdline."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(entry.partition("=")[::2] for entry in entries if "=" in entry)


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
