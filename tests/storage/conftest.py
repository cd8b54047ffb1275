"""Storage fixtures on the real Supabase Storage server (see tests/real_storage.py): official
``storage3`` clients and the backend, each test in buckets of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from storage3 import SyncStorageClient

from genjobs.storage.supabase import SupabaseStorage
from tests.real_storage import RealStorage

ClientFactory = Callable[..., SyncStorageClient]


@pytest.fixture
def make_client(real_storage: RealStorage) -> Iterator[ClientFactory]:
    """Builds official ``storage3`` clients: ``make_client(token=None, base="storage")``.

    ``base="storage"`` points at ``{url}/storage/v1/`` like a Supabase project, ``"root"`` at the
    server itself. Without a token the client uses the service-role key.
    """
    http_clients: list[httpx.Client] = []

    def build(
        token: str | None = None, *, base: str = "storage", timeout: float = 30.0
    ) -> SyncStorageClient:
        root = real_storage.storage_url if base == "storage" else real_storage.upstream_url
        http_client = httpx.Client(timeout=timeout)
        http_clients.append(http_client)
        return SyncStorageClient(root + "/", real_storage.headers(token), http_client=http_client)

    yield build
    for http_client in http_clients:
        http_client.close()


@pytest.fixture
def service_client(make_client: ClientFactory) -> SyncStorageClient:
    return make_client()


@pytest.fixture
def storage(real_storage: RealStorage) -> Iterator[SupabaseStorage]:
    """The backend as production builds it: ``from_supabase(url, service_key)``."""
    with real_storage.backend() as backend:
        yield backend
