"""The local stack: Azurite, the Key Vault emulator, two Azure OpenAI simulators and the Functions runner.

Each part runs as a child process in a process group of its own, logging to `.devstack/logs/`;
`LocalStack.stop()` (also on Ctrl-C or SIGTERM) ends every group, and on Linux a child also ends
when the stack process dies. The simulators are two resources of the app (AZURE_OPENAI_RESOURCES):
`default`, reached with the api-key Key Vault holds, and `keyless`, whose key access is disabled and
which takes the identity endpoint's tokens for the Cognitive Services audience (`AZURE_OPENAI_AUTH`
`entra`). Secrets travel only in the environment of the children that need them, never on a command
line or in a log: the api-key (API_KEY_ENV) to the keyed simulator and the Key Vault emulator, the
key that signs and checks tokens (TOKEN_SIGNING_KEY_ENV) to the Key Vault emulator and the keyless simulator.
`make run` is `python -m devstack.stack run`; `enqueue` and `results` talk to the running stack's queues:

    python -m devstack.stack run                     # start everything, print URLs and examples
    python -m devstack.stack enqueue ftjob-local2    # drop a cancel request on the request queue
    python -m devstack.stack results [--drain]       # the result records, as a table
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from devstack._http import serve_until_signalled
from devstack.keyvault_emulator import KeyVaultEmulator, verify_signed_token
from devstack.openai_sim import FineTuningSimulator
from devstack.runner import (
    DEFAULT_FUNCTION_KEY,
    DEFAULT_PORT,
    FUNCTION_KEY_ENV,
    development_storage_connection_string,
)
from shared.entra_token import COGNITIVE_SERVICES_SCOPE
from shared.settings import (
    AZURE_OPENAI_RESOURCES,
    DEFAULT_RESOURCE,
    ENTRA_AUTH,
    GUARD_SCHEDULE,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("DEVSTACK_STATE_DIR") or REPO_ROOT / ".devstack")  # logs and stack.json
LOG_DIR = STATE_DIR / "logs"
STATE_FILE = STATE_DIR / "stack.json"
# The guard's timer schedule, as infra/ sets it: the host refuses the timer trigger when %GUARD_SCHEDULE% is unset.
LOCAL_GUARD_SCHEDULE = "0 */5 * * * *"
AZURITE_QUEUE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-queue"
AZURITE_BLOB_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
AZURITE_DEFAULT_PORT = 10001  # where `UseDevelopmentStorage=true` looks for the queue service

SECRET_NAME = "azure-openai-api-key"
API_KEY_ENV = "DEVSTACK_API_KEY"  # how the simulator's api-key reaches its two children: never argv, never a log
TOKEN_SIGNING_KEY_ENV = "DEVSTACK_TOKEN_SIGNING_KEY"  # the identity endpoint signs tokens, the keyless simulator checks
COGNITIVE_SERVICES_AUDIENCE = COGNITIVE_SERVICES_SCOPE.removesuffix("/.default")  # what entra-mode tokens are for
KEYLESS_RESOURCE = "keyless"
SIMULATOR_SERVICE = "openai-sim"
KEY_VAULT_SERVICE = "keyvault-emulator"
REQUESTS_QUEUE = "cancel-requests"
RESULTS_QUEUE = "cancel-results"
API_VERSION = "2024-10-21"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
SEEDED_JOBS = ("ftjob-local1", "ftjob-local2", "ftjob-local3")
SEEDED_KEYLESS_JOBS = ("ftjob-keyless1", "ftjob-keyless2", "ftjob-keyless3")

_AZURITE_READY = re.compile(r"successfully listens on (http://\S+)")
_JSON_READY = r"{} ready (\{{.*\}})"

PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


class StackError(Exception):
    """A part of the stack failed: says which part, and where its log is."""

    def __init__(self, part: str, problem: str, *, log_path: Path | None = None) -> None:
        where = f"; log: {shown_path(log_path)}" if log_path else ""
        super().__init__(f"{part}: {problem}{where}")
        self.part = part
        self.problem = problem
        self.log_path = log_path

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the failed part's log, to show under the error."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _die_with_parent() -> None:
    """In the child before exec: end when the stack process ends, even if it is killed outright.

    Linux sends the signal when the *thread* that started the child ends: start parts from a thread
    that outlives them (the main thread), or they stop when that thread returns.
    """
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """One part of the stack: a process in its own process group, logging to one file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: re.Pattern[str],
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd,
                    start_new_session=True,  # a group of its own: Ctrl-C reaches only the stack, which stops it
                    preexec_fn=_die_with_parent,
                )
            except OSError as err:
                raise StackError(self.name, f"could not start {self.argv[0]} ({err})", log_path=self.log_path) from err
        return self

    def wait_ready(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> re.Match[str]:
        """Wait for the ready line in the log; raise StackError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._ready.search(self.log_path.read_text(encoding="utf-8", errors="replace"))
            if found:
                return found
            code = self.exit_code()
            if code is not None:
                raise StackError(self.name, f"exited with code {code} before it was ready", log_path=self.log_path)
            if time.monotonic() > deadline:
                raise StackError(self.name, f"not ready after {timeout:.0f} s", log_path=self.log_path)
            time.sleep(0.05)

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout`; leaves no process behind."""
        process = self.process
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything the part started and left behind
        except (ProcessLookupError, PermissionError):
            pass
        self.process = None


def runner_process(
    *, log_path: Path, env: Mapping[str, str], port: int = 0, options: Sequence[str] = ()
) -> ChildProcess:
    """The Functions runner (`python -m devstack.runner`) on `function_app.py` as a child process, not started yet.

    `env` holds the app settings; `options` are more runner options (`--visibility-timeout 1`, ...).
    Its ready line carries the URLs as JSON: `json.loads(runner.wait_ready().group(1))["api_url"]`.
    """
    return ChildProcess(
        "Functions runner",
        [
            sys.executable,
            "-u",
            "-m",
            "devstack.runner",
            "--app-dir",
            str(REPO_ROOT),
            "--port",
            str(port),
            *options,
        ],
        log_path=log_path,
        ready=re.compile(_JSON_READY.format("runner")),
        env=env,
    )


class Azurite:
    """Azurite's queue and blob services from node_modules, data in a temporary folder that stop() removes.

    The queue service carries requests and records; the blob service holds the guard's claims
    (`shared/guard_store.py`), as the app's storage account does in Azure.
    """

    name = "Azurite"

    def __init__(self, *, log_path: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self._data_dir = Path(tempfile.mkdtemp(prefix="azurite-"))
        common = ["--location", str(self._data_dir), "--skipApiVersionCheck", "--disableTelemetry", "--silent"]
        # --skipApiVersionCheck: the storage SDKs speak a newer API version than Azurite knows.
        self._child = ChildProcess(
            self.name,
            [str(AZURITE_QUEUE_BIN), "--queueHost", host, "--queuePort", str(port), *common],
            log_path=log_path,
            ready=_AZURITE_READY,
        )
        self._blob_child = ChildProcess(
            f"{self.name} blob",
            [str(AZURITE_BLOB_BIN), "--blobHost", host, "--blobPort", "0", *common],
            log_path=log_path.with_name(f"{log_path.stem}-blob{log_path.suffix}"),
            ready=_AZURITE_READY,
        )
        self.queue_origin = ""
        self.blob_origin = ""
        self._first_log_path = log_path
        self._restarts = 0

    @property
    def log_path(self) -> Path:
        return self._child.log_path

    @property
    def child(self) -> ChildProcess:
        """The queue service's process (the one the chaos run restarts)."""
        return self._child

    @property
    def connection_string(self) -> str:
        return development_storage_connection_string(self.queue_origin, blob_origin=self.blob_origin or None)

    def start(self) -> Azurite:
        for binary in (AZURITE_QUEUE_BIN, AZURITE_BLOB_BIN):
            if not binary.exists():
                raise StackError(self.name, "not installed: run `npm ci` in the repository (make does it for you)")
        self._child.start()
        self._blob_child.start()
        return self

    def wait_ready(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> Azurite:
        self.queue_origin = self._child.wait_ready(timeout=timeout).group(1)
        if not self.blob_origin:
            self.blob_origin = self._blob_child.wait_ready(timeout=timeout).group(1)
        return self

    def stop(self) -> None:
        self._child.stop()
        self._blob_child.stop()
        shutil.rmtree(self._data_dir, ignore_errors=True)

    def restart(self, *, down_seconds: float = 0.0) -> Azurite:
        """Stop the queue service, wait `down_seconds`, start it again on the same port and data folder; wait
        until it serves. The blob service stays up.

        SIGTERM lets Azurite save its database, so the messages on its queues survive. The new process
        logs to `<log>-restart<n>.log` beside the first log, which is kept.
        """
        port = self.queue_origin.rsplit(":", 1)[1]  # the port it got, also when it was started with port 0
        self._child.stop()
        time.sleep(down_seconds)
        self._restarts += 1
        argv = list(self._child.argv)
        argv[argv.index("--queuePort") + 1] = port
        first_log = self._first_log_path
        log_path = first_log.with_name(f"{first_log.stem}-restart{self._restarts}{first_log.suffix}")
        self._child = ChildProcess(self.name, argv, log_path=log_path, ready=_AZURITE_READY).start()
        return self.wait_ready()

    def create_queues(self, *names: str) -> None:
        for name in names:
            try:
                QueueClient.from_connection_string(self.connection_string, name).create_queue()
            except ResourceExistsError:
                pass


@dataclass
class StackInfo:
    """Where the running stack's parts are; written to .devstack/stack.json for `enqueue` and `results`."""

    functions_url: str
    function_key: str
    storage_connection_string: str
    queue_origin: str
    openai_endpoint: str
    key_vault_url: str
    requests_queue: str
    results_queue: str
    jobs: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    keyless_endpoint: str = ""  # the `keyless` resource's simulator
    keyless_jobs: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path = STATE_FILE) -> StackInfo:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise StackError("local stack", "is not running (start it with `make run`)") from None

    def save(self, path: Path = STATE_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")


class LocalStack:
    """Starts and stops the four parts; `report` is told of each step (the stack's progress output)."""

    def __init__(
        self,
        *,
        runner_port: int = 0,
        azurite_port: int = 0,
        function_key: str = DEFAULT_FUNCTION_KEY,
        jobs: Iterable[str] = (),
        keyless_jobs: Iterable[str] = (),
        requests_queue: str = REQUESTS_QUEUE,
        results_queue: str = RESULTS_QUEUE,
        log_dir: Path = LOG_DIR,
        report: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._vault_dir = Path(tempfile.mkdtemp(prefix="devstack-keyvault-"))  # its TLS CA bundle
        self.function_key = function_key
        self.api_key = secrets.token_hex(16)  # the simulator accepts it; Key Vault holds it; nobody else sees it
        self.requests_queue = requests_queue
        self.results_queue = results_queue
        self.jobs = list(jobs)
        self.keyless_jobs = list(keyless_jobs)
        self.log_dir = log_dir
        self._runner_port = runner_port
        self._report = report
        self.azurite = Azurite(log_path=log_dir / "azurite.log", port=azurite_port)
        serve = [sys.executable, "-u", "-m", "devstack.stack", "serve"]
        signing_key = secrets.token_hex(32)
        self.key_vault = ChildProcess(
            "Key Vault emulator",
            [*serve, KEY_VAULT_SERVICE, "--workdir", str(self._vault_dir)],
            log_path=log_dir / "keyvault.log",
            ready=re.compile(_JSON_READY.format(KEY_VAULT_SERVICE)),
            env={**os.environ, API_KEY_ENV: self.api_key, TOKEN_SIGNING_KEY_ENV: signing_key},
        )
        self.simulator = ChildProcess(
            "Azure OpenAI simulator",
            [*serve, SIMULATOR_SERVICE, *_job_options(self.jobs)],
            log_path=log_dir / "openai-sim.log",
            ready=re.compile(_JSON_READY.format(SIMULATOR_SERVICE)),
            env={**os.environ, API_KEY_ENV: self.api_key},
        )
        self.keyless_simulator = ChildProcess(
            "Azure OpenAI simulator (keyless)",
            [*serve, SIMULATOR_SERVICE, "--key-access-disabled", "--trust-identity", *_job_options(self.keyless_jobs)],
            log_path=log_dir / "openai-sim-keyless.log",
            ready=re.compile(_JSON_READY.format(SIMULATOR_SERVICE)),
            env={**os.environ, TOKEN_SIGNING_KEY_ENV: signing_key},
        )
        self.runner: ChildProcess | None = None
        self.info: StackInfo | None = None

    def start(self) -> StackInfo:
        """Start every part and wait until each is ready; on a failure, stop what was started and raise."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackInfo:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for part in (self.azurite, self.key_vault, self.simulator, self.keyless_simulator):
            part.start()  # all four at once; each is waited for below
        started = time.monotonic()
        self.azurite.wait_ready()
        self.azurite.create_queues(self.requests_queue, self.results_queue)
        self._report(f"Azurite queue service   {self.azurite.queue_origin}  ({time.monotonic() - started:.1f} s)")
        self._report(f"Azurite blob service    {self.azurite.blob_origin}  (the guard's claims)")
        vault_environ = json.loads(self.key_vault.wait_ready().group(1))
        self._report(f"Key Vault emulator      {vault_environ['KEY_VAULT_URL']}")
        openai_endpoint = json.loads(self.simulator.wait_ready().group(1))["AZURE_OPENAI_ENDPOINT"]
        self._report(f"Azure OpenAI simulator  {openai_endpoint}  (resource '{DEFAULT_RESOURCE}', api-key)")
        keyless_endpoint = json.loads(self.keyless_simulator.wait_ready().group(1))["AZURE_OPENAI_ENDPOINT"]
        self._report(f"Azure OpenAI simulator  {keyless_endpoint}  (resource '{KEYLESS_RESOURCE}', Entra tokens only)")
        settings = {
            **vault_environ,
            "AZURE_OPENAI_ENDPOINT": openai_endpoint,
            AZURE_OPENAI_RESOURCES: json.dumps({KEYLESS_RESOURCE: {"endpoint": keyless_endpoint, "auth": ENTRA_AUTH}}),
            "AZURE_OPENAI_KEY_SECRET_NAME": SECRET_NAME,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "CANCEL_REQUESTS_QUEUE": self.requests_queue,
            "CANCEL_RESULTS_QUEUE": self.results_queue,
            "PYTHON_THREADPOOL_THREAD_COUNT": "32",  # the shipped value (infra/ and docs/local-stack.md say why)
            GUARD_SCHEDULE: LOCAL_GUARD_SCHEDULE,
            FUNCTION_KEY_ENV: self.function_key,
        }
        self.runner = runner_process(
            log_path=self.log_dir / "runner.log", env={**os.environ, **settings}, port=self._runner_port
        ).start()
        functions_url = json.loads(self.runner.wait_ready().group(1))["api_url"]
        self._report(f"Functions runner        {functions_url}")
        self.info = StackInfo(
            functions_url=functions_url,
            function_key=self.function_key,
            storage_connection_string=self.azurite.connection_string,
            queue_origin=self.azurite.queue_origin,
            openai_endpoint=openai_endpoint,
            key_vault_url=vault_environ["KEY_VAULT_URL"],
            requests_queue=self.requests_queue,
            results_queue=self.results_queue,
            jobs=self.jobs,
            logs={part.name: shown_path(part.log_path) for part in self.parts()},
            keyless_endpoint=keyless_endpoint,
            keyless_jobs=self.keyless_jobs,
        )
        return self.info

    def parts(self) -> list[Any]:
        parts = (self.azurite, self.key_vault, self.simulator, self.keyless_simulator, self.runner)
        return [part for part in parts if part is not None]

    def check_alive(self) -> None:
        """Raise StackError naming a part that stopped on its own."""
        for part in self.parts():
            child = part.child if isinstance(part, Azurite) else part
            code = child.exit_code()
            if code is not None:
                raise StackError(part.name, f"stopped unexpectedly (exit code {code})", log_path=part.log_path)

    def stop(self) -> None:
        """The runner first (it finishes running invocations), then the services it talks to."""
        for part in reversed(self.parts()):
            part.stop()
        shutil.rmtree(self._vault_dir, ignore_errors=True)


def _job_options(jobs: Iterable[str]) -> list[str]:
    return [arg for job in jobs for arg in ("--job", job)]


# --- the children that hold a secret ---------------------------------------------------------------


def serve_simulator(jobs: Sequence[str], *, key_access_disabled: bool = False, trust_identity: bool = False) -> int:
    """An Azure OpenAI simulator with `jobs` running; its ready line has no secret.

    Keyed (the default): it accepts the api-key of API_KEY_ENV. `key_access_disabled`: it refuses every
    api-key, as a resource with `disableLocalAuth` does, and needs no key. `trust_identity`: it accepts
    bearer tokens the Key Vault emulator's identity endpoint issued for the Cognitive Services audience,
    checked with the signing key of TOKEN_SIGNING_KEY_ENV.
    """
    api_key = secrets.token_hex(16) if key_access_disabled else _take_api_key()  # a key nobody is given
    verifier = None
    if trust_identity:
        signing_key = _take_secret(TOKEN_SIGNING_KEY_ENV).encode()

        def verifier(token: str) -> bool:
            return verify_signed_token(token, key=signing_key, audience=COGNITIVE_SERVICES_AUDIENCE)

    simulator = FineTuningSimulator(api_key=api_key, key_access_disabled=key_access_disabled, token_verifier=verifier)
    for job_id in jobs:
        simulator.create_job(job_id=job_id, status="running")
    return serve_until_signalled(
        simulator, SIMULATOR_SERVICE, lambda: {"AZURE_OPENAI_ENDPOINT": simulator.endpoint, "port": simulator.port}
    )


def serve_key_vault(workdir: Path) -> int:
    """The Key Vault emulator holding the key of API_KEY_ENV as SECRET_NAME; its ready line is its environ().

    Its identity endpoint signs tokens with TOKEN_SIGNING_KEY_ENV's key, so the keyless simulator can check them.
    """
    emulator = KeyVaultEmulator(workdir=workdir, token_signing_key=_take_secret(TOKEN_SIGNING_KEY_ENV).encode())
    emulator.set_secret(SECRET_NAME, _take_api_key())
    return serve_until_signalled(emulator, KEY_VAULT_SERVICE, emulator.environ)


def _take_api_key() -> str:
    return _take_secret(API_KEY_ENV)


def _take_secret(name: str) -> str:
    """A secret from the environment, removed from it so that nothing this process starts inherits it."""
    value = os.environ.pop(name, "")
    if not value:
        raise SystemExit(f"{name} is not set: `python -m devstack.stack run` starts this part with it")
    return value


# --- result records --------------------------------------------------------------------------------


def format_records(records: Sequence[Mapping[str, Any]]) -> str:
    """Result records as a plain-text table, oldest first."""
    columns = ("received (UTC)", "trigger", "resource", "job id", "outcome", "status", "dequeue", "detail")
    rows = []
    for record in sorted(records, key=lambda r: r.get("received_at") or ""):
        error = record.get("error") or {}
        job = record.get("job") or {}
        detail = error.get("message") or (f"job status: {job.get('status')}" if job else "")
        dequeue_count = record.get("dequeue_count") or "-"
        rows.append(
            (
                (record.get("received_at") or "")[11:23],
                record.get("trigger") or "",
                record.get("resource") or "-",
                record.get("job_id") or "(none)",
                record.get("outcome") or "",
                str(record.get("status_code", "")),
                str(dequeue_count),
                _cut(detail, 60),
            )
        )
    widths = [
        max(len(column), *(len(row[i]) for row in rows)) if rows else len(column) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(text.ljust(width) for text, width in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows)
    return "\n".join(lines)


def report_failure(headline: str, err: StackError) -> None:
    """Say on stderr which part failed and where its log is, with the log's last lines."""
    print(f"\n{headline}: {err}", file=sys.stderr, flush=True)
    tail = err.log_tail()
    if tail and err.log_path is not None:
        print(f"--- last lines of {shown_path(err.log_path)} ---\n{tail}", file=sys.stderr, flush=True)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def take_records(queue: QueueClient) -> list[dict[str, Any]]:
    """Receive and delete the records waiting on a results queue (any that are not JSON are shown as text)."""
    records = []
    for message in queue.receive_messages(messages_per_page=32, max_messages=32):
        records.append(_record(message.content))
        queue.delete_message(message)
    return records


def _record(content: str) -> dict[str, Any]:
    try:
        record = json.loads(content)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"outcome": "(not a record)", "error": {"message": content}}


# --- command line ------------------------------------------------------------------------------------


def print_usage_examples(info: StackInfo, out: TextIO) -> None:
    """The URLs and copy-paste examples `make run` prints, for both resources."""
    python = shown_path(Path(sys.executable)) if Path(sys.executable).is_relative_to(REPO_ROOT) else "python"
    job = info.jobs[0] if info.jobs else "ftjob-<id>"
    queued = info.jobs[1] if len(info.jobs) > 1 else job
    keyless_job = info.keyless_jobs[0] if info.keyless_jobs else "ftjob-<id>"
    keyless_queued = info.keyless_jobs[1] if len(info.keyless_jobs) > 1 else keyless_job
    keyless_message = json.dumps({"job_id": keyless_queued, "resource": KEYLESS_RESOURCE})
    key_header = f"-H 'x-functions-key: {info.function_key}'"
    write = out.write
    write("\nThe local stack is running. Ctrl-C stops all of it.\n\n")
    write(f"  Functions        {info.functions_url}   (function key: {info.function_key})\n")
    write(
        f"  Azurite queues   {info.queue_origin}   (requests: {info.requests_queue}, results: {info.results_queue})\n"
    )
    write(
        f"  Azure OpenAI     {info.openai_endpoint}   (simulator, resource '{DEFAULT_RESOURCE}', api-key; "
        f"jobs: {', '.join(info.jobs) or 'none'})\n"
    )
    write(
        f"  Azure OpenAI     {info.keyless_endpoint}   (simulator, resource '{KEYLESS_RESOURCE}', Entra tokens only; "
        f"jobs: {', '.join(info.keyless_jobs) or 'none'})\n"
    )
    write(f"  Key Vault        {info.key_vault_url}   (emulator; holds the api-key secret '{SECRET_NAME}')\n")
    write(f"  Logs             {shown_path(LOG_DIR)}/\n\n")
    write(f"Cancel a job over HTTP (resource '{DEFAULT_RESOURCE}'):\n")
    write(f"  curl -s -X POST {key_header} \\\n       {info.functions_url}/openai/fine_tuning/jobs/{job}/cancel\n\n")
    write(f"Cancel a job on the resource '{KEYLESS_RESOURCE}' (the app signs in with its identity):\n")
    write(
        f"  curl -s -X POST {key_header} \\\n"
        f"       {info.functions_url}/resources/{KEYLESS_RESOURCE}/openai/fine_tuning/jobs/{keyless_job}/cancel\n\n"
    )
    write('Enqueue a cancel request (a bare job id, or {"job_id": "...", "resource": "...", ...}):\n')
    write(f"  {python} -m devstack.stack enqueue {queued}\n")
    write(f"  {python} -m devstack.stack enqueue '{keyless_message}'\n")
    write(
        f"  az storage message put --queue-name {info.requests_queue} --content {queued} \\\n"
        f"       --connection-string '{info.storage_connection_string}'\n\n"
    )
    write("With ftcancel (docs/cli.md):\n")
    write(
        f"  ftcancel cancel --url {info.functions_url} --key {info.function_key} --resource {KEYLESS_RESOURCE} "
        f"{keyless_job}\n"
    )
    write(
        f"  ftcancel enqueue --connection-string '{info.storage_connection_string}' --queue {info.requests_queue} "
        f"--resource {KEYLESS_RESOURCE} {keyless_queued}\n\n"
    )
    write("Read the result records (add --drain to take them off the queue):\n")
    write(f"  {python} -m devstack.stack results\n\n")
    out.flush()


def _run(args: argparse.Namespace) -> int:
    stack = LocalStack(
        runner_port=args.port,
        azurite_port=args.azurite_port,
        function_key=args.function_key,
        jobs=SEEDED_JOBS,
        keyless_jobs=SEEDED_KEYLESS_JOBS,
        report=lambda line: print("  " + line, flush=True),
    )
    interrupt_on_signals()
    print(f"==> Starting the local stack (logs in {shown_path(LOG_DIR)}/)", flush=True)
    try:
        info = stack.start()
        info.save()
        print_usage_examples(info, sys.stdout)
        while True:
            time.sleep(0.5)
            stack.check_alive()
    except StackError as err:
        report_failure("local stack failed", err)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        ignore_signals()
        print("==> Stopping the local stack", flush=True)
        stack.stop()
        STATE_FILE.unlink(missing_ok=True)
    return 0


def interrupt_on_signals() -> None:
    """SIGINT and SIGTERM interrupt whatever the stack is doing, start-up included, and lead to stop()."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def ignore_signals() -> None:
    """While the stack stops, a second Ctrl-C must not cut the teardown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _serve(args: argparse.Namespace) -> int:
    if args.service == SIMULATOR_SERVICE:
        return serve_simulator(
            args.job, key_access_disabled=args.key_access_disabled, trust_identity=args.trust_identity
        )
    return serve_key_vault(args.workdir or Path(tempfile.mkdtemp(prefix="devstack-keyvault-")))


def _enqueue(args: argparse.Namespace) -> int:
    info = StackInfo.load()
    queue = QueueClient.from_connection_string(info.storage_connection_string, args.queue or info.requests_queue)
    for message in args.messages:
        queue.send_message(message)
        print(f"enqueued on {queue.queue_name}: {message}")
    return 0


def _results(args: argparse.Namespace) -> int:
    info = StackInfo.load()
    queue = QueueClient.from_connection_string(info.storage_connection_string, info.results_queue)
    if args.drain:
        records = take_records(queue)
    else:
        records = [_record(message.content) for message in queue.peek_messages(max_messages=32)]
    if args.json:
        for record in records:
            print(json.dumps(record))
    else:
        print(format_records(records))
        print(f"\n{len(records)} record(s) on {info.results_queue}" + ("" if args.drain else " (peeked: at most 32)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start Azurite, the emulators and the Functions runner")
    run.add_argument("--port", type=int, default=int(os.environ.get("FUNCTIONS_PORT", DEFAULT_PORT)))
    run.add_argument(
        "--azurite-port", type=int, default=int(os.environ.get("AZURITE_QUEUE_PORT", AZURITE_DEFAULT_PORT))
    )
    run.add_argument("--function-key", default=os.environ.get(FUNCTION_KEY_ENV) or DEFAULT_FUNCTION_KEY)
    enqueue = commands.add_parser("enqueue", help="send messages to the request queue of the running stack")
    enqueue.add_argument("messages", nargs="+")
    enqueue.add_argument("--queue", help="another queue of the stack's Azurite")
    serve = commands.add_parser("serve", help=f"run one emulator as `run` starts it (the api-key in ${API_KEY_ENV})")
    serve.add_argument("service", choices=(SIMULATOR_SERVICE, KEY_VAULT_SERVICE))
    serve.add_argument("--job", action="append", default=[], help="a running job of the simulator")
    serve.add_argument("--workdir", type=Path, help="where the Key Vault emulator writes its CA bundle")
    serve.add_argument(
        "--key-access-disabled", action="store_true", help="the simulator refuses every api-key (and needs none)"
    )
    serve.add_argument(
        "--trust-identity",
        action="store_true",
        help=f"the simulator accepts the identity endpoint's tokens (signing key in ${TOKEN_SIGNING_KEY_ENV})",
    )
    results = commands.add_parser("results", help="show the result records of the running stack")
    results.add_argument("--drain", action="store_true", help="take the records off the queue")
    results.add_argument("--json", action="store_true", help="one JSON record per line")
    args = parser.parse_args(argv)
    try:
        return {"run": _run, "serve": _serve, "enqueue": _enqueue, "results": _results}[args.command](args)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
