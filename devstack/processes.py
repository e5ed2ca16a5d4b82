"""Child processes of the local stack, and the ready-line protocol they announce themselves with.

A child runs in a process group of its own, logging to one file, and (on Linux) ends when its parent
dies. An emulator run as a program prints one line `<name> ready <json>` once it serves
(`serve_until_signalled`); its parent reads it from the child's log (`ChildProcess.wait_ready`) or
from a pipe (`read_ready_line`), both with `ready_pattern`.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
RUNNER_READY_NAME = "runner"  # `python -m devstack.runner` prints `runner ready {"api_url": ...}`

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
    """`path` relative to the working directory where it is inside it, as a user would type it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- the ready-line protocol ----------------------------------------------------------------------


def ready_pattern(name: str) -> re.Pattern[str]:
    """Matches `<name> ready <json>`; group 1 is the JSON."""
    return re.compile(rf"{re.escape(name)} ready (\{{.*\}})")


def serve_until_signalled(service: AbstractContextManager[Any], name: str, ready: Callable[[], dict[str, Any]]) -> int:
    """Run a service until SIGINT/SIGTERM, printing `<name> ready <json>` once it serves."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with service:
        print(f"{name} ready {json.dumps(ready())}", flush=True)
        stop.wait()
    return 0


def read_ready_line(stream: IO[str], name: str, *, timeout: float) -> dict[str, Any]:
    """Wait for `<name> ready <json>` on a child's stdout and return the JSON payload."""
    readable, _, _ = select.select([stream], [], [], timeout)
    if not readable:
        raise TimeoutError(f"{name} printed no ready line within {timeout:.0f} s")
    line = stream.readline()
    found = ready_pattern(name).fullmatch(line.rstrip("\n"))
    if found is None:
        raise RuntimeError(f"{name} printed {line!r} instead of a ready line")
    return json.loads(found.group(1))


# --- child processes ----------------------------------------------------------------------------------


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

    def ready_payload(self, *, timeout: float = READY_TIMEOUT_SECONDS) -> dict[str, Any]:
        """The JSON of the child's `<name> ready <json>` line (for a child started with a `ready_pattern`)."""
        return json.loads(self.wait_ready(timeout=timeout).group(1))

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
    Its ready line carries the URLs as JSON: `runner.ready_payload()["api_url"]`.
    """
    argv = [sys.executable, "-u", "-m", "devstack.runner", "--app-dir", str(REPO_ROOT), "--port", str(port), *options]
    return ChildProcess(
        "Functions runner", argv, log_path=log_path, ready=ready_pattern(RUNNER_READY_NAME), env=env
    )
