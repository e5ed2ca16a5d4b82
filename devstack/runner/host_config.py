"""The runner's configuration: host.json's `extensions`, app settings (`%NAME%`), storage connections.

Each value the host would take from host.json or the app settings is read here, with the host's
default when host.json leaves it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.runner.errors import RunnerError
from shared.results_queue import expand_development_storage

# Defaults of the host when host.json leaves a value out.
HOST_DEFAULT_ROUTE_PREFIX = "api"
HOST_DEFAULT_MESSAGE_ENCODING = "base64"
HOST_DEFAULT_MAX_DEQUEUE_COUNT = 5
HOST_DEFAULT_BATCH_SIZE = 16
HOST_DEFAULT_MAX_POLLING_INTERVAL = 60.0
MIN_POLLING_INTERVAL = 0.1  # the host polls this often right after it found messages
MAX_BATCH_SIZE = 32  # the storage service's limit for one Get Messages call

_SETTING_REFERENCE = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class HostSettings:
    """The parts of host.json the runner honours, with the host's defaults filled in."""

    route_prefix: str = HOST_DEFAULT_ROUTE_PREFIX
    message_encoding: str = HOST_DEFAULT_MESSAGE_ENCODING
    max_dequeue_count: int = HOST_DEFAULT_MAX_DEQUEUE_COUNT
    visibility_timeout: float = 0.0
    batch_size: int = HOST_DEFAULT_BATCH_SIZE
    new_batch_threshold: int = HOST_DEFAULT_BATCH_SIZE // 2
    max_polling_interval: float = HOST_DEFAULT_MAX_POLLING_INTERVAL

    @classmethod
    def from_host_json(cls, path: Path) -> HostSettings:
        """Read `extensions.http` and `extensions.queues` of a host.json (all defaults if it is missing)."""
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as err:
            raise RunnerError(f"{path} is not valid JSON: {err}") from err
        extensions = config.get("extensions") or {}
        http = extensions.get("http") or {}
        queues = extensions.get("queues") or {}
        batch_size = min(max(int(queues.get("batchSize", HOST_DEFAULT_BATCH_SIZE)), 1), MAX_BATCH_SIZE)
        encoding = str(queues.get("messageEncoding", HOST_DEFAULT_MESSAGE_ENCODING)).lower()
        if encoding not in ("base64", "none"):
            raise RunnerError(f"{path}: extensions.queues.messageEncoding must be base64 or none, not {encoding!r}")
        return cls(
            route_prefix=str(http.get("routePrefix", HOST_DEFAULT_ROUTE_PREFIX)).strip("/"),
            message_encoding=encoding,
            max_dequeue_count=max(int(queues.get("maxDequeueCount", HOST_DEFAULT_MAX_DEQUEUE_COUNT)), 1),
            visibility_timeout=timespan_seconds(queues.get("visibilityTimeout", "00:00:00")),
            batch_size=batch_size,
            new_batch_threshold=max(int(queues.get("newBatchThreshold", batch_size // 2)), 0),
            max_polling_interval=max(
                timespan_seconds(queues.get("maxPollingInterval", "00:01:00")), MIN_POLLING_INTERVAL
            ),
        )


def timespan_seconds(value: object) -> float:
    """A host.json TimeSpan (`[d.]hh:mm:ss[.fff]`) in seconds; a bare number means milliseconds, as in the host."""
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise RunnerError(f"host.json: {value!r} is not a TimeSpan like 00:00:30")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def resolve_setting_references(value: str, settings: Mapping[str, str], *, where: str) -> str:
    """Replace each `%NAME%` by the app setting NAME; like the host, a missing setting is an error."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        resolved = settings.get(name)
        if resolved is None or resolved == "":
            raise RunnerError(f"{where}: '%{name}%' does not resolve to a value (set the app setting {name})")
        return resolved

    return _SETTING_REFERENCE.sub(setting, value)


def storage_connection_string(connection: str, settings: Mapping[str, str]) -> str:
    """The connection string behind a binding's `connection` setting, `UseDevelopmentStorage=true` expanded."""
    value = settings.get(connection) or settings.get(f"AzureWebJobs{connection}")
    if not value:
        if any(name.startswith(connection + "__") for name in settings):
            raise RunnerError(
                f"the storage connection {connection} is identity-based ({connection}__*): the local runner "
                "needs a connection string (Azurite's, or a storage account's)"
            )
        raise RunnerError(f"the storage connection setting {connection} is not set")
    return expand_development_storage(value)


def load_settings_file(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json."""
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values") or {}
    except (OSError, ValueError) as err:
        raise RunnerError(f"cannot read {path}: {err}") from err
    return {str(name): str(value) for name, value in values.items()}
