"""Loopback addresses for tests of services that are not there."""

from __future__ import annotations

import socket


def closed_port() -> int:
    """A loopback port nothing listens on (bound for a moment to find a free one, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
