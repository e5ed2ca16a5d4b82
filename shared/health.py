"""The health check: are the settings valid? It contacts neither Key Vault nor upstream."""

from __future__ import annotations

from typing import Any

from shared import __version__
from shared.settings import SettingsError, load_settings


def health() -> tuple[int, dict[str, Any]]:
    """200 with the version when the settings are valid, else 503 naming the bad setting (no value)."""
    try:
        load_settings()
    except SettingsError as err:
        return 503, {
            "status": "unhealthy",
            "version": __version__,
            "error": {"code": "serviceUnavailable", "message": str(err), "target": err.name},
        }
    return 200, {"status": "ok", "version": __version__}
