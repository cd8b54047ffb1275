"""A batch reads its sources ahead of their copies: bytes, thumbnails and outcomes as before,
one download per source, reads that go on while earlier objects are written, and a bound on the
bytes held that never stalls the batch. On the real Storage server, counted at the network seam.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from PIL import Image

from devstack.storage_proxy import StorageProxy
from genjobs.backfill.legacy_paths import LegacyObject
from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.transfer import CopyOrder, ReadAhead, run_copy_batch
from genjobs.storage.supabase import SupabaseStorage
from tests.real_storage import RealStorage

TARGET = "workspace-temp"


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def storage(real_storage: RealStorage, fault_proxy: StorageProxy) -> Iterator[SupabaseStorage]:
    with real_storage.backend(fault_proxy.url) as backend:
        yield backend


def seeded_orders(
    real_storage: RealStorage, storage: SupabaseStorage, count: int
) -> tuple[str, list[CopyOrder], list[bytes]]:
    """A legacy bucket holding ``count`` sources of different bytes, each its own job, and an
    upload order for each (with its planned size)."""
    legacy = real_storage.create_bucket("legacy")
    orders, payloads = [], []
    user = str(uuid.uuid4())
    for number in range(count):
        data = png(20 * number)
        path = f"{user}/job_{number}.png"
        storage.put(legacy, path, data, "image/png")
        source = LegacyObject(
            bucket=legacy,
            path=path,
            user_id=user,
            job_id=str(uuid.uuid4()),
            index=0,
            ext="png",
            layout="job_ts",
        )
        item = PlannedCopy(source=source, target_bucket=TARGET, size=len(data))
        orders.append(CopyOrder(item, target_preexisting=False, thumbnail_preexisting=False))
        payloads.append(data)
    return legacy, orders, payloads


def source_reads(proxy: StorageProxy, legacy: str) -> list[str]:
    """The sources read, in the order their answers came back."""
    return [
        seen.path.split("?")[0].rsplit("/", 1)[1]
        for seen in proxy.seen()
        if seen.method == "GET" and f"/object/{legacy}/" in seen.path
    ]


def target_uploads(proxy: StorageProxy) -> list[int]:
    """Positions in the proxy's record of the targets' uploads (not their thumbnails)."""
    return [
        position
        for position, seen in enumerate(proxy.seen())
        if seen.method in ("POST", "PUT")
        and f"/object/{TARGET}/" in seen.path
        and not seen.path.split("?")[0].endswith(".thumb.webp")
    ]


def assert_copied(storage: SupabaseStorage, orders: list[CopyOrder], payloads: list[bytes]) -> None:
    for order, data in zip(orders, payloads, strict=True):
        assert storage.get(TARGET, order.item.target_path) == data
        thumb = Image.open(io.BytesIO(storage.get(TARGET, order.item.thumbnail_path)))
        assert (thumb.format, max(thumb.size)) == ("WEBP", 256)


def test_sources_are_read_while_earlier_objects_are_written(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy, orders, payloads = seeded_orders(real_storage, storage, 4)
    before = len(fault_proxy.seen())
    # Every target upload is held back: the reads ahead are done before the first one ends.
    fault_proxy.delay(rf"^(POST|PUT) /storage/v1/object/{TARGET}/", seconds=0.3)

    outcomes = run_copy_batch(storage, orders, target_bucket=TARGET, concurrency=1)

    assert [(o.outcome, o.method, o.written) for o in outcomes] == [("copied", "upload", True)] * 4
    assert [o.key for o in outcomes] == [order.item.key for order in orders]
    assert_copied(storage, orders, payloads)
    reads = source_reads(fault_proxy, legacy)
    assert sorted(reads) == sorted(order.item.source.path.rsplit("/", 1)[1] for order in orders)
    # One copy at a time, yet all four sources were read before the first target was stored:
    # copy by copy, source 2 could only be read once target 1 was.
    last_read = max(
        position
        for position, seen in enumerate(fault_proxy.seen())
        if seen.method == "GET" and f"/object/{legacy}/" in seen.path
    )
    assert last_read < min(p for p in target_uploads(fault_proxy) if p >= before)


def test_a_budget_smaller_than_any_source_copies_them_one_at_a_time_in_full(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy, orders, payloads = seeded_orders(real_storage, storage, 5)

    outcomes = run_copy_batch(
        storage, orders, target_bucket=TARGET, concurrency=3, read_ahead_bytes=1
    )

    assert [o.outcome for o in outcomes] == ["copied"] * 5
    assert_copied(storage, orders, payloads)
    assert len(source_reads(fault_proxy, legacy)) == 5  # one download each


def test_a_failed_read_fails_its_own_object_only_and_a_vanished_source_is_refused(
    real_storage: RealStorage, storage: SupabaseStorage, fault_proxy: StorageProxy
) -> None:
    legacy, orders, payloads = seeded_orders(real_storage, storage, 4)
    storage.remove(legacy, [orders[3].item.source.path])
    flaky = orders[1].item.source.path
    fault_proxy.fail(rf"^GET /storage/v1/object/{legacy}/{flaky}", status=503, times=None)

    outcomes = run_copy_batch(
        storage, orders, target_bucket=TARGET, concurrency=2, read_ahead_bytes=len(payloads[0])
    )

    assert [(o.outcome, o.transient) for o in outcomes] == [
        ("copied", False),
        ("failed", True),
        ("copied", False),
        ("refused", False),
    ]
    assert "could not be read" in (outcomes[3].detail or "")
    assert_copied(storage, [orders[0], orders[2]], [payloads[0], payloads[2]])
    for order in (orders[1], orders[3]):
        assert not storage.list(TARGET, order.item.target_path.rpartition("/")[0] + "/")


def test_read_ahead_takes_turns_in_order_within_its_budget() -> None:
    held = ReadAhead(budget=10)
    taken: list[int] = []

    def take(turn: int, size: int) -> None:
        held.take(turn, size)
        taken.append(turn)

    # Turn 1 starts first, yet waits for turn 0.
    late = threading.Thread(target=take, args=(1, 4))
    late.start()
    time.sleep(0.05)
    assert taken == []
    take(0, 6)
    late.join(timeout=5)
    assert (taken, held.held) == ([0, 1], 10)

    # Turn 2 does not fit until bytes come back.
    blocked = threading.Thread(target=take, args=(2, 3))
    blocked.start()
    time.sleep(0.05)
    assert taken == [0, 1]
    held.give_back(6)
    blocked.join(timeout=5)
    assert (taken, held.held) == ([0, 1, 2], 7)

    # One larger than the budget goes alone, once nothing else is held.
    alone = threading.Thread(target=take, args=(3, 50))
    alone.start()
    time.sleep(0.05)
    assert taken == [0, 1, 2]
    held.give_back(7)
    alone.join(timeout=5)
    assert (taken, held.held) == ([0, 1, 2, 3], 50)
    with pytest.raises(ValueError, match="at least one byte"):
        ReadAhead(budget=0)
