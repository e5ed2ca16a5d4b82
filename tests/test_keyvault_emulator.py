"""Tests of the Key Vault + managed-identity emulator through the real Azure SDK and raw HTTPS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient

from devstack.keyvault_emulator import CHALLENGE, KeyVaultEmulator
from devstack.processes import read_ready_line
from tests.support.identity import token

REPO = Path(__file__).resolve().parents[1]
SECRET = "azure-openai-api-key"
# Variables that would steer DefaultAzureCredential away from the managed identity.
FOREIGN_IDENTITY_VARS = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
)


@pytest.fixture
def kv() -> Iterator[KeyVaultEmulator]:
    """A running emulator holding one secret, its environment not applied."""
    with KeyVaultEmulator() as emulator:
        emulator.set_secret(SECRET, "first-value")
        yield emulator


@pytest.fixture
def kv_env(kv: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch) -> KeyVaultEmulator:
    """The emulator with its environ() applied, as the function app would see it."""
    for name in FOREIGN_IDENTITY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in kv.environ().items():
        monkeypatch.setenv(name, value)
    return kv


def secret_client(**kwargs: Any) -> SecretClient:
    """Build the client exactly as production does, from the environment."""
    return SecretClient(
        os.environ["KEY_VAULT_URL"], DefaultAzureCredential(), verify_challenge_resource=False, **kwargs
    )


# --- through the SDK ----------------------------------------------------------------------------


def test_environ_names_the_settings(kv: KeyVaultEmulator) -> None:
    """environ() gives the contract's settings plus the standard identity and CA variables."""
    env = kv.environ()
    assert env == {
        "KEY_VAULT_URL": kv.vault_url,
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "false",
        "IDENTITY_ENDPOINT": kv.identity_endpoint,
        "IDENTITY_HEADER": kv.identity_header,
        "REQUESTS_CA_BUNDLE": str(kv.ca_bundle),
        "SSL_CERT_FILE": str(kv.ca_bundle),
    }
    assert kv.vault_url == f"https://127.0.0.1:{kv.port}/"
    bundle = kv.ca_bundle.read_text()
    assert kv.ca_pem.read_text() in bundle and bundle.count("BEGIN CERTIFICATE") > 10  # system roots kept


def test_get_secret_with_default_credential(kv_env: KeyVaultEmulator) -> None:
    """SecretClient + DefaultAzureCredential read the secret unchanged, quickly (no credential probing)."""
    started = time.monotonic()
    secret = secret_client().get_secret(SECRET)
    assert time.monotonic() - started < 5  # ~50 ms here; IMDS probing or the Azure CLI would take seconds
    assert secret.value == "first-value"
    assert secret.id.startswith(kv_env.vault_url + "secrets/" + SECRET + "/")
    assert secret.properties.enabled is True
    assert secret.properties.recovery_level == "Recoverable+Purgeable"
    assert kv_env.token_requests == [{"api-version": "2019-08-01", "resource": "https://vault.azure.net"}]


def test_set_secret_and_versions(kv_env: KeyVaultEmulator) -> None:
    """set_secret makes a new version; the latest is served by default, older ones by version."""
    client = secret_client()
    old = client.get_secret(SECRET)
    new = client.set_secret(SECRET, "second-value", content_type="text/plain", tags={"rotated": "yes"})
    assert new.properties.version != old.properties.version
    assert (new.properties.content_type, new.properties.tags) == ("text/plain", {"rotated": "yes"})
    assert client.get_secret(SECRET).value == "second-value"
    assert client.get_secret(SECRET, version=old.properties.version).value == "first-value"
    third = kv_env.set_secret(SECRET, "third-value")
    latest = client.get_secret(SECRET)
    assert (latest.value, latest.properties.version) == ("third-value", third)
    assert client.get_secret(SECRET.upper()).value == "third-value"  # Key Vault names ignore case


def test_read_count(kv_env: KeyVaultEmulator) -> None:
    """read_count counts successful secret GETs, per name and in total; reset_counts zeroes it."""
    client = secret_client()
    kv_env.set_secret("other", "x")
    for _ in range(3):
        client.get_secret(SECRET)
    client.get_secret("other")
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("missing")
    client.set_secret("written", "y")
    assert (kv_env.read_count(SECRET), kv_env.read_count("other"), kv_env.read_count()) == (3, 1, 4)
    kv_env.reset_counts()
    assert (kv_env.read_count(), kv_env.token_count) == (0, 0)


def test_missing_secret_is_resource_not_found(kv_env: KeyVaultEmulator) -> None:
    """An unknown secret or version raises ResourceNotFoundError with Key Vault's SecretNotFound error."""
    client = secret_client()
    with pytest.raises(ResourceNotFoundError) as caught:
        client.get_secret("no-such-secret")
    assert caught.value.status_code == 404
    assert caught.value.error.code == "SecretNotFound"
    assert "A secret with (name/id) no-such-secret was not found in this key vault." in caught.value.message
    with pytest.raises(ResourceNotFoundError):
        client.get_secret(SECRET, version="0" * 32)


def test_outage_is_http_response_error_503(kv_env: KeyVaultEmulator) -> None:
    """While unavailable the vault answers 503: the SDK raises HttpResponseError (status 503), then recovers."""
    client = secret_client(retry_total=0)
    client.get_secret(SECRET)
    kv_env.set_available(False)
    with pytest.raises(HttpResponseError) as caught:
        client.get_secret(SECRET)
    assert caught.value.status_code == 503 and caught.value.error.code == "ServiceUnavailable"
    kv_env.set_available(True)
    assert client.get_secret(SECRET).value == "first-value"


def test_sdk_retries_503_three_times_by_default(kv_env: KeyVaultEmulator) -> None:
    """azure-core retries a 503 three times (retry_status=3), so three failures are absorbed and four are not."""
    client = secret_client(retry_backoff_factor=0.01)  # default 0.8: waits 0 + 1.6 + 3.2 s
    client.get_secret(SECRET)
    kv_env.fail_next(3, status=503)
    assert client.get_secret(SECRET).value == "first-value"
    kv_env.fail_next(4, status=503)
    with pytest.raises(HttpResponseError) as caught:
        client.get_secret(SECRET)
    assert caught.value.status_code == 503


@pytest.mark.parametrize(("status", "code"), [(429, "Throttled"), (500, "InternalServerError")])
def test_fail_next_status(kv_env: KeyVaultEmulator, status: int, code: str) -> None:
    """fail_next answers the next secret requests with the given status and a Key Vault error body."""
    client = secret_client(retry_total=0)
    kv_env.fail_next(1, status=status)
    with pytest.raises(HttpResponseError) as caught:
        client.get_secret(SECRET)
    assert (caught.value.status_code, caught.value.error.code) == (status, code)
    assert client.get_secret(SECRET).value == "first-value"


def test_dropped_connection_is_service_response_error(kv_env: KeyVaultEmulator) -> None:
    """A connection closed without an answer raises ServiceResponseError (the request may have arrived)."""
    client = secret_client(retry_total=0)
    client.get_secret(SECRET)
    kv_env.fail_next(1, drop=True)
    with pytest.raises(ServiceResponseError):
        client.get_secret(SECRET)
    assert client.get_secret(SECRET).value == "first-value"


def test_stopped_vault_is_service_request_error(kv_env: KeyVaultEmulator) -> None:
    """A vault that is gone (connection refused) raises ServiceRequestError; stop() is prompt."""
    client = secret_client(retry_total=0)
    client.get_secret(SECRET)
    started = time.monotonic()
    kv_env.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(ServiceRequestError):
        client.get_secret(SECRET)


def test_deny_is_403_forbidden(kv_env: KeyVaultEmulator) -> None:
    """deny(True) answers 403 Forbidden, as for a missing RBAC role; deny(False) lifts it."""
    client = secret_client()
    kv_env.deny(True)
    with pytest.raises(HttpResponseError) as caught:
        client.get_secret(SECRET)
    assert caught.value.status_code == 403 and caught.value.error.code == "Forbidden"
    assert kv_env.read_count() == 0
    kv_env.deny(False)
    assert client.get_secret(SECRET).value == "first-value"


def test_credential_caches_its_token(kv_env: KeyVaultEmulator) -> None:
    """One credential asks the identity endpoint once, however many reads and clients use it."""
    credential = DefaultAzureCredential()
    first = SecretClient(kv_env.vault_url, credential, verify_challenge_resource=False)
    for _ in range(5):
        first.get_secret(SECRET)
    second = SecretClient(kv_env.vault_url, credential, verify_challenge_resource=False)
    second.get_secret(SECRET)
    assert kv_env.token_count == 1
    secret_client().get_secret(SECRET)  # a new credential has an empty cache
    assert kv_env.token_count == 2


def test_user_assigned_identity_sends_client_id(kv_env: KeyVaultEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """With AZURE_CLIENT_ID set, DefaultAzureCredential asks for that user-assigned identity."""
    monkeypatch.setenv("AZURE_CLIENT_ID", "22222222-2222-2222-2222-222222222222")
    assert secret_client().get_secret(SECRET).value == "first-value"
    assert kv_env.token_requests[-1]["client_id"] == "22222222-2222-2222-2222-222222222222"


# --- raw HTTPS: TLS, challenge, tokens ----------------------------------------------------------


def test_tls_is_real(kv: KeyVaultEmulator) -> None:
    """Without the emulator's CA the certificate is refused; with the bundle the vault answers."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(kv.vault_url + "secrets/" + SECRET, timeout=5)
    response = requests.get(kv.vault_url + "secrets/" + SECRET, verify=str(kv.ca_bundle), timeout=5)
    assert response.status_code == 401
    by_name = requests.get(kv.vault_url.replace("127.0.0.1", "localhost"), verify=str(kv.ca_bundle), timeout=5)
    assert by_name.status_code == 401  # the certificate also names localhost


def test_challenge_without_token(kv: KeyVaultEmulator) -> None:
    """A request without a bearer token gets 401 with Key Vault's challenge."""
    response = requests.get(
        kv.vault_url + "secrets/" + SECRET, params={"api-version": "7.6"}, verify=str(kv.ca_bundle), timeout=5
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", '
        'resource="https://vault.azure.net"'
    )
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert response.json()["error"]["code"] == "Unauthorized"
    assert kv.read_count() == 0


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer", "bearer "],
)
def test_bad_token_is_401(kv: KeyVaultEmulator, authorization: str) -> None:
    """A token the identity endpoint did not issue gets the 401 challenge too."""
    response = requests.get(
        kv.vault_url + "secrets/" + SECRET,
        headers={"Authorization": authorization},
        verify=str(kv.ca_bundle),
        timeout=5,
    )
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == CHALLENGE


def test_issued_token_is_served(kv: KeyVaultEmulator) -> None:
    """A bearer token from the identity endpoint reads the secret; a token for another audience does not."""
    url = kv.vault_url + "secrets/" + SECRET + "/"
    good = requests.get(url, headers={"Authorization": "Bearer " + token(kv)}, verify=str(kv.ca_bundle), timeout=5)
    assert good.status_code == 200
    body = good.json()
    assert body["value"] == "first-value"
    assert set(body["attributes"]) >= {"enabled", "created", "updated", "recoveryLevel"}
    foreign = token(kv, resource="https://management.azure.com")
    wrong = requests.get(url, headers={"Authorization": "Bearer " + foreign}, verify=str(kv.ca_bundle), timeout=5)
    assert wrong.status_code == 401 and "audience" in wrong.json()["error"]["message"]


def test_expired_token_is_401() -> None:
    """A token past its expires_on is refused."""
    with KeyVaultEmulator(token_lifetime=0) as emulator:
        emulator.set_secret(SECRET, "v")
        response = requests.get(
            emulator.vault_url + "secrets/" + SECRET,
            headers={"Authorization": "Bearer " + token(emulator)},
            verify=str(emulator.ca_bundle),
            timeout=5,
        )
        assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_identity_endpoint_answers_the_app_service_protocol(kv: KeyVaultEmulator) -> None:
    """A correct request gets access_token, expires_on (epoch seconds as a string), resource and token_type."""
    started = int(time.time())
    response = requests.get(
        kv.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net", "client_id": "abc"},
        headers={"X-IDENTITY-HEADER": kv.identity_header},
        timeout=5,
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["access_token"] and body["token_type"] == "Bearer"
    assert body["resource"] == "https://vault.azure.net" and body["client_id"] == "abc"
    assert isinstance(body["expires_on"], str) and int(body["expires_on"]) >= started + 3600
    assert kv.token_count == 1


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}, 400),
        ({"X-IDENTITY-HEADER": "wrong"}, {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}, 401),
        (None, {"api-version": "2017-09-01", "resource": "https://vault.azure.net"}, 400),
        (None, {"api-version": "2019-08-01"}, 400),
    ],
    ids=["no-header", "wrong-header", "old-api-version", "no-resource"],
)
def test_identity_endpoint_refuses_bad_requests(
    kv: KeyVaultEmulator, headers: dict[str, str] | None, params: dict[str, str], status: int
) -> None:
    """Missing or wrong X-IDENTITY-HEADER, api-version or resource issues no token."""
    sent = {"X-IDENTITY-HEADER": kv.identity_header} if headers is None else headers
    response = requests.get(kv.identity_endpoint, params=params, headers=sent, timeout=5)
    assert response.status_code == status
    assert response.json()["statusCode"] == status and response.json()["message"]
    assert kv.token_count == 0


def test_given_workdir_holds_the_bundle(tmp_path: Path) -> None:
    """With a workdir the CA files are written there and kept after stop()."""
    with KeyVaultEmulator(workdir=tmp_path) as emulator:
        assert emulator.ca_bundle.parent == tmp_path
    assert emulator.ca_bundle.exists() and emulator.ca_pem.exists()


def test_main_runs_standalone(tmp_path: Path) -> None:
    """`python -m devstack.keyvault_emulator` prints its environ() as a ready line and serves seeded secrets."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.keyvault_emulator", "--workdir", str(tmp_path), "--secret", "name=value"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        env = read_ready_line(proc.stdout, "keyvault-emulator", timeout=20)
        issued = requests.get(
            env["IDENTITY_ENDPOINT"],
            params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
            headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]},
            timeout=5,
        ).json()["access_token"]
        response = requests.get(
            env["KEY_VAULT_URL"] + "secrets/name",
            headers={"Authorization": "Bearer " + issued},
            verify=env["REQUESTS_CA_BUNDLE"],
            timeout=5,
        )
        assert response.json()["value"] == "value"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
