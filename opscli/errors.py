"""How ftcancel fails: one line on stderr and an exit code, never a traceback.

    PROG                     - the command's name, which starts every line it writes to stderr
    CliError                 - reported as `ftcancel: <message>`, exits with `exit_code`
    network_reason(err)      - "connection refused", "the host name does not resolve", ... for a failed connection
"""

from __future__ import annotations

import socket
import ssl

PROG = "ftcancel"
EXIT_OK = 0
EXIT_ERROR = 1  # Azure, the storage account or the function app could not be used
EXIT_USAGE = 2  # bad arguments or job ids; nothing was sent
EXIT_NOT_CANCELLED = 3  # the function answered, and at least one job was not cancelled (failed or rejected)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM during a command that is not meant to be stopped that way


class CliError(Exception):
    """A failure the user can act on, said in one line."""

    def __init__(self, message: str, *, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def counted(count: int, noun: str) -> str:
    """`1 record`, `2 records`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def network_reason(err: BaseException) -> str:
    """Why a connection failed, in a few words, from the innermost exception that says so."""
    for cause in _causes(err):
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed ({cause.reason or cause})"
    text = " ".join(str(err).split())
    return text if len(text) <= 120 else text[:119] + "…"


def _causes(err: BaseException) -> list[BaseException]:
    """`err` and everything it wraps: causes, contexts, and the `reason`/args of urllib3 and requests errors."""
    found: list[BaseException] = []
    pending: list[BaseException] = [err]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in found):
            continue
        found.append(current)
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None),
                   getattr(current, "inner_exception", None), *current.args]
        pending.extend(item for item in wrapped if isinstance(item, BaseException))
    return found
