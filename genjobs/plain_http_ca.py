"""A one-certificate CA file for Prefect API clients that talk plain HTTP.

Every Prefect API client builds a verifying TLS context from ``PREFECT_API_SSL_CERT_FILE``
(default: certifi's bundle of about 150 certificates, some 16 ms of CPU to read, and a few
hundred KiB of OpenSSL memory), also for an ``http://`` API, where no TLS handshake ever happens.
A forked flow run opens about nine such clients; a worker opens some for every run it starts,
and the memory they leave behind grew a process worker from 95 to 215 MiB over 1,000 jobs.
With a plain-HTTP API the file is never used for a handshake, so a small one serves.

The rule lives here once: the warm runner applies it to each forked run's environment
(:func:`spare_ca_bundle_reads`), the project's worker to its own settings
(entrypoints/flow_worker.py). An ``https://`` API, a file the operator set, or
``PREFECT_API_TLS_INSECURE_SKIP_VERIFY`` leave the setting as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path

logger = logging.getLogger(__name__)

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"
_TRUE = ("1", "true")


def spares_bundle(api_url: str | None, cert_file: str | None, skip_verify: bool) -> bool:
    """Whether clients of the API at ``api_url`` may read the small file instead of the bundle:
    the API is plain HTTP, and the operator set neither a CA file nor skip-verify."""
    return (
        bool(api_url)
        and str(api_url).lower().startswith("http://")
        and not (cert_file or skip_verify)
    )


def write_plain_http_ca_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, holding one public root certificate (the first of certifi's bundle);
    ``None`` when it cannot be written (its staging file is then removed, nothing else)."""
    import certifi

    bundle = Path(certifi.where()).read_text()
    start = bundle.find(_BEGIN)
    end = bundle.find(_END, start)
    if start < 0 or end < 0:
        return None
    target = folder / name
    staging = folder / f".{name}.{os.getpid()}"
    try:
        staging.write_text(bundle[start : end + len(_END)] + "\n")
        staging.chmod(0o600)
        staging.replace(target)
    except OSError as exc:
        with contextlib.suppress(OSError):  # also where the folder is missing or not one
            staging.unlink()
        logger.warning("The CA file %s could not be written: %s", target, exc)
        return None
    return target


def spare_ca_bundle_reads(environ: MutableMapping[str, str], ca_file: Path | None) -> bool:
    """Point a run's Prefect API clients at ``ca_file`` where its environment's API is plain
    HTTP and the operator set no CA file or skip-verify; whether it did."""
    if ca_file is None or not ca_file.is_file():
        return False
    skip_verify = environ.get("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "").lower() in _TRUE
    if not spares_bundle(
        environ.get("PREFECT_API_URL"), environ.get("PREFECT_API_SSL_CERT_FILE"), skip_verify
    ):
        return False
    environ["PREFECT_API_SSL_CERT_FILE"] = str(ca_file)
    return True
