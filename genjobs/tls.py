"""One verifying TLS context per process for the project's own HTTP clients.

Building a context reads the CA bundle (about 20 ms); a client made per task run would pay that
on every job. The context honours ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` as httpx does.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's shared, verifying TLS context (pass it as ``verify=`` to httpx)."""
    return httpx.create_ssl_context()
