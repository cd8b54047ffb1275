"""One download per object: the backfill's copy reads its source once and verifies the target
by the listing's size and MD5 ETag (a server-side copy by the row the server answers it with), on
the real Storage server, counted at the network seam."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
from PIL import Image

from devstack.storage_proxy import StorageProxy
from genjobs.backfill.legacy_paths import LegacyObject
from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.transfer import CopyOrder, backfill_object, fingerprint, listed_match
from genjobs.storage.base import ObjectInfo
from genjobs.storage.supabase import SupabaseStorage
from tests.real_storage import RealStorage

TARGET = "workspace-temp"


def png(color: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def storage(real_storage: RealStorage, fault_proxy: StorageProxy) -> Iterator[SupabaseStorage]:
    with real_storage.backend(fault_proxy.url) as backend:
        yield backend


def planned(bucket: str, source_path: str) -> PlannedCopy:
    source = LegacyObject(
        bucket=bucket,
        path=source_path,
        user_id=str(uuid.uuid4()),
        job_id=str(uuid.uuid4()),
        index=0,
        ext="png",
        layout="job_ts",
    )
    return PlannedCopy(source=source, target_bucket=TARGET, size=0)


def downloads(proxy: StorageProxy, bucket: str, path: str) -> int:
    return sum(
        1
        for seen in proxy.seen()
        if seen.method == "GET" and seen.path.split("?")[0].endswith(f"/{bucket}/{path}")
    )


def listed(storage: SupabaseStorage, path: str) -> dict[str, ObjectInfo]:
    folder = path.rpartition("/")[0] + "/"
    return {info.path: info for info in storage.list(TARGET, folder)}


def test_a_copy_downloads_its_source_once_and_never_its_target(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy = real_storage.create_bucket("legacy")
    data = png((200, 30, 40))
    storage.put(legacy, "job_1/a.png", data, "image/png")
    item = planned(legacy, "job_1/a.png")
    order = CopyOrder(item=item, target_preexisting=False, thumbnail_preexisting=False)

    outcome = backfill_object(storage, order, existing={})

    assert outcome.outcome == "copied" and outcome.written and outcome.thumbnail_written
    assert storage.get(TARGET, item.target_path) == data
    thumb = Image.open(io.BytesIO(storage.get(TARGET, item.thumbnail_path)))
    assert (thumb.format, max(thumb.size)) == ("WEBP", 256)
    counts = (
        downloads(fault_proxy, legacy, "job_1/a.png"),
        downloads(fault_proxy, TARGET, item.target_path),
    )
    # Read once by the copy; the two reads of the target are this test's own, above.
    assert counts == (1, 1)


def test_a_target_with_other_bytes_is_a_conflict_told_from_its_listing(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy = real_storage.create_bucket("legacy")
    storage.put(legacy, "job_2/a.png", png((1, 2, 3)), "image/png")
    item = planned(legacy, "job_2/a.png")
    theirs = png((9, 9, 9))
    storage.put(TARGET, item.target_path, theirs, "image/png")
    order = CopyOrder(item=item, target_preexisting=True, thumbnail_preexisting=False)

    outcome = backfill_object(storage, order, existing=listed(storage, item.target_path))

    assert outcome.outcome == "conflict" and not outcome.written
    assert downloads(fault_proxy, TARGET, item.target_path) == 0  # told by size and ETag
    assert storage.get(TARGET, item.target_path) == theirs
    assert item.thumbnail_path not in listed(storage, item.target_path)


def test_a_target_already_holding_the_bytes_is_not_copied_again(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy = real_storage.create_bucket("legacy")
    data = png((5, 100, 5))
    storage.put(legacy, "job_3/a.png", data, "image/png")
    item = planned(legacy, "job_3/a.png")
    storage.put(TARGET, item.target_path, data, "image/png")
    before = {s for s in fault_proxy.seen() if s.method in ("POST", "PUT")}
    order = CopyOrder(item=item, target_preexisting=True, thumbnail_preexisting=False)

    outcome = backfill_object(storage, order, existing=listed(storage, item.target_path))

    assert outcome.outcome == "already_present" and not outcome.written
    assert downloads(fault_proxy, TARGET, item.target_path) == 0
    writes = [
        s
        for s in fault_proxy.seen()
        if s.method in ("POST", "PUT") and s not in before and item.target_path in s.path
    ]
    assert writes == []  # the asset itself untouched; only its missing thumbnail was stored
    assert item.thumbnail_path in listed(storage, item.target_path)


def test_the_listing_tells_only_with_an_md5_etag_of_the_same_size() -> None:
    source = fingerprint(b"abc")
    info = ObjectInfo(path="p", size=3, content_type=None, created_at=None, etag=source.md5)
    assert listed_match(info, source) is True
    other = ObjectInfo(path="p", size=3, content_type=None, created_at=None, etag="0" * 32)
    assert listed_match(other, source) is False
    resized = ObjectInfo(path="p", size=4, content_type=None, created_at=None, etag=source.md5)
    assert listed_match(resized, source) is False
    in_parts = ObjectInfo(path="p", size=3, content_type=None, created_at=None, etag="ab-2")
    assert listed_match(in_parts, source) is None
    no_etag = ObjectInfo(path="p", size=3, content_type=None, created_at=None)
    assert listed_match(no_etag, source) is None


def listings(proxy: StorageProxy, bucket: str) -> int:
    listing = f"/object/list/{bucket}"
    return sum(1 for seen in proxy.seen() if seen.method == "POST" and listing in seen.path)


def server_copy_order(
    real_storage: RealStorage, storage: SupabaseStorage, data: bytes, *, read_back: bool
) -> CopyOrder:
    """A server-side copy order for a new legacy source holding ``data``."""
    legacy = real_storage.create_bucket("legacy")
    storage.put(legacy, "job_4/a.png", data, "image/png")
    return CopyOrder(
        item=planned(legacy, "job_4/a.png"),
        target_preexisting=False,
        thumbnail_preexisting=False,
        server_copy=True,
        read_back=read_back,
    )


def test_a_server_copy_is_verified_by_the_servers_answer_without_a_listing(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    data = png((30, 60, 90))
    order = server_copy_order(real_storage, storage, data, read_back=False)
    before = listings(fault_proxy, TARGET)

    outcome = backfill_object(storage, order, existing={})

    assert (outcome.outcome, outcome.method, outcome.written) == ("copied", "server_copy", True)
    assert outcome.fingerprint == fingerprint(data)
    # The copy's answer carries the new row (size, MD5 ETag): no listing, no download.
    assert listings(fault_proxy, TARGET) == before
    assert downloads(fault_proxy, TARGET, order.item.target_path) == 0
    assert storage.get(TARGET, order.item.target_path) == data


def test_a_run_that_removes_sources_reads_a_server_copy_back(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    order = server_copy_order(real_storage, storage, png((90, 60, 30)), read_back=True)

    outcome = backfill_object(storage, order, existing={})

    assert (outcome.outcome, outcome.method) == ("copied", "server_copy")
    # A source may go only once its copy was read back with the same SHA-256: the server's
    # answer is not enough for that.
    assert downloads(fault_proxy, TARGET, order.item.target_path) == 1
