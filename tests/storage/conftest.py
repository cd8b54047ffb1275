"""Storage fixtures: one Supabase Storage stand-in per test module, fresh buckets per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from storage3 import SyncStorageClient

from devstack.storage_standin import StorageStandIn
from genjobs.storage.supabase import SupabaseStorage

JWT_SECRET = "storage-tests-jwt-secret-0123456789abcdef"
TEST_BUCKETS = ("workspace-temp", "user-library", "sdxl_image_fast")

ClientFactory = Callable[..., SyncStorageClient]


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StorageStandIn]:
    """The stand-in, started once per module (a few milliseconds)."""
    with StorageStandIn(JWT_SECRET, hang_seconds=2.0) as running:
        yield running


@pytest.fixture
def standin(standin_server: StorageStandIn) -> StorageStandIn:
    """The module's stand-in with no faults, an empty log and fresh contract buckets."""
    standin_server.reset()
    standin_server.create_contract_buckets(TEST_BUCKETS)
    return standin_server


@pytest.fixture
def make_client(standin: StorageStandIn) -> Iterator[ClientFactory]:
    """Builds official ``storage3`` clients: ``make_client(token=None, base="storage")``.

    ``base="storage"`` points at ``{url}/storage/v1/`` like a Supabase project, ``"root"`` at the
    bare server routes. Without a token the client uses a service-role key.
    """
    http_clients: list[httpx.Client] = []

    def build(
        token: str | None = None, *, base: str = "storage", timeout: float = 5.0
    ) -> SyncStorageClient:
        root = standin.storage_url if base == "storage" else standin.url
        key = token if token is not None else standin.token()
        http_client = httpx.Client(timeout=timeout)
        http_clients.append(http_client)
        headers = {"apiKey": key, "Authorization": f"Bearer {key}"}
        return SyncStorageClient(root + "/", headers, http_client=http_client)

    yield build
    for http_client in http_clients:
        http_client.close()


@pytest.fixture
def service_client(make_client: ClientFactory) -> SyncStorageClient:
    return make_client()


@pytest.fixture
def storage(standin: StorageStandIn) -> Iterator[SupabaseStorage]:
    """The backend as production builds it: ``from_supabase(url, service_key)``."""
    with SupabaseStorage.from_supabase(standin.url, standin.token(), timeout=5.0) as backend:
        yield backend
