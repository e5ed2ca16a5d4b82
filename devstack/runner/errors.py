"""The one error the local runner raises for an app or configuration it cannot run."""

from __future__ import annotations


class RunnerError(Exception):
    """The app or its configuration cannot be run: an unresolved setting, an unsupported binding or route."""
