"""Backfill and cleanup fixtures: the real storage server seeded with legacy objects in every
layout.

The seed writes its own expectations (target path, outcome) next to each object, from the
contract's layout table rather than from the parser under test.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from pydantic import SecretStr

from devstack.databases import scratch_database
from devstack.storage_proxy import StorageProxy
from devstack.storage_standin import CONTRACT_BUCKETS
from genjobs.settings import Settings
from genjobs.storage.local import LocalFolderStorage
from tests.real_storage import RealStorage

TARGET = "workspace-temp"
SEED_START = datetime(2025, 8, 8, 9, 0, tzinfo=UTC)
LEGACY_PRESENT = (
    "sdxl_image_fast",
    "sdxl_image_high",
    "image_fast",
    "image_high",
    "image7b_fast_enhanced",
    "image7b_high_enhanced",
    "video_fast",
    "video_high",
    "video7b_fast_enhanced",
    "video7b_high_enhanced",
)
"""Every legacy bucket but ``videos``, which the seed leaves missing (404)."""

VIDEO_FRAMES = 9
VIDEO_SIZE = (48, 64)


def seed_uuid(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(p) for p in parts)))


def png_bytes(number: int, size: tuple[int, int] = (16, 12)) -> bytes:
    """A small PNG whose colour (and so bytes) is unique per number."""
    color = (number % 251, (number * 7) % 253, (number * 13) % 255)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def frame_level(index: int) -> int:
    """Grey level of frame ``index`` of the seeded videos (the middle frame is 4 -> 130)."""
    return 10 + index * 30


def mp4_bytes(variant: int) -> bytes:
    """A 9-frame H.264 clip, 48x64, each frame one grey level (plus a variant tint)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(VIDEO_FRAMES):
            pixels = np.full((VIDEO_SIZE[1], VIDEO_SIZE[0], 3), frame_level(index), np.uint8)
            pixels[..., 2] = min(255, frame_level(index) + variant * 5)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@dataclass
class Seeded:
    """One seeded legacy object and what the backfill should make of it.

    ``outcome``: ``copied``, ``duplicate``, ``collision``, ``already_present``, ``conflict``,
    ``unmappable`` or ``folder``; ``target`` is the contract path for mappable ones.
    """

    bucket: str
    path: str
    data: bytes
    content_type: str
    outcome: str
    target: str | None = None
    created_at: datetime = SEED_START
    thumbnail: bool = True

    @property
    def key(self) -> str:
        return f"{self.bucket}/{self.path}"

    @property
    def is_video(self) -> bool:
        return self.path.endswith(".mp4")

    @property
    def thumbnail_target(self) -> str | None:
        return None if self.target is None else self.target.rsplit(".", 1)[0] + ".thumb.webp"


@dataclass
class LegacySeed:
    """Everything the seed wrote: legacy objects and pre-existing target objects."""

    objects: list[Seeded] = field(default_factory=list)
    preexisting: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def by_outcome(self, *outcomes: str) -> list[Seeded]:
        return [o for o in self.objects if o.outcome in outcomes]

    def created_targets(self) -> dict[str, Seeded]:
        """Target path -> source, for every target the backfill itself should write."""
        return {o.target: o for o in self.by_outcome("copied") if o.target}

    def created_thumbnails(self) -> set[str]:
        made = set()
        for obj in self.by_outcome("copied", "already_present"):
            thumb = obj.thumbnail_target
            if obj.thumbnail and thumb and thumb not in self.preexisting:
                made.add(thumb)
        return made

    def mappable(self) -> list[Seeded]:
        return [o for o in self.objects if o.target is not None]


def build_seed(users: int = 12) -> LegacySeed:
    """About 190 mappable legacy objects in every layout, plus every kind of misfit."""
    seed = LegacySeed()
    counter = iter(range(1, 100_000))
    moment = iter(SEED_START + timedelta(minutes=i) for i in range(100_000))
    videos = [mp4_bytes(v) for v in range(3)]

    def add(
        bucket: str,
        path: str,
        outcome: str,
        target: str | None = None,
        data: bytes | None = None,
        content_type: str = "image/png",
        thumbnail: bool = True,
    ) -> Seeded:
        number = next(counter)
        if data is None:
            data = videos[number % 3] if path.endswith(".mp4") else png_bytes(number)
        obj = Seeded(bucket, path, data, content_type, outcome, target, next(moment), thumbnail)
        seed.objects.append(obj)
        return obj

    def ts() -> int:
        return 1754550000 + next(counter)

    for u in range(users):
        user = seed_uuid("user", u)
        for j in range(3):
            job = seed_uuid("image_fast", u, j)
            add("image_fast", f"{user}/job_{job}_{ts()}.png", "copied", f"{user}/{job}/0.png")
        for j in range(2):
            job = seed_uuid("image_high", u, j)
            add("image_high", f"{user}/job_{job}_{ts()}.png", "copied", f"{user}/{job}/0.png")
        for j in range(2):
            job, stamp = seed_uuid("sdxl_fast", u, j), ts()
            for n in range(1, 4):
                add(
                    "sdxl_image_fast",
                    f"{user}/sdxl_{job}_{stamp}_{n}.png",
                    "copied",
                    f"{user}/{job}/{n - 1}.png",
                )
        job = seed_uuid("sdxl_high_single", u)
        add("sdxl_image_high", f"{user}/sdxl_{job}_{ts()}.png", "copied", f"{user}/{job}/0.png")
        job, stamp = seed_uuid("sdxl_high", u), ts()
        for n in (1, 2):
            add(
                "sdxl_image_high",
                f"{user}/sdxl_{job}_{stamp}_{n}.png",
                "copied",
                f"{user}/{job}/{n - 1}.png",
            )
        for bucket in ("video_fast", "video_high"):
            job = seed_uuid(bucket, u)
            add(
                bucket,
                f"{user}/job_{job}_{ts()}.mp4",
                "copied",
                f"{user}/{job}/0.mp4",
                content_type="video/mp4",
            )
        add("image7b_fast_enhanced", f"{user}/{seed_uuid('video-id', u)}.png", "unmappable")
        add(
            "video7b_fast_enhanced",
            f"{user}/video_{ts()}.mp4",
            "unmappable",
            content_type="video/mp4",
        )

    user, other = seed_uuid("user", 0), seed_uuid("user", 1)
    add("video_high", f"{seed_uuid('root-video', 1)}.mp4", "unmappable", content_type="video/mp4")
    add("video_fast", f"video_{ts()}.mp4", "unmappable", content_type="video/mp4")
    add("image_fast", f"legacy-user/job_{seed_uuid('bad-user')}_{ts()}.png", "unmappable")
    add(
        "video_fast",
        f"{user}/job_{seed_uuid('mov')}_{ts()}.mov",
        "unmappable",
        content_type="video/quicktime",
    )
    add(
        "video_high",
        f"{user}/job_{seed_uuid('mpeg')}_{ts()}.mpeg",
        "unmappable",
        content_type="video/mpeg",
    )
    add(
        "sdxl_image_fast",
        f"{user}/.emptyFolderPlaceholder",
        "folder",
        data=b"",
        content_type="application/octet-stream",
    )
    add("image_high", f"{user}/{seed_uuid('deep')}/0.png", "unmappable")
    add("image_fast", f"{user}/sdxl_{seed_uuid('zero')}_{ts()}_0.png", "unmappable")
    add("image_fast", f"{user}/job_not-a-uuid_{ts()}.png", "unmappable")

    # The same asset in two buckets with the same bytes: copied once, the other a duplicate.
    twin = seed_uuid("twin")
    same = png_bytes(90_001)
    add(
        "sdxl_image_fast",
        f"{other}/sdxl_{twin}_{ts()}.png",
        "copied",
        f"{other}/{twin}/0.png",
        data=same,
    )
    add(
        "image_fast",
        f"{other}/job_{twin}_{ts()}.png",
        "duplicate",
        f"{other}/{twin}/0.png",
        data=same,
    )
    # The same asset in two buckets with different bytes: a collision, nothing copied.
    clash = seed_uuid("clash")
    add(
        "sdxl_image_high", f"{other}/sdxl_{clash}_{ts()}.png", "collision", f"{other}/{clash}/0.png"
    )
    add("image_high", f"{other}/job_{clash}_{ts()}.png", "collision", f"{other}/{clash}/0.png")
    # Bytes that are no image: copied, but no thumbnail.
    broken = seed_uuid("broken")
    add(
        "image_fast",
        f"{other}/job_{broken}_{ts()}.png",
        "copied",
        f"{other}/{broken}/0.png",
        data=b"this is not a png",
        thumbnail=False,
    )
    # Targets that already exist: same bytes, other bytes, only a thumbnail.
    present = seed_uuid("present")
    obj = add(
        "image_high",
        f"{other}/job_{present}_{ts()}.png",
        "already_present",
        f"{other}/{present}/0.png",
    )
    seed.preexisting[f"{other}/{present}/0.png"] = (obj.data, "image/png")
    taken = seed_uuid("taken")
    add("image_high", f"{other}/job_{taken}_{ts()}.png", "conflict", f"{other}/{taken}/0.png")
    seed.preexisting[f"{other}/{taken}/0.png"] = (png_bytes(90_002), "image/png")
    posted = seed_uuid("posted")
    add("image_fast", f"{other}/job_{posted}_{ts()}.png", "copied", f"{other}/{posted}/0.png")
    seed.preexisting[f"{other}/{posted}/0.thumb.webp"] = (
        b"RIFF-a-poster-made-earlier",
        "image/webp",
    )
    # Someone else's object in the target bucket, unrelated to any legacy source.
    seed.preexisting[f"{other}/{seed_uuid('fresh')}/0.png"] = (png_bytes(90_003), "image/png")
    return seed


@pytest.fixture(scope="session")
def legacy_seed() -> LegacySeed:
    return build_seed()


@dataclass(frozen=True)
class Request:
    """A request the test's proxy saw: method, path without ``/storage/v1`` and query, status."""

    method: str
    path: str
    status: int


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    content_type: str


class SeededStorage:
    """The real storage server seen by the flows through the test's own fault proxy.

    The backfill and the cleanup work on fixed bucket names (the legacy buckets, ``user-library``
    and ``workspace-temp``), so these tests own those buckets' contents on the session's
    server: :meth:`reset` empties them, creates the legacy buckets with the contract's limits
    and MIME lists and leaves ``videos`` missing. Reads and seeding go around the proxy, so
    :attr:`requests` holds only what the flows sent.
    """

    def __init__(self, real: RealStorage, proxy: StorageProxy) -> None:
        self.real = real
        self.proxy = proxy
        self.url = proxy.url
        self._client = httpx.Client(headers=real.headers(), timeout=30)
        self._mark = 0

    def token(self) -> str:
        return self.real.service_key

    def close(self) -> None:
        self._client.close()

    # -- what the flows sent -----------------------------------------------------------------
    @property
    def requests(self) -> list[Request]:
        seen = self.proxy.seen()[self._mark :]
        return [
            Request(s.method, s.path.split("?", 1)[0].removeprefix("/storage/v1"), s.status)
            for s in seen
        ]

    def clear_requests(self) -> None:
        self._mark = len(self.proxy.seen())

    # -- buckets -----------------------------------------------------------------------------
    def bucket_ids(self) -> list[str]:
        with psycopg.connect(self.real.dsn) as conn:
            rows = conn.execute(
                "select id from storage.buckets where id = any(%s) order by id",
                (list(MANAGED_BUCKETS),),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def create_contract_buckets(self, names: Iterable[str]) -> None:
        """Creates the named buckets the contract lists (limits, MIME lists) where missing
        (``workspace-temp`` comes with the project's migrations)."""
        present = set(self.bucket_ids())
        for name in names:
            if name in present:
                continue
            spec = CONTRACT_BUCKETS[name]
            body: dict[str, Any] = {"id": name, "name": name, "public": spec.public}
            if spec.file_size_limit is not None:
                body["file_size_limit"] = spec.file_size_limit
            if spec.allowed_mime_types is not None:
                body["allowed_mime_types"] = list(spec.allowed_mime_types)
            response = self._client.post(f"{self.real.storage_url}/bucket", json=body)
            if response.status_code != 200:
                raise AssertionError(f"creating bucket {name} answered {response.text}")

    def reset(self, buckets: Iterable[str] = (TARGET, "user-library", *LEGACY_PRESENT)) -> None:
        """Empties every bucket these tests own, removes ``videos`` and creates ``buckets``."""
        present = set(self.bucket_ids())
        for bucket in present:
            names = self.object_names(bucket)
            for start in range(0, len(names), 500):
                response = self._client.request(
                    "DELETE",
                    f"{self.real.storage_url}/object/{bucket}",
                    json={"prefixes": names[start : start + 500]},
                )
                assert response.status_code == 200, response.text
            assert self.object_names(bucket) == [], bucket
        if "videos" in present:
            response = self._client.delete(f"{self.real.storage_url}/bucket/videos")
            assert response.status_code == 200, response.text
        self.create_contract_buckets(buckets)
        self.clear_requests()

    # -- objects -----------------------------------------------------------------------------
    def object_names(self, bucket: str) -> list[str]:
        return self.real.object_names(bucket)

    def put_object(
        self,
        bucket: str,
        path: str,
        data: bytes,
        content_type: str,
        created_at: datetime | None = None,
    ) -> None:
        """Stores (upserts) an object through the storage API; ``created_at`` backdates it."""
        response = self._client.post(
            f"{self.real.storage_url}/object/{bucket}/{quote(path)}",
            content=data,
            headers={"content-type": content_type, "x-upsert": "true"},
        )
        assert response.status_code == 200, (bucket, path, response.text)
        if created_at is not None:
            self.set_created_at(bucket, path, created_at)

    def set_created_at(self, bucket: str, path: str, when: datetime) -> None:
        """Backdates an object in the server's database (created_at and updated_at)."""
        with psycopg.connect(self.real.dsn, autocommit=True) as conn:
            done = conn.execute(
                "update storage.objects set created_at = %s, updated_at = %s"
                " where bucket_id = %s and name = %s",
                (when, when, bucket, path),
            )
            assert done.rowcount == 1, (bucket, path)

    def get_object(self, bucket: str, path: str) -> StoredObject | None:
        """The object's bytes and content type as the server answers them, or None."""
        response = self._client.get(
            f"{self.real.storage_url}/object/authenticated/{bucket}/{quote(path)}"
        )
        if response.status_code != 200:
            assert "not_found" in response.text or "not found" in response.text, response.text
            return None
        return StoredObject(response.content, response.headers["content-type"])

    def get_objects(self, bucket: str, names: list[str]) -> dict[str, StoredObject]:
        """Several objects at once; each must exist."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda name: self.get_object(bucket, name), names))
        found = dict(zip(names, got, strict=True))
        missing = [name for name, obj in found.items() if obj is None]
        assert not missing, missing
        return {name: obj for name, obj in found.items() if obj is not None}


MANAGED_BUCKETS = (TARGET, "user-library", *LEGACY_PRESENT, "videos")


@pytest.fixture
def seeded_storage(real_storage: RealStorage, fault_proxy: StorageProxy) -> Iterator[SeededStorage]:
    """The server with these tests' buckets emptied (``videos`` missing), flows behind a proxy."""
    store = SeededStorage(real_storage, fault_proxy)
    try:
        store.reset()
        yield store
    finally:
        store.close()


def load_seed(store: SeededStorage, seed: LegacySeed) -> None:
    """Objects exactly the seed's, with the seed's creation times."""
    uploads = [(o.bucket, o.path, o.data, o.content_type, o.created_at) for o in seed.objects]
    uploads += [
        (TARGET, path, data, content_type, SEED_START)
        for path, (data, content_type) in seed.preexisting.items()
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda upload: store.put_object(*upload), uploads))
    store.clear_requests()


@pytest.fixture
def seeded(seeded_storage: SeededStorage, legacy_seed: LegacySeed) -> SeededStorage:
    load_seed(seeded_storage, legacy_seed)
    return seeded_storage


def settings_env(**values: object) -> dict[str, str]:
    """The ``GENJOBS_*`` environment variables that make :class:`Settings` read ``values``."""
    env = {}
    for name, value in values.items():
        plain = value.get_secret_value() if isinstance(value, SecretStr) else value
        env[f"GENJOBS_{name.upper()}"] = str(plain)
    return env


@contextmanager
def configured(**values: object) -> Iterator[Settings]:
    """The environment set as a worker's would be for ``values`` while the block runs; the
    flows build their settings and storage from it."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings_env(**values).items():
            patch.setenv(name, value)
        yield Settings()


@contextmanager
def installed_settings(store: SeededStorage, home: Path, **settings: object) -> Iterator[Settings]:
    """The seeded server through the test's proxy configured for the flows while the block
    runs (the service key in the environment, as on a worker)."""
    values: dict[str, object] = {
        "home": home,
        "supabase_url": store.url,
        "supabase_service_key": SecretStr(store.token()),
        "storage_timeout_seconds": 30.0,
        "storage_retries": 8,
        "storage_retry_base_seconds": 0.01,
    }
    values.update(settings)
    with configured(**values) as installed:
        yield installed


@contextmanager
def local_settings(storage: LocalFolderStorage, home: Path) -> Iterator[Settings]:
    """The local folder backend configured for the flows while the block runs."""
    with configured(home=home, storage_root=storage.root, storage_retry_base_seconds=0.01) as s:
        yield s


@pytest.fixture
def backfill_settings(seeded: SeededStorage, tmp_path: Path) -> Iterator[Settings]:
    """The Supabase backend on the seeded server, configured for the flows."""
    with installed_settings(seeded, tmp_path) as settings:
        yield settings


def snapshot(store: SeededStorage) -> dict[tuple[str, str], tuple[str, str]]:
    """Every object of every bucket these tests own: ``(bucket, path) -> (md5, content type)``,
    as the server recorded them (its ETag is the MD5 of the bytes)."""
    with psycopg.connect(store.real.dsn) as conn:
        rows = conn.execute(
            "select bucket_id, name, metadata->>'eTag', metadata->>'mimetype'"
            " from storage.objects where bucket_id = any(%s)",
            (list(MANAGED_BUCKETS),),
        ).fetchall()
    return {(bucket, name): (str(etag), str(mime)) for bucket, name, etag, mime in rows}


@contextmanager
def migrated_database(prefix: str) -> Iterator[str]:
    """A fresh migrated database on the server named by GENJOBS_TEST_PG_DSN (else skipped)."""
    admin_dsn = os.environ.get("GENJOBS_TEST_PG_DSN")
    if not admin_dsn:
        pytest.skip("GENJOBS_TEST_PG_DSN is not set (start one with scripts/start_postgres.sh)")
    from genjobs.db.migrations import apply_migrations

    with scratch_database(admin_dsn, prefix) as dsn:
        apply_migrations(dsn, bootstrap=True)
        yield dsn


@pytest.fixture(scope="session")
def project_db() -> Iterator[str]:
    """A migrated database shared by the session's tests."""
    with migrated_database("genjobs_backfill") as dsn:
        yield dsn


@pytest.fixture
def own_db() -> Iterator[str]:
    """A migrated database of this test's own."""
    with migrated_database("genjobs_backfill_own") as dsn:
        yield dsn


@pytest.fixture
def db_backfill_settings(seeded: SeededStorage, own_db: str, tmp_path: Path) -> Iterator[Settings]:
    """:func:`backfill_settings` with the test's own project database configured."""
    with installed_settings(seeded, tmp_path, database_dsn=SecretStr(own_db)) as settings:
        yield settings


def backfilled_rows(dsn: str) -> dict[str, tuple[str, str, int]]:
    """``backfilled_objects``: source key -> (target path, sha256, size)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select source_bucket, source_path, target_path, sha256, size_bytes "
            "from public.backfilled_objects"
        ).fetchall()
    return {f"{b}/{p}": (t, sha, size) for b, p, t, sha, size in rows}


async def artifact_markdown(state: Any, key: str) -> str:
    """The markdown of the artifact ``key`` of a finished flow run's state."""
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    found = [a for a in artifacts if a.key == key]
    assert found, [a.key for a in artifacts]
    return str(found[0].data)


def records(manifest: Path) -> list[dict[str, Any]]:
    """Every complete line of the manifest."""
    text = manifest.read_text() if manifest.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def target_bucket_objects(store: SeededStorage) -> dict[str, tuple[bytes, str]]:
    objects = store.get_objects(TARGET, store.object_names(TARGET))
    return {name: (obj.data, obj.content_type) for name, obj in objects.items()}


async def final_state(flow_function: Any, **parameters: Any) -> Any:
    """Run a flow and return its final state (not its result)."""
    return await flow_function(return_state=True, **parameters)
