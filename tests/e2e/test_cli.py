"""`ftcancel` end to end: the installed console script against Azurite, the local runner and the emulators.

Every command runs as a subprocess of the venv's `ftcancel` in an environment that can reach
loopback only: no Azure variables, an empty PATH and HOME (so no `az login` of the developer's is
used), and a sitecustomize that logs and blocks any other connection or name lookup. Each test
ends by asserting that log is empty, so an IMDS probe or a DNS query would fail it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devstack.keyvault_emulator import KeyVaultEmulator
from devstack.openai_sim import FineTuningSimulator
from devstack.runner import development_storage_connection_string
from devstack.storage import Azurite, message_count
from tests.support import network
from tests.support.queues import unique_queue_name

pytestmark = pytest.mark.e2e

FTCANCEL = Path(sys.executable).with_name("ftcancel")
CLI_TIMEOUT_SECONDS = 120
RECORDS_TIMEOUT_SECONDS = 90
NETWORK_LOG_ENV = "FTCANCEL_TEST_NETWORK_LOG"

# Loaded by every Python the tests start (PYTHONPATH): lets loopback through, logs and refuses the rest.
NETWORK_GUARD = f'''
import ipaddress, os, sys

def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

def _guard(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname"):
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:
        return
    if not _loopback(host):
        with open(os.environ["{NETWORK_LOG_ENV}"], "a") as log:
            log.write(f"{{event}} {{host}}\\n")
        raise OSError(f"test network guard: {{event}} to {{host}} would leave this machine")

sys.addaudithook(_guard)
'''


@dataclass
class Cli:
    """Runs the console script with a loopback-only environment."""

    env: dict[str, str]
    network_log: Path
    cwd: Path
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run to the end; output decoded as it was written (text mode would turn the progress bar's \\r into \\n)."""
        done = subprocess.run(
            [str(FTCANCEL), *map(str, args)],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            timeout=CLI_TIMEOUT_SECONDS,
        )
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())

    def start(self, *args: str | Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(FTCANCEL), *map(str, args)],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def outside_traffic(self) -> list[str]:
        return self.network_log.read_text().splitlines() if self.network_log.exists() else []


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    if not FTCANCEL.exists():
        pytest.fail(f"{FTCANCEL} is not installed: `make install` installs the project (pip install -e .)")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    for folder in ("home", "bin", "work"):
        (tmp_path / folder).mkdir()
    dropped = ("AZURE_", "IDENTITY_", "MSI_", "FTCANCEL_", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "PYTHON")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    env.update(
        HOME=str(tmp_path / "home"),
        PATH=str(tmp_path / "bin"),  # no az, azd or pwsh: developer sign-ins are unavailable
        PYTHONPATH=str(guard),
        **{NETWORK_LOG_ENV: str(tmp_path / "network.log")},
    )
    runner = Cli(env=env, network_log=tmp_path / "network.log", cwd=tmp_path / "work")
    yield runner
    for process in runner.started:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert runner.outside_traffic() == []


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    return network.closed_port()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def table_rows(text: str) -> dict[str, str]:
    """Job id -> outcome, from a printed results table."""
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["job", "id", "resource", "outcome"], text
    return {line.split()[0]: line.split()[2] for line in lines[2:]}


def read_lines(process: subprocess.Popen[str], count: int, *, timeout: float) -> list[str]:
    """Read stdout lines of a running process until `count` came; fail after `timeout`."""
    lines: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        assert process.poll() is None, f"ended early ({process.returncode}) after {len(lines)} lines"
        assert time.monotonic() < deadline, f"{len(lines)} of {count} lines after {timeout} s"
        time.sleep(0.1)
    return lines


def test_help_has_examples_and_exit_codes(cli: Cli):
    for command in ([], ["enqueue"], ["results"], ["cancel"]):
        shown = cli.run(*command, "--help")

        assert shown.returncode == 0
        assert "examples:\n  ftcancel " in shown.stdout
        assert "exit codes:" in shown.stdout
    as_module = subprocess.run([sys.executable, "-m", "opscli", "--help"], capture_output=True, text=True,
                               env=cli.env, cwd=cli.cwd, timeout=CLI_TIMEOUT_SECONDS)
    assert as_module.stdout.startswith("usage: ftcancel")


def test_200_ids_from_a_file_are_checked_enqueued_followed_and_taken_off(
    cli: Cli, start_local_app, simulator: FineTuningSimulator, tmp_path: Path
):
    app = start_local_app()
    jobs = [simulator.create_job(status="running")["id"] for _ in range(200)]
    ids_file = tmp_path / "work" / "ids.txt"
    ids_file.write_text("\n".join(["# nightly run", *jobs[:100], jobs[5], "ftjob-abc/../x", "", *jobs[100:]]) + "\n")
    storage = ["--connection-string", app.connection_string]
    results = [*storage, "--queue", app.results_queue.queue_name]

    enqueued = cli.run("enqueue", "--file", "ids.txt", "--skip-invalid", "--progress", "--correlation-id",
                       "nightly", *storage, "--queue", app.requests_queue.queue_name)

    assert enqueued.returncode == 0, enqueued.stderr
    duplicate = f"ftcancel: ids.txt:102: {jobs[5]} repeats ids.txt:7; it is sent once"
    invalid = "ftcancel: ids.txt:103: 'ftjob-abc/../x' is not a fine-tuning job id"
    assert duplicate in enqueued.stderr and invalid in enqueued.stderr
    assert enqueued.stderr.index(invalid) < enqueued.stderr.index("\r")  # reported before the first send
    assert "[##############################] 200/200 (100%)" in enqueued.stderr
    assert enqueued.stdout == (
        f"enqueued 200 cancel requests on queue '{app.requests_queue.queue_name}' of storage account "
        "'devstoreaccount1' (1 repeated id sent once, 1 invalid id skipped)\n"
    )

    follow = cli.start("results", "--follow", "--json", *results)
    records = [json.loads(line) for line in read_lines(follow, 200, timeout=RECORDS_TIMEOUT_SECONDS)]
    follow.send_signal(signal.SIGINT)
    _, follow_stderr = follow.communicate(timeout=CLI_TIMEOUT_SECONDS)

    assert follow.returncode == 0, follow_stderr
    assert sorted(record["job_id"] for record in records) == sorted(jobs)
    assert {(r["outcome"], r["trigger"], r["correlation_id"]) for r in records} == {("cancelled", "queue", "nightly")}
    assert {simulator.job(job)["status"] for job in jobs} == {"cancelled"}
    assert "200 records: 200 cancelled (left on the queue)" in follow_stderr

    peeked = cli.run("results", "--json", *results)  # follow put every record back
    assert peeked.returncode == 0
    assert len(json_lines(peeked.stdout)) == 32
    assert "peek shows at most the first 32" in peeked.stderr

    table = cli.run("results", "--max", "3", *results)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == [
        "job", "id", "resource", "outcome", "status", "job", "status", "retryable", "attempts", "correlation", "id",
        "completed", "at", "error",
    ]
    rows = table.stdout.splitlines()[2:]
    assert len(rows) == 3
    assert all(row.split()[1:8] == ["default", "cancelled", "200", "cancelled", "no", "1", "nightly"] for row in rows), rows

    taken = cli.run("results", "--delete", "--json", *results)
    assert taken.returncode == 0, taken.stderr
    assert sorted(record["job_id"] for record in json_lines(taken.stdout)) == sorted(jobs)
    assert "200 records: 200 cancelled (taken off the queue)" in taken.stderr
    assert message_count(app.results_queue) == 0
    empty = cli.run("results", *results)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert f"no records on '{app.results_queue.queue_name}'" in empty.stderr


def test_an_invalid_id_stops_enqueue_before_anything_is_sent(cli: Cli, azurite: Azurite, tmp_path: Path):
    queue = unique_queue_name("requests")
    azurite.create_queues(queue)
    (tmp_path / "work" / "ids.txt").write_text("ftjob-one\nftjob-ok/../x\nftjob-two\nftjob-one\nnot-a-job\n")

    enqueued = cli.run("enqueue", "--file", "ids.txt", "--connection-string", azurite.connection_string,
                       "--queue", queue)

    assert enqueued.returncode == 2
    assert enqueued.stdout == ""
    assert enqueued.stderr.splitlines() == [
        "ftcancel: ids.txt:2: 'ftjob-ok/../x' is not a fine-tuning job id (expected ftjob-<letters and digits>)",
        "ftcancel: ids.txt:5: 'not-a-job' is not a fine-tuning job id (expected ftjob-<letters and digits>)",
        "ftcancel: ids.txt:4: ftjob-one repeats ids.txt:1; it is sent once",
        "ftcancel: 2 invalid job ids: nothing was sent (fix them, or pass --skip-invalid to send the 2 valid ones)",
    ]
    assert message_count(QueueClient.from_connection_string(azurite.connection_string, queue)) == 0


def test_enqueue_sends_a_bare_id_or_a_json_message_and_reads_the_connection_string_from_the_environment(
    cli: Cli, azurite: Azurite
):
    queue = unique_queue_name("requests")
    azurite.create_queues(queue)
    environment = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}

    bare = cli.run("enqueue", "ftjob-bare1", "--queue", queue, env=environment)
    detailed = cli.run("enqueue", "--file", "-", "--correlation-id", "ticket-42", "--wait", "30", "--queue", queue,
                       env=environment, stdin="ftjob-detailed2\n")

    assert (bare.returncode, detailed.returncode) == (0, 0), bare.stderr + detailed.stderr
    assert "\r" not in detailed.stderr  # no progress bar off a terminal
    sent = QueueClient.from_connection_string(azurite.connection_string, queue).peek_messages(max_messages=32)
    assert [message.content for message in sent] == [
        "ftjob-bare1",
        '{"job_id":"ftjob-detailed2","correlation_id":"ticket-42","wait_seconds":30}',
    ]


def test_enqueue_with_a_resource_sends_json_messages_naming_it(cli: Cli, azurite: Azurite):
    queue = unique_queue_name("requests")
    azurite.create_queues(queue)

    enqueued = cli.run("enqueue", "ftjob-sweden1", "ftjob-sweden2", "--resource", "sweden", "--queue", queue,
                       "--connection-string", azurite.connection_string)

    assert enqueued.returncode == 0, enqueued.stderr
    sent = QueueClient.from_connection_string(azurite.connection_string, queue).peek_messages(max_messages=32)
    assert [message.content for message in sent] == [
        '{"job_id":"ftjob-sweden1","resource":"sweden"}',
        '{"job_id":"ftjob-sweden2","resource":"sweden"}',
    ]


@pytest.mark.parametrize("name", ["Sweden", "north_central", "a" * 41, ""])
def test_a_resource_name_the_app_would_refuse_stops_the_command_before_anything_is_sent(
    cli: Cli, azurite: Azurite, name: str
):
    queue = unique_queue_name("requests")

    enqueue = cli.run("enqueue", "ftjob-abc1", "--resource", name, "--queue", queue,
                      "--connection-string", azurite.connection_string)
    cancel = cli.run("cancel", "ftjob-abc1", "--resource", name, "--url", "http://127.0.0.1:9", "--key", "k")

    for refused in (enqueue, cancel):
        assert refused.returncode == 2
        assert f"argument --resource: '{name}' is not a resource name (1 to 40 lower-case letters" in refused.stderr
    assert message_count(QueueClient.from_connection_string(azurite.connection_string, queue)) == 0


def test_cancel_and_results_with_a_resource_reach_that_resource_and_show_it(
    cli: Cli, start_local_app, simulator: FineTuningSimulator, vault: KeyVaultEmulator
):
    with FineTuningSimulator(
        api_key="never-given", key_access_disabled=True,
        token_verifier=lambda token: vault.verify_token(token, audience="https://cognitiveservices.azure.com"),
    ) as keyless:
        app = start_local_app(AZURE_OPENAI_RESOURCES=json.dumps({"keyless": {"endpoint": keyless.endpoint,
                                                                              "auth": "entra"}}))
        jobs = [keyless.create_job(status="running")["id"] for _ in range(3)]
        function = {"FTCANCEL_URL": app.api_url, "FTCANCEL_FUNCTION_KEY": app.function_key}

        one = cli.run("cancel", jobs[0], "--resource", "keyless", "--json", env=function)
        several = cli.run("cancel", *jobs[1:], "--resource", "keyless", env=function)
        shown = cli.run("results", "--max", "3", "--connection-string", app.connection_string,
                        "--queue", app.results_queue.queue_name)

        assert (one.returncode, several.returncode, shown.returncode) == (0, 0, 0), one.stderr + several.stderr
        [record] = json_lines(one.stdout)
        assert (record["job_id"], record["resource"], record["outcome"]) == (jobs[0], "keyless", "cancelled")
        assert table_rows(several.stdout) == {jobs[1]: "cancelled", jobs[2]: "cancelled"}
        assert [row.split()[1] for row in several.stdout.splitlines()[2:]] == ["keyless", "keyless"]
        assert [row.split()[1] for row in shown.stdout.splitlines()[2:]] == ["keyless"] * 3  # the app's records
        assert [r.path for r in keyless.requests if r.method == "POST"][0] == f"/openai/fine_tuning/jobs/{jobs[0]}/cancel"
        assert {keyless.job(job)["status"] for job in jobs} == {"cancelled"}
        assert simulator.requests == []


def test_cancel_on_a_resource_the_app_does_not_know_is_refused_by_the_app_and_reaches_no_resource(
    cli: Cli, start_local_app, simulator: FineTuningSimulator
):
    app = start_local_app()
    jobs = [simulator.create_job(status="running")["id"] for _ in range(2)]
    function = {"FTCANCEL_URL": app.api_url, "FTCANCEL_FUNCTION_KEY": app.function_key}

    one = cli.run("cancel", jobs[0], "--resource", "nowhere", "--json", env=function)
    several = cli.run("cancel", *jobs, "--resource", "nowhere", env=function)

    [record] = json_lines(one.stdout)
    assert (one.returncode, record["outcome"], record["resource"], record["error"]["target"]) == (
        3, "rejected", "nowhere", "resource"
    )
    assert several.returncode == 1
    assert several.stderr.startswith("ftcancel: the bulk route answered 400: resource 'nowhere' is not one"), several.stderr
    assert simulator.requests == []


def test_follow_with_delete_takes_records_off_and_stops_at_max(
    cli: Cli, start_local_app, simulator: FineTuningSimulator
):
    app = start_local_app()
    jobs = [simulator.create_job(status="running")["id"] for _ in range(3)]
    storage = ["--connection-string", app.connection_string]
    assert cli.run("enqueue", *jobs, *storage, "--queue", app.requests_queue.queue_name).returncode == 0

    followed = cli.run("results", "--follow", "--delete", "--max", "3", "--json", *storage,
                       "--queue", app.results_queue.queue_name)

    assert followed.returncode == 0, followed.stderr
    assert sorted(record["job_id"] for record in json_lines(followed.stdout)) == sorted(jobs)
    assert message_count(app.results_queue) == 0


def test_cancel_one_job_waits_until_it_is_cancelled(cli: Cli, start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    simulator.cancel_delay = 1.0  # the job shows `cancelled` a second after the cancel, as on Azure
    job = simulator.create_job(status="running")["id"]
    function = {"FTCANCEL_URL": app.api_url, "FTCANCEL_FUNCTION_KEY": app.function_key}

    cancelled = cli.run("cancel", job, "--wait", "10", "--correlation-id", "ticket-7", "--json", env=function)

    assert cancelled.returncode == 0, cancelled.stderr
    [record] = json_lines(cancelled.stdout)
    assert (record["job_id"], record["outcome"], record["status_code"]) == (job, "cancelled", 200)
    assert record["job"]["status"] == "cancelled"  # seen only by waiting
    assert record["correlation_id"] == "ticket-7"
    assert record["request_id"]
    assert simulator.counts[("GET", "get")] >= 1
    assert cancelled.stderr == "1 job: 1 cancelled\n"


def test_cancel_several_jobs_prints_a_table_and_exits_3_when_one_failed(
    cli: Cli, start_local_app, simulator: FineTuningSimulator
):
    app = start_local_app()
    running = simulator.create_job(status="running")["id"]
    finished = simulator.create_job(status="succeeded")["id"]
    unknown = "ftjob-" + "0" * 32

    cancelled = cli.run("cancel", running, finished, unknown, "--url", app.api_url, "--key", app.function_key,
                        "--wait", "5")

    assert cancelled.returncode == 3, cancelled.stderr
    assert table_rows(cancelled.stdout) == {running: "cancelled", finished: "already_terminal", unknown: "failed"}
    assert cancelled.stderr == "3 jobs: 1 cancelled, 1 already_terminal, 1 failed\n"
    assert simulator.job(running)["status"] == "cancelled"


def test_cancel_tells_a_job_cancelled_now_from_one_already_cancelled_and_prints_the_apps_own_records(
    cli: Cli, start_local_app, simulator: FineTuningSimulator
):
    app = start_local_app()
    running = [simulator.create_job(status="running")["id"] for _ in range(3)]
    function = {"FTCANCEL_URL": app.api_url, "FTCANCEL_FUNCTION_KEY": app.function_key}

    first = cli.run("cancel", running[0], "--json", env=function)
    again = cli.run("cancel", running[0], "--json", env=function)
    again_in_a_table = cli.run("cancel", running[0], env=function)
    several = cli.run("cancel", running[0], running[1], "--json", env=function)
    several_in_a_table = cli.run("cancel", running[1], running[2], env=function)

    assert [run.returncode for run in (first, again, again_in_a_table, several, several_in_a_table)] == [0] * 5
    [now], [before] = json_lines(first.stdout), json_lines(again.stdout)
    assert (now["outcome"], now["status_code"], now["job"]["status"]) == ("cancelled", 200, "cancelled")
    assert (before["outcome"], before["status_code"], before["job"]["status"]) == ("already_terminal", 200, "cancelled")
    assert (first.stderr, again.stderr) == ("1 job: 1 cancelled\n", "1 job: 1 already_terminal\n")
    [row] = again_in_a_table.stdout.splitlines()[2:]
    assert row.split()[:6] == [running[0], "default", "already_terminal", "200", "cancelled", "no"]
    assert row.split()[6].isdigit()  # attempts: a record of the app's, not one guessed from an answer ("-")
    assert [(r["job_id"], r["outcome"]) for r in json_lines(several.stdout)] == [
        (running[0], "already_terminal"), (running[1], "cancelled")
    ]
    assert several.stderr == "2 jobs: 1 cancelled, 1 already_terminal\n"
    assert table_rows(several_in_a_table.stdout) == {running[1]: "already_terminal", running[2]: "cancelled"}
    # What was printed is the app's record, field for field, as it wrote it to the results queue.
    printed = [now, before, *json_lines(several.stdout)]
    taken = cli.run("results", "--delete", "--json", "--connection-string", app.connection_string,
                    "--queue", app.results_queue.queue_name)
    queued = {record["request_id"]: record for record in json_lines(taken.stdout)}
    assert [queued[record["request_id"]] for record in printed] == printed
    assert all(record["attempts"] >= 1 and record["completed_at"] for record in printed)


def test_cancel_sends_more_than_100_ids_in_requests_of_100(
    cli: Cli, start_local_app, simulator: FineTuningSimulator, tmp_path: Path
):
    app = start_local_app()
    jobs = [simulator.create_job(status="running")["id"] for _ in range(150)]
    (tmp_path / "work" / "ids.txt").write_text("\n".join(jobs))

    cancelled = cli.run("cancel", "--file", "ids.txt", "--url", app.api_url + "/", "--key", app.function_key, "--json")

    assert cancelled.returncode == 0, cancelled.stderr
    records = json_lines(cancelled.stdout)
    assert [record["job_id"] for record in records] == jobs  # input order, one request of 100 then one of 50
    assert {record["outcome"] for record in records} == {"cancelled"}
    assert simulator.counts[("POST", "cancel")] == 150


def test_invalid_ids_stop_cancel_before_any_request(cli: Cli, start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()

    refused = cli.run("cancel", "ftjob-ok1", "ftjob-x/../y", "--url", app.api_url, "--key", app.function_key)

    assert refused.returncode == 2
    assert "argument 2: 'ftjob-x/../y' is not a fine-tuning job id" in refused.stderr
    assert simulator.requests == []


@pytest.mark.parametrize(
    ("command", "after"),
    [(["enqueue", "ftjob-abc1"], "; nothing was sent"), (["results"], ""), (["results", "--delete"], "")],
)
def test_a_missing_queue_is_named_with_what_to_do(cli: Cli, azurite: Azurite, command: list[str], after: str):
    missing = unique_queue_name("missing")

    failed = cli.run(*command, "--connection-string", azurite.connection_string, "--queue", missing)

    assert failed.returncode == 1
    assert failed.stderr == (
        f"ftcancel: queue '{missing}' does not exist in storage account 'devstoreaccount1' "
        f"({azurite.queue_origin}/devstoreaccount1); create it or check --queue{after}\n"
    )


def test_an_unreachable_account_is_reported_after_signing_in(cli: Cli, vault: KeyVaultEmulator, closed_port: int):
    identity = {name: vault.environ()[name] for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}

    failed = cli.run("enqueue", "ftjob-abc1", "--account", "nosuchaccount", "--queue-url",
                     f"https://127.0.0.1:{closed_port}", env=identity)

    assert failed.returncode == 1
    assert failed.stderr == (
        f"ftcancel: storage account 'nosuchaccount' not found or unreachable at https://127.0.0.1:{closed_port}: "
        "connection refused; nothing was sent\n"
    )
    assert [request["resource"] for request in vault.token_requests] == ["https://storage.azure.com"]


def test_an_unreachable_connection_string_endpoint_is_reported(cli: Cli, closed_port: int):
    connection_string = development_storage_connection_string(f"http://127.0.0.1:{closed_port}")

    failed = cli.run("results", "--connection-string", connection_string)

    assert failed.returncode == 1
    assert failed.stderr == (
        f"ftcancel: storage account 'devstoreaccount1' not found or unreachable at "
        f"http://127.0.0.1:{closed_port}/devstoreaccount1: connection refused\n"
    )


@pytest.mark.parametrize(
    "sign_in",
    [
        pytest.param({"AZURE_TOKEN_CREDENTIALS": "dev"}, id="developer-sign-ins-only-none-signed-in"),
        pytest.param({"IDENTITY_ENDPOINT": "http://127.0.0.1:{port}/msi/token", "IDENTITY_HEADER": "h"},
                     id="managed-identity-endpoint-down"),
    ],
)
def test_refused_sign_in_says_how_to_sign_in(cli: Cli, closed_port: int, sign_in: dict[str, str]):
    environment = {name: value.format(port=closed_port) for name, value in sign_in.items()}

    failed = cli.run("results", "--account", "mystorage", "--queue-url", f"https://127.0.0.1:{closed_port}",
                     env=environment)

    assert failed.returncode == 1
    assert failed.stderr == (
        "ftcancel: sign-in refused for storage account 'mystorage': run `az login` (or sign in any other way "
        "DefaultAzureCredential accepts) or pass --connection-string\n"
    )


def test_a_wrong_function_key_is_refused_before_any_cancel(cli: Cli, start_local_app, simulator: FineTuningSimulator):
    app = start_local_app()
    job = simulator.create_job(status="running")["id"]

    refused = cli.run("cancel", job, "--url", app.api_url, "--key", "not-the-key")

    assert refused.returncode == 1
    assert refused.stderr.startswith(f"ftcancel: function key refused by {app.api_url}: ")
    assert len(refused.stderr.splitlines()) == 1
    assert simulator.job(job)["status"] == "running"


def test_an_unreachable_function_app_and_a_clear_text_url_are_reported(cli: Cli, closed_port: int):
    unreachable = cli.run("cancel", "ftjob-abc1", "--url", f"http://127.0.0.1:{closed_port}/api", "--key", "k")
    clear_text = cli.run("cancel", "ftjob-abc1", "--url", "http://myapp.azurewebsites.net/api", "--key", "k")

    assert (unreachable.returncode, unreachable.stderr) == (
        1, f"ftcancel: cannot reach the function app at http://127.0.0.1:{closed_port}/api: connection refused\n"
    )
    assert clear_text.returncode == 2
    assert "--url must use https" in clear_text.stderr


# --- ids files and hostile results queues ------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_leading_utf8_bom_is_ignored_in_an_ids_file_and_on_stdin(cli: Cli, azurite: Azurite, tmp_path: Path,
                                                                    source: str):
    queue = unique_queue_name("requests")
    azurite.create_queues(queue)
    ids = "\ufeffftjob-bom1\r\nftjob-bom2\r\n"  # as Notepad and PowerShell 5 write it
    (tmp_path / "work" / "ids.txt").write_text(ids, encoding="utf-8", newline="")
    where = ["--file", "ids.txt"] if source == "file" else ["--file", "-"]

    enqueued = cli.run("enqueue", *where, "--connection-string", azurite.connection_string, "--queue", queue,
                       stdin=ids if source == "stdin" else None)

    assert enqueued.returncode == 0, enqueued.stderr
    sent = QueueClient.from_connection_string(azurite.connection_string, queue).peek_messages(max_messages=32)
    assert [message.content for message in sent] == ["ftjob-bom1", "ftjob-bom2"]


def test_ids_that_are_not_utf8_are_refused_with_their_byte_on_stdin_as_in_a_file(cli: Cli, azurite: Azurite):
    refused = subprocess.run([str(FTCANCEL), "enqueue", "--file", "-", "--connection-string",
                              azurite.connection_string], env=cli.env, cwd=cli.cwd, capture_output=True,
                             input=b"\xef\xbb\xbfftjob-ok1\n\xff\n", timeout=CLI_TIMEOUT_SECONDS)

    assert refused.returncode == 2
    assert refused.stderr.decode() == "ftcancel: stdin: not UTF-8 text (byte 13)\n"


def results_queue_with(azurite: Azurite, *contents: str) -> QueueClient:
    """A new results queue holding `contents`, sent as they are with the SDK (as another writer would)."""
    queue = QueueClient.from_connection_string(azurite.connection_string, unique_queue_name("results"))
    queue.create_queue()
    for content in contents:
        queue.send_message(content)
    return queue


def record_text(number: int) -> str:
    return json.dumps({"job_id": f"ftjob-good{number}", "outcome": "cancelled", "status_code": 200})


# U+FFFF is no XML character: Azurite stores the message, then answers 500 to every read that would return it.
UNSERVABLE_RECORD = json.dumps({"job_id": "ftjob-bad1", "outcome": "rejected", "error": {"message": "id \uffff"}},
                               ensure_ascii=False)


@pytest.mark.parametrize("mode", [[], ["--delete"], ["--follow"], ["--follow", "--delete"]],
                         ids=["peek", "delete", "follow", "follow-delete"])
def test_a_queue_that_answers_500_is_an_error_never_no_records(cli: Cli, azurite: Azurite, mode: list[str]):
    queue = results_queue_with(azurite, record_text(1), UNSERVABLE_RECORD)

    failed = cli.run("results", *mode, "--connection-string", azurite.connection_string, "--queue", queue.queue_name)

    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr == (
        f"ftcancel: storage account 'devstoreaccount1' answered 500 on queue '{queue.queue_name}': "
        "Internal Server Error\n"
    )
    assert message_count(queue) == 2  # nothing was taken off


def test_records_read_before_a_500_stay_printed_and_the_error_says_how_many(cli: Cli, azurite: Azurite):
    queue = results_queue_with(azurite, *(record_text(number) for number in range(33)), UNSERVABLE_RECORD)

    failed = cli.run("results", "--delete", "--json", "--connection-string", azurite.connection_string,
                     "--queue", queue.queue_name)

    assert failed.returncode == 1
    assert [record["job_id"] for record in json_lines(failed.stdout)] == [f"ftjob-good{n}" for n in range(32)]
    assert failed.stderr == (
        "ftcancel: read 32 records (taken off the queue), then storage account 'devstoreaccount1' answered 500 "
        f"on queue '{queue.queue_name}': Internal Server Error\n"
    )
    assert message_count(queue) == 2  # the 33rd record and the bad one, hidden by the failed receive

    again = cli.run("results", "--delete", "--connection-string", azurite.connection_string,
                    "--queue", queue.queue_name)

    assert (again.returncode, again.stdout) == (0, "")  # the failed receive hid both for 30 s
    assert again.stderr.startswith(f"no visible records on '{queue.queue_name}', but it holds 2 hidden messages: ")


@pytest.mark.parametrize("mode", [[], ["--delete"]], ids=["peek", "delete"])
@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
def test_messages_that_are_not_records_are_shown_as_unreadable_counted_and_left(
    cli: Cli, azurite: Azurite, mode: list[str], output: list[str]
):
    lone_surrogate = json.dumps({"job_id": "ftjob-lone1", "outcome": "failed",
                                 "error": {"message": "half a pair: \ud800"}})  # valid JSON, no UTF-8 text
    deep = "[" * 50_000  # nested deeper than Python's JSON parser goes
    queue = results_queue_with(azurite, record_text(1), "not json", '["a list"]', deep, lone_surrogate)

    shown = cli.run("results", *mode, *output, "--connection-string", azurite.connection_string,
                    "--queue", queue.queue_name)

    assert shown.returncode == 0, shown.stderr
    *unreadable, closing = shown.stderr.splitlines()
    assert [line.split(" is unreadable ")[1].split(";")[0] for line in unreadable] == [
        "(not JSON)", "(JSON, but not an object)", "(not JSON)"
    ]
    assert unreadable[0].endswith(f"on '{queue.queue_name}' is unreadable (not JSON); left on the queue: 'not json'")
    where = "taken off the queue" if mode else "peeked, left on the queue"
    assert closing == f"2 records: 1 cancelled, 1 failed ({where}); 3 unreadable messages left on it"
    if output:
        records = json_lines(shown.stdout)
        assert [record["job_id"] for record in records] == ["ftjob-good1", "ftjob-lone1"]
        assert records[1]["error"]["message"] == "half a pair: \ud800"  # the same JSON value, escaped
    else:
        assert table_rows(shown.stdout) == {"ftjob-good1": "cancelled", "ftjob-lone1": "failed"}
        assert shown.stdout.rstrip().endswith("half a pair: \\ud800")
    assert message_count(queue) == (3 if mode else 5)  # unreadable messages are never deleted
