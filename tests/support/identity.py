"""Tokens from the Key Vault emulator's managed-identity endpoint, fetched by hand as a test needs them."""

from __future__ import annotations

import requests

from devstack.keyvault_emulator import KeyVaultEmulator


def token(kv: KeyVaultEmulator, resource: str = "https://vault.azure.net") -> str:
    """Fetch a token from the identity endpoint by hand."""
    response = requests.get(
        kv.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": resource},
        headers={"X-IDENTITY-HEADER": kv.identity_header},
        timeout=5,
    )
    response.raise_for_status()
    return response.json()["access_token"]
