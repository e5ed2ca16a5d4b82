"""devstack/environment.py: the app settings of every local run, and the variables no local run inherits."""

from __future__ import annotations

import pytest
from azure.identity import _constants as identity_constants

from devstack.environment import (
    CREDENTIAL_VARIABLES,
    LOCAL_GUARD_SCHEDULE,
    child_environ,
    emulator_app_settings,
    steering_variables,
)
from shared.settings import Settings


def test_every_variable_azure_identity_reads_is_stripped():
    """azure-identity's own list (`azure/identity/_constants.py`, `EnvironmentVariables`): a new release that
    reads one more variable fails here until CREDENTIAL_VARIABLES names it."""
    known = {
        value
        for name, value in vars(identity_constants.EnvironmentVariables).items()
        if name.isupper() and isinstance(value, str)
    }
    assert known - set(CREDENTIAL_VARIABLES) == set()


@pytest.mark.parametrize(
    "name",
    ["AZURE_CLIENT_SECRET", "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT", "MSI_ENDPOINT", "HTTPS_PROXY", "no_proxy"],
)
def test_a_child_inherits_no_credential_or_proxy_variable(name: str):
    environ = child_environ({}, environ={name: "https://elsewhere.example", "PATH": "/usr/bin"})
    assert environ == {"PATH": "/usr/bin"}
    assert steering_variables({name: "x", "HOME": "/root"}) == [name]


def test_the_settings_point_at_the_emulators_and_validate():
    vault = {"KEY_VAULT_URL": "https://127.0.0.1:8443", "IDENTITY_ENDPOINT": "http://127.0.0.1:8444/token"}
    settings = emulator_app_settings(
        key_vault=vault, openai_endpoint="http://127.0.0.1:9000", storage="UseDevelopmentStorage=true"
    )
    environ = child_environ(settings, environ={"AZURE_CLIENT_SECRET": "real-secret", "IDENTITY_ENDPOINT": "imds"})
    assert environ["IDENTITY_ENDPOINT"] == "http://127.0.0.1:8444/token"  # the emulator's, not the machine's
    assert "AZURE_CLIENT_SECRET" not in environ
    assert environ["GUARD_SCHEDULE"] == LOCAL_GUARD_SCHEDULE
    loaded = Settings.from_environ(environ)
    assert (loaded.requests_queue, loaded.key_secret_name) == ("cancel-requests", "azure-openai-api-key")
