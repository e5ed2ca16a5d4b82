"""The Key Vault emulator's TLS: a CA of its own, the vault's certificate, and a CA bundle that trusts both.

The bundle is the CA bundle this process trusts now (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, certifi,
OpenSSL's) with the emulator's CA added, so a client pointed at it still reaches real services.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trustme

CA_FILE = "emulator-ca.pem"
BUNDLE_FILE = "ca-bundle.pem"


def system_ca_bundle(*, exclude: Path | None = None) -> Path | None:
    """Return the CA bundle this process trusts now (REQUESTS_CA_BUNDLE, SSL_CERT_FILE, certifi, OpenSSL)."""
    candidates = [os.environ.get("REQUESTS_CA_BUNDLE"), os.environ.get("SSL_CERT_FILE")]
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    candidates.append(ssl.get_default_verify_paths().cafile)
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        path = Path(candidate).resolve()
        if exclude is None or path != exclude.resolve():  # never build on our own previous bundle
            return path
    return None


def server_context(workdir: Path) -> tuple[ssl.SSLContext, Path, Path]:
    """A TLS server context for 127.0.0.1 and localhost; writes the CA and the bundle into `workdir`.

    Returns the context, the CA's PEM file and the bundle's.
    """
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(context)
    ca_pem = workdir / CA_FILE
    ca.cert_pem.write_to_path(str(ca_pem))
    bundle = workdir / BUNDLE_FILE
    base = system_ca_bundle(exclude=bundle)
    base_pem = base.read_bytes() if base is not None else b""
    bundle.write_bytes(base_pem.rstrip(b"\n") + b"\n" + ca.cert_pem.bytes())
    return context, ca_pem, bundle
