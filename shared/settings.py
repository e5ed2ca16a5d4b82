"""The app settings of CONTRACT section 1, read from the environment and validated in one place.

`load_settings()` reads and validates them once per process and returns the same frozen `Settings`
(or raises the same `SettingsError`) from then on; `reset()` makes the next call read them again.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from shared.built_once import BuiltOnce

logger = logging.getLogger(__name__)

# Setting names, exactly as CONTRACT.md section 1 writes them.
AZURE_OPENAI_ENDPOINT = "AZURE_OPENAI_ENDPOINT"
AZURE_OPENAI_API_VERSION = "AZURE_OPENAI_API_VERSION"
AZURE_OPENAI_AUTH = "AZURE_OPENAI_AUTH"
AZURE_OPENAI_RESOURCES = "AZURE_OPENAI_RESOURCES"
KEY_VAULT_URL = "KEY_VAULT_URL"
AZURE_OPENAI_KEY_SECRET_NAME = "AZURE_OPENAI_KEY_SECRET_NAME"
SECRET_CACHE_SECONDS = "SECRET_CACHE_SECONDS"
KEY_VAULT_VERIFY_CHALLENGE_RESOURCE = "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"
CANCEL_REQUESTS_QUEUE = "CANCEL_REQUESTS_QUEUE"
CANCEL_RESULTS_QUEUE = "CANCEL_RESULTS_QUEUE"
UPSTREAM_TIMEOUT_SECONDS = "UPSTREAM_TIMEOUT_SECONDS"
UPSTREAM_MAX_RETRIES = "UPSTREAM_MAX_RETRIES"
UPSTREAM_DEADLINE_SECONDS = "UPSTREAM_DEADLINE_SECONDS"
RESULTS_TTL_SECONDS = "RESULTS_TTL_SECONDS"
AZURE_WEB_JOBS_STORAGE = "AzureWebJobsStorage"

# Defaults of the optional settings; the required ones have none.
SETTING_DEFAULTS: Mapping[str, str] = {
    AZURE_OPENAI_API_VERSION: "2024-10-21",
    AZURE_OPENAI_AUTH: "api-key",
    AZURE_OPENAI_KEY_SECRET_NAME: "azure-openai-api-key",
    SECRET_CACHE_SECONDS: "300",
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: "true",
    CANCEL_REQUESTS_QUEUE: "cancel-requests",
    CANCEL_RESULTS_QUEUE: "cancel-results",
    UPSTREAM_TIMEOUT_SECONDS: "30",
    UPSTREAM_MAX_RETRIES: "3",
    UPSTREAM_DEADLINE_SECONDS: "60",
    RESULTS_TTL_SECONDS: "-1",
}
REQUIRED_SETTINGS = (AZURE_OPENAI_ENDPOINT, KEY_VAULT_URL, AZURE_WEB_JOBS_STORAGE)  # KEY_VAULT_URL: api-key mode
SETTING_NAMES = (*REQUIRED_SETTINGS, *SETTING_DEFAULTS)
# Optional settings with no default, which the deployment template does not set (yet).
WEBSITE_AUTH_ENABLED = "WEBSITE_AUTH_ENABLED"  # set by App Service when its Authentication is on
OPTIONAL_SETTINGS = (AZURE_OPENAI_RESOURCES, WEBSITE_AUTH_ENABLED)

# Read by the SDKs our code path goes through (not by `Settings`); the deployment check knows them from here.
SDK_ENVIRONMENT = (
    "AZURE_CLIENT_ID",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
)

UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0

_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_API_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2}(-preview)?|v1)$")
V1_API_VERSION = "v1"
DEFAULT_RESOURCE = "default"  # AZURE_OPENAI_ENDPOINT's resource, and what a request that names none means
RESOURCE_NAME = re.compile(r"[a-z0-9-]{1,40}")  # use with fullmatch
RESOURCE_FIELDS = ("endpoint", "auth", "key_secret_name", "api_version")
API_KEY_AUTH, ENTRA_AUTH = "api-key", "entra"
AUTH_MODES = (API_KEY_AUTH, ENTRA_AUTH)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_T = TypeVar("_T")


class SettingsError(Exception):
    """A required setting is missing or a setting's value is malformed."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"app setting {name} {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class ResourceSettings:
    """One Azure OpenAI resource the app may cancel jobs on: `default`, or a name of `AZURE_OPENAI_RESOURCES`."""

    name: str
    endpoint: str
    api_version: str  # a dated version, or "v1" for the /openai/v1 API (no api-version parameter)
    auth: str  # "api-key" (from Key Vault) or "entra" (a token from the app's identity)
    key_secret_name: str  # the Key Vault secret of its api-key (api-key mode)


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one function app process."""

    openai_endpoint: str | None  # the `default` resource's, when AZURE_OPENAI_ENDPOINT is set
    api_version: str
    auth: str
    key_vault_url: str | None  # None when no resource uses an api-key: Key Vault is then never read
    key_secret_name: str
    secret_cache_seconds: float
    verify_challenge_resource: bool
    requests_queue: str
    results_queue: str
    upstream_timeout_seconds: float
    upstream_max_retries: int
    upstream_deadline_seconds: float
    results: ResultsQueueSettings
    resources: Mapping[str, ResourceSettings] = field(compare=False)  # the allow-list, by name
    platform_auth: bool = False  # App Service Authentication is on: its principal headers can be trusted

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every setting; raise `SettingsError` naming the first bad one."""

        def value(name: str) -> str:
            raw = environ.get(name, "").strip()
            if raw:
                return raw
            if name in SETTING_DEFAULTS:
                return SETTING_DEFAULTS[name]
            raise SettingsError(name, "is required but not set")

        results = ResultsQueueSettings.from_environ(environ)
        auth = _auth_mode(AZURE_OPENAI_AUTH, value(AZURE_OPENAI_AUTH))
        api_version = _matching(AZURE_OPENAI_API_VERSION, value(AZURE_OPENAI_API_VERSION), _API_VERSION)
        key_secret_name = _matching(AZURE_OPENAI_KEY_SECRET_NAME, value(AZURE_OPENAI_KEY_SECRET_NAME), _SECRET_NAME)
        resources: dict[str, ResourceSettings] = {}
        named = environ.get(AZURE_OPENAI_RESOURCES, "").strip()
        endpoint = None
        if environ.get(AZURE_OPENAI_ENDPOINT, "").strip() or not named:
            endpoint = _endpoint(AZURE_OPENAI_ENDPOINT, value(AZURE_OPENAI_ENDPOINT))
            resources[DEFAULT_RESOURCE] = ResourceSettings(DEFAULT_RESOURCE, endpoint, api_version, auth, key_secret_name)
        if named:
            resources.update(_named_resources(named, auth=auth, api_version=api_version))
        vault_url = environ.get(KEY_VAULT_URL, "").strip()
        needs_vault = any(resource.auth == API_KEY_AUTH for resource in resources.values())
        return cls(
            openai_endpoint=endpoint,
            api_version=api_version,
            auth=auth,
            key_vault_url=_vault_url(KEY_VAULT_URL, value(KEY_VAULT_URL)) if needs_vault or vault_url else None,
            key_secret_name=key_secret_name,
            secret_cache_seconds=_number(SECRET_CACHE_SECONDS, value(SECRET_CACHE_SECONDS), positive=False),
            verify_challenge_resource=_boolean(
                KEY_VAULT_VERIFY_CHALLENGE_RESOURCE, value(KEY_VAULT_VERIFY_CHALLENGE_RESOURCE)
            ),
            requests_queue=_matching(CANCEL_REQUESTS_QUEUE, value(CANCEL_REQUESTS_QUEUE), _QUEUE_NAME),
            results_queue=results.name,
            upstream_timeout_seconds=_number(UPSTREAM_TIMEOUT_SECONDS, value(UPSTREAM_TIMEOUT_SECONDS), positive=True),
            upstream_max_retries=int(
                _number(UPSTREAM_MAX_RETRIES, value(UPSTREAM_MAX_RETRIES), positive=False, integer=True)
            ),
            upstream_deadline_seconds=_number(
                UPSTREAM_DEADLINE_SECONDS, value(UPSTREAM_DEADLINE_SECONDS), positive=True
            ),
            results=results,
            resources=resources,
            platform_auth=environ.get(WEBSITE_AUTH_ENABLED, "").strip().lower() == "true",
        )


def _auth_mode(name: str, raw: str) -> str:
    mode = raw.lower()
    if mode not in AUTH_MODES:
        raise SettingsError(name, f"must be one of {', '.join(AUTH_MODES)}")
    return mode


def _named_resources(raw: str, *, auth: str, api_version: str) -> dict[str, ResourceSettings]:
    """`AZURE_OPENAI_RESOURCES`: each entry validated like the single-resource settings, named, never echoed."""
    name = AZURE_OPENAI_RESOURCES
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise SettingsError(name, "is not valid JSON") from err
    if not isinstance(entries, dict) or not entries:
        raise SettingsError(name, 'must be a JSON object of named resources, e.g. {"sweden": {"endpoint": "https://..."}}')
    resources = {}
    for resource, entry in entries.items():
        if not isinstance(resource, str) or not RESOURCE_NAME.fullmatch(resource):
            raise SettingsError(name, "has a resource name that is not 1 to 40 lower-case letters, digits and '-'")
        if resource == DEFAULT_RESOURCE:
            raise SettingsError(name, f"may not define '{DEFAULT_RESOURCE}': that is {AZURE_OPENAI_ENDPOINT}'s resource")
        where = f"resource '{resource}'"
        if not isinstance(entry, dict):
            raise SettingsError(name, f"{where} must be a JSON object")
        unknown = sorted(set(entry) - set(RESOURCE_FIELDS))
        if unknown:
            raise SettingsError(name, f"{where} has unknown fields (expected {', '.join(RESOURCE_FIELDS)})")
        if not all(isinstance(value, str) for value in entry.values()):
            raise SettingsError(name, f"{where}: every field must be a string")
        try:
            resources[resource] = ResourceSettings(
                name=resource,
                endpoint=_endpoint("endpoint", entry.get("endpoint", "")),
                api_version=_matching("api_version", entry.get("api_version", api_version), _API_VERSION),
                auth=_auth_mode("auth", entry.get("auth", auth)),
                key_secret_name=_matching(
                    "key_secret_name", entry.get("key_secret_name", f"azure-openai-api-key-{resource}"), _SECRET_NAME
                ),
            )
        except SettingsError as err:
            raise SettingsError(name, f"{where}: {err.name} {err.problem}") from err
    return resources


@dataclass(frozen=True)
class StorageConnection:
    """Where the results queue is: a connection string, or a queue service URL reached with the app's identity.

    The same forms the host reads for `AzureWebJobsStorage`: a connection string, or the identity-based
    `AzureWebJobsStorage__queueServiceUri` / `__accountName` with an optional `__clientId`.
    """

    connection_string: str | None = None
    queue_service_url: str | None = None
    client_id: str | None = None


@dataclass(frozen=True)
class ResultsQueueSettings:
    """What writing a record needs, read apart from the rest so that a misconfigured app still records why."""

    name: str
    time_to_live: int
    storage: StorageConnection

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ResultsQueueSettings:
        def value(name: str) -> str:
            return environ.get(name, "").strip() or SETTING_DEFAULTS[name]

        return cls(
            name=_matching(CANCEL_RESULTS_QUEUE, value(CANCEL_RESULTS_QUEUE), _QUEUE_NAME),
            time_to_live=_time_to_live(RESULTS_TTL_SECONDS, value(RESULTS_TTL_SECONDS)),
            storage=_storage_connection(environ),
        )


def _storage_connection(environ: Mapping[str, str]) -> StorageConnection:
    connection_string = environ.get(AZURE_WEB_JOBS_STORAGE, "").strip()
    if connection_string:
        return StorageConnection(connection_string=connection_string)
    prefix = AZURE_WEB_JOBS_STORAGE + "__"
    service_url = environ.get(prefix + "queueServiceUri", "").strip()
    account = environ.get(prefix + "accountName", "").strip()
    if not service_url and account:
        if not _STORAGE_ACCOUNT.fullmatch(account):
            raise SettingsError(prefix + "accountName", "is not a storage account name (3 to 24 lower-case letters and digits)")
        service_url = f"https://{account}.queue.core.windows.net"
    if not service_url:
        raise SettingsError(
            AZURE_WEB_JOBS_STORAGE,
            "is required but not set (nor identity-based AzureWebJobsStorage__queueServiceUri or __accountName)",
        )
    _endpoint(prefix + "queueServiceUri", service_url)
    client_id = environ.get(prefix + "clientId", "").strip() or None
    return StorageConnection(queue_service_url=service_url.rstrip("/"), client_id=client_id)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the hosts an http endpoint is allowed on."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(name: str, raw: str) -> str:
    parts = _url_parts(name, raw)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        raise SettingsError(name, "must use https (plain http is allowed for a loopback host only)")
    if parts.query or parts.fragment:
        raise SettingsError(name, "must not carry a query or fragment")
    return raw.rstrip("/")


def _vault_url(name: str, raw: str) -> str:
    parts = _url_parts(name, raw)
    if parts.scheme != "https":
        raise SettingsError(name, "must be an https URL (the Key Vault client refuses http)")
    return raw if raw.endswith("/") else raw + "/"


def _url_parts(name: str, raw: str):
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as err:
        raise SettingsError(name, "is not a valid URL") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, "must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(name, "must not carry credentials (user:password@); the app's identity is the credential")
    return parts


def _matching(name: str, raw: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(raw):
        raise SettingsError(name, f"is malformed (expected {pattern.pattern})")
    return raw


def _number(name: str, raw: str, *, positive: bool, integer: bool = False) -> float:
    try:
        number = int(raw) if integer else float(raw)
    except ValueError as err:
        kind = "a whole number" if integer else "a number"
        raise SettingsError(name, f"must be {kind}") from err
    in_range = number > 0 if positive else number >= 0
    if not in_range or number == float("inf"):
        raise SettingsError(name, "must be a finite number above zero" if positive else "must not be negative")
    return number


def _time_to_live(name: str, raw: str) -> int:
    """A message time-to-live as the queue service takes it: -1 (never expires) or whole seconds above zero."""
    try:
        seconds = int(raw)
    except ValueError as err:
        raise SettingsError(name, "must be -1 (never expire) or a whole number of seconds above zero") from err
    if seconds == 0 or seconds < -1:
        raise SettingsError(name, "must be -1 (never expire) or a whole number of seconds above zero")
    return seconds


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(name, "must be true or false")


def _read_settings(environ: Mapping[str, str]) -> Settings | SettingsError:
    try:
        return Settings.from_environ(environ)
    except SettingsError as err:
        logger.error("Configuration error: %s", err)  # once per process, not once per invocation
        return err


def _read_results_queue_settings(environ: Mapping[str, str]) -> ResultsQueueSettings | SettingsError:
    try:
        return ResultsQueueSettings.from_environ(environ)
    except SettingsError as err:
        return err


_settings = BuiltOnce(_read_settings)
_results_queue_settings = BuiltOnce(_read_results_queue_settings)


def load_settings() -> Settings:
    """The validated settings of this process, read once; raises `SettingsError` naming a bad setting.

    Azure restarts the worker process when an app setting changes, so one read serves the process's life.
    """
    return _kept(_settings.get(os.environ))


def load_results_queue_settings() -> ResultsQueueSettings:
    """The results queue's settings, read once and apart from the rest: a misconfigured app still records why."""
    return _kept(_results_queue_settings.get(os.environ))


def reset() -> None:
    """Forget the settings read, so the next load reads `os.environ` again (a test that changes it calls this)."""
    _settings.reset()
    _results_queue_settings.reset()


def _kept(result: _T | SettingsError) -> _T:
    if isinstance(result, SettingsError):
        raise result
    return result


# The guard (CONTRACT section 8, issue 16). GUARD_POLICY is validated by shared.guard_policy; GUARD_SCHEDULE
# is the timer trigger's NCRONTAB schedule, which the host reads (`%GUARD_SCHEDULE%`) and the app never does.
GUARD_POLICY = "GUARD_POLICY"
GUARD_SCHEDULE = "GUARD_SCHEDULE"
