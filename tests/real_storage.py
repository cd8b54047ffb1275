"""Fixtures for the real Supabase Storage server (v1.70.6) on loopback.

The session's server comes from, in order:

1. the environment ``scripts/test.sh`` (or ``devstack.storage_server env``) exports:
   GENJOBS_TEST_SUPABASE_URL, GENJOBS_TEST_STORAGE_SERVICE_KEY, GENJOBS_TEST_STORAGE_JWT_SECRET,
   GENJOBS_TEST_STORAGE_DSN (and GENJOBS_TEST_STORAGE_UPSTREAM_URL, GENJOBS_TEST_STORAGE_ANON_KEY);
2. an instance this session starts through :mod:`devstack.storage_server` when the server is
   built in the cache or its tarball is there to build from, and a PostgreSQL is at hand; it is
   stopped when the session ends;
3. otherwise the tests that need it are skipped, the reason naming what is missing.

Tests never share data: each gets fresh buckets (:meth:`RealStorage.create_bucket`) or, in the
production bucket ``workspace-temp`` whose row policies name it, a fresh user folder.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import storage_build, storage_server
from devstack.storage_proxy import StorageProxy
from devstack.storage_standin import CONTRACT_BUCKETS
from devstack.tokens import user_token
from genjobs.storage.supabase import SupabaseStorage

WORKSPACE_BUCKET = "workspace-temp"
WORKSPACE_MIME_TYPES = CONTRACT_BUCKETS[WORKSPACE_BUCKET].allowed_mime_types or ()


@dataclass(frozen=True)
class RealStorage:
    """One running server: its ``/storage/v1`` URL, keys and database."""

    url: str
    upstream_url: str
    service_key: str
    anon_key: str
    jwt_secret: str
    dsn: str

    @property
    def storage_url(self) -> str:
        return f"{self.url}/storage/v1"

    def user_token(self, user_id: str, *, ttl_s: int = 3600) -> str:
        """A signed-in user's access token (HS256, ``sub`` the user, role authenticated)."""
        return user_token(user_id, self.jwt_secret, ttl_s=ttl_s)

    def headers(self, key: str | None = None) -> dict[str, str]:
        token = key if key is not None else self.service_key
        return {"apikey": token, "Authorization": f"Bearer {token}"}

    def create_bucket(
        self,
        prefix: str = "t",
        *,
        public: bool = False,
        file_size_limit: int | None = None,
        allowed_mime_types: tuple[str, ...] | None = WORKSPACE_MIME_TYPES,
    ) -> str:
        """Creates a bucket with a fresh name through the bucket API and returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {"id": name, "name": name, "public": public}
        if file_size_limit is not None:
            body["file_size_limit"] = file_size_limit
        if allowed_mime_types is not None:
            body["allowed_mime_types"] = list(allowed_mime_types)
        response = httpx.post(
            f"{self.storage_url}/bucket", json=body, headers=self.headers(), timeout=30
        )
        if response.status_code != 200:
            raise AssertionError(f"creating bucket {name} answered {response.text}")
        return name

    def backend(self, url: str | None = None, **options: Any) -> SupabaseStorage:
        """The backend as production builds it, on this server (or on ``url``, a proxy)."""
        options.setdefault("timeout", 30.0)
        return SupabaseStorage.from_supabase(url or self.url, self.service_key, **options)

    def object_row(self, bucket: str, path: str) -> dict[str, Any] | None:
        """The ``storage.objects`` row of an object, read straight from the database."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            row = conn.execute(
                "select name, bucket_id, metadata, owner_id from storage.objects"
                " where bucket_id = %s and name = %s",
                (bucket, path),
            ).fetchone()
        return dict(row) if row else None

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in a bucket (starting with ``prefix``), from the database, sorted."""
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "select name from storage.objects where bucket_id = %s"
                " and starts_with(name, %s) order by name",
                (bucket, prefix),
            ).fetchall()
        return [str(row[0]) for row in rows]


def _from_environment() -> RealStorage | None:
    env = os.environ
    names = (
        storage_server.ENV_URL,
        storage_server.ENV_SERVICE_KEY,
        storage_server.ENV_JWT_SECRET,
        storage_server.ENV_DSN,
    )
    if not all(env.get(name) for name in names):
        return None
    url = env[storage_server.ENV_URL].rstrip("/")
    return RealStorage(
        url=url,
        upstream_url=env.get(storage_server.ENV_UPSTREAM, ""),
        service_key=env[storage_server.ENV_SERVICE_KEY],
        anon_key=env.get(storage_server.ENV_ANON_KEY, ""),
        jwt_secret=env[storage_server.ENV_JWT_SECRET],
        dsn=env[storage_server.ENV_DSN],
    )


def _missing_for_a_session_instance() -> str | None:
    """Why this session cannot start a server of its own, or None when it can."""
    if storage_build.existing_build() is None:
        tarball = storage_build.default_tarball()
        if not tarball.is_file():
            return (
                f"no built storage server in {storage_build.default_cache()} and no tarball at "
                f"{tarball} (set GENJOBS_STORAGE_CACHE or GENJOBS_STORAGE_TARBALL)"
            )
        if shutil.which("npm") is None:
            return "the storage server is not built and npm is not installed to build it"
    if not os.environ.get("GENJOBS_TEST_PG_DSN"):
        return (
            "no PostgreSQL for the storage server: set GENJOBS_TEST_PG_DSN "
            '(eval "$(bash scripts/start_postgres.sh)")'
        )
    return None


@pytest.fixture(scope="session")
def real_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStorage]:
    """The real storage server for this session (see the module docstring)."""
    found = _from_environment()
    if found is not None:
        yield found
        return
    missing = _missing_for_a_session_instance()
    if missing is not None:
        pytest.skip(f"Real Supabase Storage server unavailable: {missing}")
    folder: Path = tmp_path_factory.mktemp("storage-instance")
    instance = storage_server.start(folder)
    try:
        yield RealStorage(
            url=instance.url,
            upstream_url=instance.upstream_url,
            service_key=instance.service_key,
            anon_key=instance.anon_key,
            jwt_secret=instance.jwt_secret,
            dsn=instance.dsn,
        )
    finally:
        storage_server.stop(folder)


@pytest.fixture
def real_bucket(real_storage: RealStorage) -> str:
    """A fresh private bucket with the production MIME allow-list."""
    return real_storage.create_bucket()


@pytest.fixture
def workspace_user() -> str:
    """A fresh user id: its folder in ``workspace-temp`` is this test's alone."""
    return str(uuid.uuid4())


@pytest.fixture
def real_backend(real_storage: RealStorage) -> Iterator[SupabaseStorage]:
    """``SupabaseStorage.from_supabase`` on the real server, through the ``/storage/v1`` proxy."""
    with real_storage.backend() as backend:
        yield backend


@pytest.fixture
def fault_proxy(real_storage: RealStorage) -> Iterator[StorageProxy]:
    """A ``/storage/v1`` proxy of this test's own in front of the real server, for faults."""
    if not real_storage.upstream_url:
        pytest.skip("GENJOBS_TEST_STORAGE_UPSTREAM_URL is not set: no server to put a proxy before")
    with StorageProxy(real_storage.upstream_url) as proxy:
        yield proxy


def storage_error_body(response: httpx.Response) -> tuple[int, str, str]:
    """(HTTP status, body statusCode, body error) of a storage error answer."""
    body = json.loads(response.text)
    return response.status_code, str(body.get("statusCode")), str(body.get("error"))


BucketFactory = Callable[..., str]
