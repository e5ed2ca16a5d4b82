"""The local stack: Azurite, the Key Vault emulator, two Azure OpenAI simulators and the Functions runner.

Each part runs as a child process in a process group of its own, logging to `.devstack/logs/`;
`LocalStack.stop()` (also on Ctrl-C or SIGTERM) ends every group, and on Linux a child also ends
when the stack process dies. The simulators are two resources of the app (AZURE_OPENAI_RESOURCES):
`default`, reached with the api-key Key Vault holds, and `keyless`, whose key access is disabled and
which takes the identity endpoint's tokens for the Cognitive Services audience (`AZURE_OPENAI_AUTH`
`entra`). Secrets travel only in the environment of the children that need them, never on a command
line or in a log: the api-key (API_KEY_ENV) to the keyed simulator and the Key Vault emulator, the
key that signs and checks tokens (TOKEN_SIGNING_KEY_ENV) to the Key Vault emulator and the keyless simulator.
`make run` is `python -m devstack.stack run`; it prints the `ftcancel` commands that talk to the stack:

    python -m devstack.stack run                     # start everything, print URLs and examples
    python -m devstack.stack serve openai-sim ...    # one emulator, as `run` starts it
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from devstack.environment import (
    REQUESTS_QUEUE,
    RESULTS_QUEUE,
    SECRET_NAME,
    child_environ,
    emulator_app_settings,
)
from devstack.keyvault_emulator import KeyVaultEmulator, verify_signed_token
from devstack.openai_sim import FineTuningSimulator
from devstack.processes import (
    REPO_ROOT,
    ChildProcess,
    StackError,
    ready_pattern,
    runner_process,
    serve_until_signalled,
    shown_path,
)
from devstack.runner import DEFAULT_FUNCTION_KEY, DEFAULT_PORT, FUNCTION_KEY_ENV
from devstack.storage import AZURITE_DEFAULT_PORT, Azurite
from shared.entra_token import COGNITIVE_SERVICES_SCOPE
from shared.settings import AZURE_OPENAI_RESOURCES, DEFAULT_RESOURCE, ENTRA_AUTH

STATE_DIR = Path(os.environ.get("DEVSTACK_STATE_DIR") or REPO_ROOT / ".devstack")  # logs and stack.json
LOG_DIR = STATE_DIR / "logs"
STATE_FILE = STATE_DIR / "stack.json"

API_KEY_ENV = "DEVSTACK_API_KEY"  # how the simulator's api-key reaches its two children: never argv, never a log
TOKEN_SIGNING_KEY_ENV = "DEVSTACK_TOKEN_SIGNING_KEY"  # the identity endpoint signs tokens, the keyless simulator checks
COGNITIVE_SERVICES_AUDIENCE = COGNITIVE_SERVICES_SCOPE.removesuffix("/.default")  # what entra-mode tokens are for
KEYLESS_RESOURCE = "keyless"
SIMULATOR_SERVICE = "openai-sim"
KEY_VAULT_SERVICE = "keyvault-emulator"
API_VERSION = "2024-10-21"
SEEDED_JOBS = ("ftjob-local1", "ftjob-local2", "ftjob-local3")
SEEDED_KEYLESS_JOBS = ("ftjob-keyless1", "ftjob-keyless2", "ftjob-keyless3")


@dataclass
class StackInfo:
    """Where the running stack's parts are; written to .devstack/stack.json for scripts that look for the stack."""

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
    master_key: str = ""  # the runner's, for the host's admin API (`ftcancel guard sweep`)

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
            ready=ready_pattern(KEY_VAULT_SERVICE),
            env={**os.environ, API_KEY_ENV: self.api_key, TOKEN_SIGNING_KEY_ENV: signing_key},
        )
        self.simulator = ChildProcess(
            "Azure OpenAI simulator",
            [*serve, SIMULATOR_SERVICE, *_job_options(self.jobs)],
            log_path=log_dir / "openai-sim.log",
            ready=ready_pattern(SIMULATOR_SERVICE),
            env={**os.environ, API_KEY_ENV: self.api_key},
        )
        self.keyless_simulator = ChildProcess(
            "Azure OpenAI simulator (keyless)",
            [*serve, SIMULATOR_SERVICE, "--key-access-disabled", "--trust-identity", *_job_options(self.keyless_jobs)],
            log_path=log_dir / "openai-sim-keyless.log",
            ready=ready_pattern(SIMULATOR_SERVICE),
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
        vault_environ = self.key_vault.ready_payload()
        self._report(f"Key Vault emulator      {vault_environ['KEY_VAULT_URL']}")
        openai_endpoint = self.simulator.ready_payload()["AZURE_OPENAI_ENDPOINT"]
        self._report(f"Azure OpenAI simulator  {openai_endpoint}  (resource '{DEFAULT_RESOURCE}', api-key)")
        keyless_endpoint = self.keyless_simulator.ready_payload()["AZURE_OPENAI_ENDPOINT"]
        self._report(f"Azure OpenAI simulator  {keyless_endpoint}  (resource '{KEYLESS_RESOURCE}', Entra tokens only)")
        settings = {
            **emulator_app_settings(
                key_vault=vault_environ,
                openai_endpoint=openai_endpoint,
                storage=self.azurite.connection_string,
                requests_queue=self.requests_queue,
                results_queue=self.results_queue,
            ),
            AZURE_OPENAI_RESOURCES: json.dumps({KEYLESS_RESOURCE: {"endpoint": keyless_endpoint, "auth": ENTRA_AUTH}}),
            "PYTHON_THREADPOOL_THREAD_COUNT": "32",  # the shipped value (infra/ and docs/local-stack.md say why)
            FUNCTION_KEY_ENV: self.function_key,
        }
        self.runner = runner_process(
            log_path=self.log_dir / "runner.log", env=child_environ(settings), port=self._runner_port
        ).start()
        ready = self.runner.ready_payload()
        functions_url = ready["api_url"]
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
            master_key=ready["master_key"],
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


# --- reporting --------------------------------------------------------------------------------------


def report_failure(headline: str, err: StackError) -> None:
    """Say on stderr which part failed and where its log is, with the log's last lines."""
    print(f"\n{headline}: {err}", file=sys.stderr, flush=True)
    tail = err.log_tail()
    if tail and err.log_path is not None:
        print(f"--- last lines of {shown_path(err.log_path)} ---\n{tail}", file=sys.stderr, flush=True)


# --- command line ------------------------------------------------------------------------------------


def print_usage_examples(info: StackInfo, out: TextIO) -> None:
    """The URLs and copy-paste examples `make run` prints, for both resources: curl, and ftcancel (docs/cli.md)."""
    ftcancel = _ftcancel_command()
    job = info.jobs[0] if info.jobs else "ftjob-<id>"
    queued = info.jobs[1] if len(info.jobs) > 1 else job
    keyless_job = info.keyless_jobs[0] if info.keyless_jobs else "ftjob-<id>"
    keyless_queued = info.keyless_jobs[1] if len(info.keyless_jobs) > 1 else keyless_job
    key_header = f"-H 'x-functions-key: {info.function_key}'"
    storage = f"--connection-string {shlex.quote(info.storage_connection_string)}"
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
        f"       {info.functions_url}/resources/{KEYLESS_RESOURCE}/openai/fine_tuning/jobs/{keyless_job}/cancel\n"
    )
    write(
        f"  {ftcancel} cancel --url {info.functions_url} --key {info.function_key} --resource {KEYLESS_RESOURCE} "
        f"{keyless_job}\n\n"
    )
    write("Enqueue cancel requests (ftcancel, docs/cli.md; or any queue client):\n")
    write(f"  {ftcancel} enqueue {storage} --queue {info.requests_queue} {queued}\n")
    write(
        f"  {ftcancel} enqueue {storage} --queue {info.requests_queue} --resource {KEYLESS_RESOURCE} {keyless_queued}\n"
    )
    write(f"  az storage message put --queue-name {info.requests_queue} --content {queued} {storage}\n\n")
    write("Read the result records (add --delete to take them off the queue, --follow to keep reading):\n")
    write(f"  {ftcancel} results {storage} --queue {info.results_queue}\n\n")
    write("The guard (README, Guardrails; set GUARD_POLICY for sweeps to pick jobs): the kill switch, a sweep now:\n")
    write(f"  {ftcancel} guard cancel-active --url {info.functions_url} --key {info.function_key} --dry-run\n")
    write(f"  {ftcancel} guard sweep --url {info.functions_url} --master-key {info.master_key}\n\n")
    out.flush()


def _ftcancel_command() -> str:
    """`ftcancel` as this Python's environment installed it (`.venv/bin/ftcancel`), else from the PATH."""
    installed = Path(sys.executable).parent / "ftcancel"
    if not installed.exists():
        return "ftcancel"
    return shown_path(installed) if installed.is_relative_to(Path.cwd()) else str(installed)


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
    args = parser.parse_args(argv)
    try:
        return {"run": _run, "serve": _serve}[args.command](args)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
