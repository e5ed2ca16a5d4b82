"""The app settings that point the function app at the local emulators, and the environment it must not inherit.

Every way of running the app locally (`make run`, the chaos run, the unit and end-to-end tests, the
benchmark's workers) builds its settings with `emulator_app_settings()` and starts from an environment
without `STEERING_VARIABLES`, so a machine with `AZURE_CLIENT_SECRET` or a proxy set behaves as a clean one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from shared.settings import (
    AZURE_OPENAI_ENDPOINT,
    AZURE_OPENAI_KEY_SECRET_NAME,
    AZURE_WEB_JOBS_STORAGE,
    CANCEL_REQUESTS_QUEUE,
    CANCEL_RESULTS_QUEUE,
    GUARD_SCHEDULE,
    SETTING_DEFAULTS,
)

SECRET_NAME = SETTING_DEFAULTS[AZURE_OPENAI_KEY_SECRET_NAME]  # the Key Vault secret the emulator holds the api-key in
REQUESTS_QUEUE = SETTING_DEFAULTS[CANCEL_REQUESTS_QUEUE]
RESULTS_QUEUE = SETTING_DEFAULTS[CANCEL_RESULTS_QUEUE]
# The guard's timer schedule, as infra/ sets it: the host refuses the timer trigger when %GUARD_SCHEDULE% is unset.
LOCAL_GUARD_SCHEDULE = "0 */5 * * * *"

# Every variable azure-identity 1.27 reads to choose or configure a credential: the names of
# `azure/identity/_constants.py` `EnvironmentVariables`, read by `_credentials/default.py`
# (`DefaultAzureCredential.__init__`: AZURE_TOKEN_CREDENTIALS picks the chain, the tenant and client ids),
# `_credentials/environment.py` (`EnvironmentCredential`: a secret, a certificate or a password),
# `_credentials/managed_identity.py` (`ManagedIdentityCredential`: which endpoint answers) and
# `_credentials/workload_identity.py` (a federated token file, the AKS token proxy); plus
# SYSTEM_OIDCREQUESTURI of `_credentials/azure_pipelines.py`. Any of them set on the developer's machine
# would sign the app in elsewhere than the Key Vault emulator's identity endpoint (whose IDENTITY_ENDPOINT
# and IDENTITY_HEADER `KeyVaultEmulator.environ()` sets again).
CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_AUTHORITY_HOST",
    "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH",
    "AZURE_REGIONAL_AUTHORITY_NAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_KUBERNETES_SNI_NAME",
    "AZURE_KUBERNETES_TOKEN_PROXY",
    "AZURE_KUBERNETES_CA_FILE",
    "AZURE_KUBERNETES_CA_DATA",
    "AZURE_TOKEN_CREDENTIALS",
    "SYSTEM_OIDCREQUESTURI",
)
# Proxies, in either case (urllib's getproxies reads both): loopback traffic to the emulators must go direct.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def steering_variables(environ: Mapping[str, str]) -> list[str]:
    """The names in `environ` that would sign the app in elsewhere or send its loopback traffic through a proxy."""
    return [name for name in environ if name in CREDENTIAL_VARIABLES or name.lower() in PROXY_VARIABLES]


def emulator_app_settings(
    *,
    key_vault: Mapping[str, str],
    openai_endpoint: str,
    storage: str,
    requests_queue: str = REQUESTS_QUEUE,
    results_queue: str = RESULTS_QUEUE,
) -> dict[str, str]:
    """CONTRACT section 1's settings pointed at the emulators: `key_vault` is `KeyVaultEmulator.environ()`
    (the vault, its identity endpoint and CA bundle), `storage` Azurite's connection string.

    Callers lay their own tuning over it (`{**emulator_app_settings(...), UPSTREAM_TIMEOUT_SECONDS: "1"}`).
    """
    return {
        **key_vault,
        AZURE_OPENAI_ENDPOINT: openai_endpoint,
        AZURE_OPENAI_KEY_SECRET_NAME: SECRET_NAME,
        AZURE_WEB_JOBS_STORAGE: storage,
        CANCEL_REQUESTS_QUEUE: requests_queue,
        CANCEL_RESULTS_QUEUE: results_queue,
        GUARD_SCHEDULE: LOCAL_GUARD_SCHEDULE,
    }


def child_environ(settings: Mapping[str, str], *, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process that runs the app: this one's minus `steering_variables`, then `settings`."""
    inherited = os.environ if environ is None else environ
    steering = set(steering_variables(inherited))
    return {**{name: value for name, value in inherited.items() if name not in steering}, **settings}
