"""CONTRACT section 1: every setting's default, and a clear error naming any bad one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import shared.settings
from shared.settings import SETTING_DEFAULTS, Settings, SettingsError, load_settings

VALID = {
    "AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com/",
    "KEY_VAULT_URL": "https://contoso-kv.vault.azure.net/",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_defaults_are_the_contracts() -> None:
    settings = Settings.from_environ(VALID)
    assert settings.openai_endpoint == "https://contoso.openai.azure.com"  # trailing / tolerated
    assert settings.api_version == "2024-10-21"
    assert settings.key_secret_name == "azure-openai-api-key"
    assert settings.secret_cache_seconds == 300
    assert settings.verify_challenge_resource is True
    assert (settings.requests_queue, settings.results_queue) == ("cancel-requests", "cancel-results")
    assert (settings.upstream_timeout_seconds, settings.upstream_max_retries) == (30, 3)
    assert settings.upstream_deadline_seconds == 60
    assert set(SETTING_DEFAULTS) == {
        "AZURE_OPENAI_API_VERSION", "AZURE_OPENAI_KEY_SECRET_NAME", "SECRET_CACHE_SECONDS",
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "CANCEL_REQUESTS_QUEUE", "CANCEL_RESULTS_QUEUE",
        "UPSTREAM_TIMEOUT_SECONDS", "UPSTREAM_MAX_RETRIES", "UPSTREAM_DEADLINE_SECONDS", "RESULTS_TTL_SECONDS",
        "AZURE_OPENAI_AUTH",
    }
    assert settings.auth == "api-key" and settings.key_vault_url == "https://contoso-kv.vault.azure.net/"
    assert settings.results.time_to_live == -1  # records never expire unless an operator says so


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8080", "http://127.9.9.9", "http://localhost:1/", "http://[::1]:8000", "https://x.openai.azure.com"],
)
def test_endpoints_allowed(endpoint: str) -> None:
    assert Settings.from_environ({**VALID, "AZURE_OPENAI_ENDPOINT": endpoint}).openai_endpoint == endpoint.rstrip("/")


def test_identity_based_storage_connection_is_enough() -> None:
    environ = {k: v for k, v in VALID.items() if k != "AzureWebJobsStorage"}
    environ["AzureWebJobsStorage__queueServiceUri"] = "https://acct.queue.core.windows.net"
    assert Settings.from_environ(environ).results_queue == "cancel-results"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AZURE_OPENAI_ENDPOINT", None),
        ("AZURE_OPENAI_ENDPOINT", "http://contoso.openai.azure.com"),  # http off loopback
        ("AZURE_OPENAI_ENDPOINT", "http://10.0.0.1"),
        ("AZURE_OPENAI_ENDPOINT", "contoso.openai.azure.com"),
        ("AZURE_OPENAI_ENDPOINT", "https://host:notaport"),
        ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/?a=b"),
        ("KEY_VAULT_URL", None),
        ("KEY_VAULT_URL", "http://127.0.0.1:8443/"),
        ("AzureWebJobsStorage", None),
        ("AZURE_OPENAI_API_VERSION", "latest"),
        ("AZURE_OPENAI_API_VERSION", "v2"),
        ("AZURE_OPENAI_AUTH", "keyless"),
        ("AZURE_OPENAI_KEY_SECRET_NAME", "bad_name"),
        ("SECRET_CACHE_SECONDS", "five"),
        ("SECRET_CACHE_SECONDS", "-1"),
        ("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", "maybe"),
        ("CANCEL_REQUESTS_QUEUE", "Cancel_Requests"),
        ("CANCEL_RESULTS_QUEUE", "ab"),
        ("UPSTREAM_TIMEOUT_SECONDS", "0"),
        ("UPSTREAM_MAX_RETRIES", "2.5"),
        ("UPSTREAM_MAX_RETRIES", "-1"),
        ("UPSTREAM_DEADLINE_SECONDS", "nan"),
        ("UPSTREAM_DEADLINE_SECONDS", "inf"),
        ("RESULTS_TTL_SECONDS", "0"),
        ("RESULTS_TTL_SECONDS", "-7"),
        ("RESULTS_TTL_SECONDS", "1.5"),
        ("RESULTS_TTL_SECONDS", "week"),
        # credentials in a URL are refused, and never echoed (issue 11 section 7)
        ("KEY_VAULT_URL", "https://admin:hunter2secret@myvault.vault.azure.net/"),
        ("KEY_VAULT_URL", "https://tokenonly@myvault.vault.azure.net/"),
        ("AZURE_OPENAI_ENDPOINT", "https://user:s3cretpass@contoso.openai.azure.com"),
        ("AzureWebJobsStorage__accountName", "Not_An_Account"),
    ],
)
def test_bad_setting_is_named(name: str, value: str | None) -> None:
    environ = dict(VALID)
    if name.startswith("AzureWebJobsStorage__"):
        environ.pop("AzureWebJobsStorage")
    if value is None:
        environ.pop(name)
    else:
        environ[name] = value
    with pytest.raises(SettingsError) as caught:
        Settings.from_environ(environ)
    assert caught.value.name == name
    assert name in str(caught.value)
    if value:
        assert value not in str(caught.value)  # the message names the setting, never echoes its value


def test_entra_mode_needs_no_key_vault_and_v1_is_a_version() -> None:
    environ = {k: v for k, v in VALID.items() if k != "KEY_VAULT_URL"}
    settings = Settings.from_environ({**environ, "AZURE_OPENAI_AUTH": "Entra", "AZURE_OPENAI_API_VERSION": "v1"})
    assert (settings.auth, settings.key_vault_url, settings.api_version) == ("entra", None, "v1")
    with pytest.raises(SettingsError) as caught:
        Settings.from_environ(environ)  # api-key mode still needs the vault
    assert caught.value.name == "KEY_VAULT_URL"


def test_results_ttl_and_identity_based_results_queue() -> None:
    environ = {k: v for k, v in VALID.items() if k != "AzureWebJobsStorage"}
    environ.update({"AzureWebJobsStorage__accountName": "acct01", "AzureWebJobsStorage__clientId": "cid", "RESULTS_TTL_SECONDS": "3600"})
    results = Settings.from_environ(environ).results
    assert results.time_to_live == 3600
    assert results.storage.queue_service_url == "https://acct01.queue.core.windows.net"
    assert results.storage.client_id == "cid" and results.storage.connection_string is None


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, str]], None]]:
    """Sets the process's environment to exactly these settings, as a worker process starting with them."""

    def use(settings: dict[str, str]) -> None:
        for name in (*shared.settings.SETTING_NAMES, *shared.settings.OPTIONAL_SETTINGS):
            monkeypatch.delenv(name, raising=False)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        shared.settings.reset()

    yield use
    shared.settings.reset()  # the next test reads its own


def test_bad_configuration_is_logged_once(caplog: pytest.LogCaptureFixture, environ) -> None:
    environ({**VALID, "UPSTREAM_MAX_RETRIES": "many"})
    with caplog.at_level("ERROR"):
        for _ in range(5):
            with pytest.raises(SettingsError):
                load_settings()
    assert [r.getMessage() for r in caplog.records if "UPSTREAM_MAX_RETRIES" in r.getMessage()] == [
        "Configuration error: app setting UPSTREAM_MAX_RETRIES must be a whole number"
    ]


def test_settings_are_read_once_per_process_until_reset(environ, monkeypatch: pytest.MonkeyPatch) -> None:
    environ(dict(VALID))
    first = load_settings()
    assert load_settings() is first
    monkeypatch.setenv("UPSTREAM_MAX_RETRIES", "1")  # not read per invocation: Azure restarts the worker instead
    assert load_settings() is first and first.upstream_max_retries == 3
    environ({**VALID, "UPSTREAM_MAX_RETRIES": "1"})  # resets, as a new worker process would start
    assert load_settings() is not first
