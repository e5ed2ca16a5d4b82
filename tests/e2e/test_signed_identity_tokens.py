"""The local stack's keyless resource checks identity tokens in another process: signed tokens, checked offline.

`make run` starts the Key Vault emulator (whose identity endpoint issues the app's tokens) and the
keyless simulator as separate processes sharing one signing key (devstack/stack.py `serve_simulator`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from devstack.keyvault_emulator import KeyVaultEmulator, signed_token, verify_signed_token
from devstack.openai_sim import FineTuningSimulator
from devstack.stack import COGNITIVE_SERVICES_AUDIENCE
from tests.support.identity import token as issued_token  # a token from the identity endpoint, by hand

pytestmark = pytest.mark.e2e

KEY = b"k" * 32
NOW = 1_800_000_000


@pytest.fixture
def signing_vault() -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(token_signing_key=KEY) as emulator:
        yield emulator


def tampered(token: str) -> str:
    claims, _, signature = token.partition(".")
    return f"{claims[:-2]}{'A' if claims[-2] != 'A' else 'B'}{claims[-1]}.{signature}"


@pytest.mark.parametrize(
    ("token", "key", "audience", "accepted"),
    [
        (signed_token(KEY, audience="https://cognitiveservices.azure.com", expires_on=NOW + 60), KEY,
         "https://cognitiveservices.azure.com", True),
        (signed_token(KEY, audience="https://cognitiveservices.azure.com/", expires_on=NOW + 60), KEY,
         "https://cognitiveservices.azure.com", True),  # a trailing / is the same audience
        (signed_token(KEY, audience="https://vault.azure.net", expires_on=NOW + 60), KEY,
         "https://cognitiveservices.azure.com", False),  # another audience
        (signed_token(KEY, audience="https://cognitiveservices.azure.com", expires_on=NOW), KEY,
         "https://cognitiveservices.azure.com", False),  # expired
        (signed_token(b"another key", audience="https://cognitiveservices.azure.com", expires_on=NOW + 60), KEY,
         "https://cognitiveservices.azure.com", False),  # signed by someone else
        (tampered(signed_token(KEY, audience="https://cognitiveservices.azure.com", expires_on=NOW + 60)), KEY,
         "https://cognitiveservices.azure.com", False),
        ("not-a-token", KEY, "https://cognitiveservices.azure.com", False),
        ("", KEY, "https://cognitiveservices.azure.com", False),
    ],
)
def test_a_signed_token_is_accepted_only_for_its_audience_its_key_and_before_it_expires(
    token: str, key: bytes, audience: str, accepted: bool
):
    assert verify_signed_token(token, key=key, audience=audience, now=NOW) is accepted


def test_the_identity_endpoint_issues_signed_tokens_that_the_vault_itself_still_takes(signing_vault: KeyVaultEmulator):
    cognitive = issued_token(signing_vault, COGNITIVE_SERVICES_AUDIENCE)
    vault_token = issued_token(signing_vault, "https://vault.azure.net")

    assert verify_signed_token(cognitive, key=KEY, audience=COGNITIVE_SERVICES_AUDIENCE)
    assert not verify_signed_token(vault_token, key=KEY, audience=COGNITIVE_SERVICES_AUDIENCE)
    assert signing_vault.verify_token(cognitive, audience=COGNITIVE_SERVICES_AUDIENCE)
    secret = requests.get(
        f"{signing_vault.vault_url}secrets/missing",
        params={"api-version": "7.4"},
        headers={"Authorization": f"Bearer {vault_token}"},
        verify=str(signing_vault.ca_bundle),
        timeout=10,
    )
    assert secret.status_code == 404  # past the challenge: the vault took its own signed token


def test_a_keyless_simulator_with_the_signing_key_takes_the_endpoints_tokens_and_refuses_keys(
    signing_vault: KeyVaultEmulator,
):
    with FineTuningSimulator(
        api_key="unused",
        key_access_disabled=True,
        token_verifier=lambda token: verify_signed_token(token, key=KEY, audience=COGNITIVE_SERVICES_AUDIENCE),
    ) as keyless:
        job = keyless.create_job(status="running")["id"]
        url = f"{keyless.endpoint}/openai/fine_tuning/jobs/{job}/cancel"
        params = {"api-version": "2024-10-21"}

        by_key = requests.post(url, params=params, headers={"api-key": "unused"}, timeout=10)
        by_vault_token = requests.post(
            url, params=params, headers={"Authorization": f"Bearer {issued_token(signing_vault, 'https://vault.azure.net')}"},
            timeout=10,
        )
        by_token = requests.post(
            url, params=params,
            headers={"Authorization": f"Bearer {issued_token(signing_vault, COGNITIVE_SERVICES_AUDIENCE)}"},
            timeout=10,
        )

    assert (by_key.status_code, by_key.json()["error"]["code"]) == (403, "AuthenticationTypeDisabled")
    assert by_vault_token.status_code == 401
    assert (by_token.status_code, by_token.json()["status"]) == (200, "cancelled")
