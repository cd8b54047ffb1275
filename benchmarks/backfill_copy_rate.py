"""Objects per second: the backfill's copy path against download-and-upload, side by side.

Runs the local Supabase Storage stand-in in this process (or uses a real server, below), seeds
legacy-sized PNGs and copies them these ways, each on fresh sources and targets:

* ``server copy, same bucket`` and ``server copy, other bucket``: ``SupabaseStorage.copy``
  (``POST /object/copy``, with ``destinationBucket`` across buckets; no bytes through the client);
* ``download + upload``: ``get`` from the legacy bucket, ``put`` into the target bucket;
* ``previous backfill path``: what each object cost before (download, upload, download again to
  verify, download again to thumbnail, upload the thumbnail): 3 downloads and 2 uploads;
* ``backfill, server copy`` and ``backfill, upload``: the backfill's own batch
  (``genjobs.backfill.transfer.run_copy_batch``): one download (fingerprint and thumbnail), the
  copy by the server or an upload, verification by the listed size and MD5 ETag, the thumbnail.

It prints each rate and the backfill's rates as ratios to the previous path and to a plain
download + upload, and the server's copy as a ratio to a plain download + upload, all measured
in this one run.

Afterwards it removes what it seeded and wrote (everything under its own fresh user folder in
both buckets), so that a later run's inventory does not list it.

The stand-in shares this process (and its GIL) with the client, so the figures compare the
methods with each other; they are not a forecast for a remote Supabase project.

With ``--storage-url`` and ``--service-key`` (default: GENJOBS_TEST_SUPABASE_URL and
GENJOBS_TEST_STORAGE_SERVICE_KEY, which ``scripts/storage_server.sh start`` exports) it measures a
real storage server instead, e.g. v1.70.6 on loopback; the source bucket is created there when
missing. With ``--latency-ms`` or ``--link-mbit`` it reaches that server (``--upstream-url``, the
server itself: GENJOBS_TEST_STORAGE_UPSTREAM_URL) through a standing proxy process
(devstack/storage_proxy.py) that passes every request on that much later and carries bodies at
most that many megabits a second each way, all connections sharing the link: a Supabase project
a network away, where the bytes each method moves decide its rate.

Usage: ``python benchmarks/backfill_copy_rate.py [--objects 200] [--size-kb 256]
[--storage-url URL --service-key KEY] [--latency-ms 20 --link-mbit 100]`` (with the project
installed, e.g. ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devstack is not installed

from benchmarks.common import add_link_arguments, through_link
from devstack.storage_standin import StorageStandIn
from genjobs.backfill.legacy_paths import LegacyObject, parse_legacy_path
from genjobs.backfill.plan import PlannedCopy
from genjobs.backfill.thumbnails import make_thumbnail
from genjobs.backfill.transfer import CopyOrder, run_copy_batch
from genjobs.storage.supabase import SupabaseStorage

SOURCE = "sdxl_image_fast"
TARGET = "workspace-temp"
JWT_SECRET = "benchmark-jwt-secret-0123456789abcdef0123"


def noise_png(size_kb: int, seed: int) -> bytes:
    """A PNG of random pixels of about ``size_kb`` KiB (noise does not compress)."""
    side = max(8, int((size_kb * 1024 / 3) ** 0.5))
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def timed(count: int, concurrency: int, work: Callable[[int], object]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(work, range(count)))
    return time.perf_counter() - started


@contextmanager
def storage_server(url: str | None, key: str | None) -> Iterator[tuple[str, str, str]]:
    """(SUPABASE_URL, service key, where) of the server to measure: the one named, or a
    stand-in in this process. The source and target buckets exist on it."""
    if url and key:
        for bucket in (SOURCE, TARGET):
            answer = httpx.post(
                f"{url.rstrip('/')}/storage/v1/bucket",
                json={"id": bucket, "name": bucket, "public": False},
                headers={"Authorization": f"Bearer {key}", "apiKey": key},
                timeout=30.0,
            )
            if answer.status_code != 200 and "already exists" not in answer.text:
                answer.raise_for_status()
        yield url.rstrip("/"), key, f"storage server at {url}"
        return
    with StorageStandIn(JWT_SECRET) as standin:
        standin.create_contract_buckets([SOURCE, TARGET])
        yield standin.url, standin.token(), "stand-in in this process"


def remove_users(storage: SupabaseStorage, users: list[str]) -> None:
    """Remove what a run seeded and wrote (the benchmark's own users), so that the next run's
    inventory lists only its own sources."""
    for bucket in (SOURCE, TARGET):
        for user in users:
            paths = [info.path for info in storage.list(bucket, f"{user}/")]
            if paths:
                storage.remove(bucket, paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--size-kb", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--storage-url", default=os.environ.get("GENJOBS_TEST_SUPABASE_URL"))
    parser.add_argument("--service-key", default=os.environ.get("GENJOBS_TEST_STORAGE_SERVICE_KEY"))
    add_link_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with ExitStack() as stack:
        linked, link = through_link(parser, args, stack)
        args.storage_url = linked or args.storage_url
        results, megabytes, where = measure_all(args)
    report(args, results, megabytes, where + link)


def measure_all(args: argparse.Namespace) -> tuple[dict[str, float], float, str]:
    """Seconds for each method, the megabytes of one method's objects, and the server's name."""
    with storage_server(args.storage_url, args.service_key) as (url, token, where):
        storage = SupabaseStorage.from_supabase(url, token, timeout=30.0)
        user = str(uuid.uuid4())
        payload = [noise_png(args.size_kb, n % 8) for n in range(args.objects)]
        megabytes = sum(len(p) for p in payload) / 1e6

        def seed() -> tuple[list[str], list[str]]:
            """Fresh legacy sources (and their job ids) for one method."""
            jobs = [str(uuid.uuid4()) for _ in range(args.objects)]
            sources = [f"{user}/sdxl_{job}_1754550000_1.png" for job in jobs]
            for path, data in zip(sources, payload, strict=True):
                storage.put(SOURCE, path, data, "image/png")
            return sources, jobs

        def measure(work: Callable[[list[str], list[str], int], object]) -> float:
            sources, jobs = seed()
            return timed(args.objects, args.concurrency, lambda n: work(sources, jobs, n))

        def same_bucket(sources: list[str], jobs: list[str], n: int) -> None:
            storage.copy(SOURCE, sources[n], f"{user}/{jobs[n]}/0.png")

        def other_bucket(sources: list[str], jobs: list[str], n: int) -> None:
            storage.copy(SOURCE, sources[n], f"{user}/{jobs[n]}/0.png", TARGET)

        def through_client(sources: list[str], jobs: list[str], n: int) -> None:
            data = storage.get(SOURCE, sources[n])
            storage.put(TARGET, f"{user}/{jobs[n]}/0.png", data, "image/png")

        def previous_path(sources: list[str], jobs: list[str], n: int) -> None:
            data = storage.get(SOURCE, sources[n])
            target = f"{user}/{jobs[n]}/0.png"
            storage.put(TARGET, target, data, "image/png")
            assert (
                hashlib.sha256(storage.get(TARGET, target)).digest()
                == hashlib.sha256(data).digest()
            )
            webp = make_thumbnail(storage.get(TARGET, target), False)
            storage.put(TARGET, f"{user}/{jobs[n]}/0.thumb.webp", webp, "image/webp")

        def backfill(server_copy: bool) -> float:
            sources, _ = seed()
            orders = []
            for path in sources:
                parsed = parse_legacy_path(SOURCE, path)
                assert isinstance(parsed, LegacyObject), parsed
                item = PlannedCopy(source=parsed, target_bucket=TARGET, size=0)
                orders.append(
                    CopyOrder(
                        item,
                        target_preexisting=False,
                        thumbnail_preexisting=False,
                        server_copy=server_copy,
                    )
                )
            started = time.perf_counter()
            outcomes = run_copy_batch(
                storage, orders, target_bucket=TARGET, concurrency=args.concurrency
            )
            seconds = time.perf_counter() - started
            assert all(o.outcome == "copied" for o in outcomes), outcomes[:3]
            methods = {o.method for o in outcomes}
            assert methods == {"server_copy" if server_copy else "upload"}, methods
            return seconds

        try:
            results = {
                "server copy, same bucket": measure(same_bucket),
                "server copy, other bucket": measure(other_bucket),
                "download + upload": measure(through_client),
                "previous backfill path": measure(previous_path),
                "backfill, server copy": backfill(server_copy=True),
                "backfill, upload": backfill(server_copy=False),
            }
        finally:
            remove_users(storage, [user])  # its own fresh folder, so that no later run lists it
            storage.close()
    return results, megabytes, where


def report(
    args: argparse.Namespace, results: dict[str, float], megabytes: float, where: str
) -> None:
    print(
        f"{args.objects} objects of about {args.size_kb} KiB ({megabytes:.1f} MB), "
        f"concurrency {args.concurrency}, {where}"
    )
    print(f"{'method':<32}{'seconds':>9}{'objects/s':>11}{'MB/s':>9}")
    for name, seconds in results.items():
        rate = args.objects / seconds
        print(f"{name:<32}{seconds:>9.2f}{rate:>11.1f}{megabytes / seconds:>9.1f}")
    previous = results["previous backfill path"]
    plain = results["download + upload"]
    for name in ("backfill, server copy", "backfill, upload"):
        print(
            f"{name}: {previous / results[name]:.2f}x the previous backfill path, "
            f"{plain / results[name]:.2f}x a plain download + upload"
        )
    print(
        f"server copy, other bucket: {plain / results['server copy, other bucket']:.2f}x "
        "a plain download + upload"
    )


if __name__ == "__main__":
    main()
