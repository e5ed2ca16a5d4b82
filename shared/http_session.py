"""HTTP sessions that read the process environment once, for the one service each talks to.

A default `requests.Session` has `trust_env` on: every request looks up each `*_PROXY` / `NO_PROXY`
variable, `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` and `~/.netrc` again (requests `sessions.py`,
`Session.merge_environment_settings` and `utils.get_environ_proxies`), which costs more the more
app settings an instance has. These sessions take the same proxies and CA bundle once and turn
`trust_env` off. No `.netrc`: every request here carries its own auth header.
"""

from __future__ import annotations

import os

import requests
from requests.adapters import HTTPAdapter


def ca_bundle() -> str | bool:
    """The CA bundle requests would pick: `REQUESTS_CA_BUNDLE`, then `CURL_CA_BUNDLE`, else its own (True)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def new_session(*, pool_size: int, pool_connections: int = 1) -> requests.Session:
    """A session with `trust_env` off and the CA bundle fixed; `route_for` sets its proxies."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_connections, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.verify = ca_bundle()
    session.trust_env = False
    return session


def route_for(session: requests.Session, url: str) -> requests.Session:
    """Give `session` the proxies the environment names for `url` (none when `NO_PROXY` matches it)."""
    session.proxies = requests.utils.get_environ_proxies(url)
    return session
