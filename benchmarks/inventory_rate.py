"""How long the backfill's inventory of a legacy bucket takes: listing and planning N objects.

Seeds ``--objects`` tiny PNGs into a fresh legacy bucket (``--users`` user folders, the
``sdxl_{job}_{ts}_{n}.png`` layout), then times what a backfill run does before its first copy:
the recursive listing (``SupabaseStorage.list``, one request per folder and page) and the plan
(``genjobs.backfill.plan.build_plan``). It prints both against the target (10,000 objects in
under 60 s) as a ratio. Seeding is not timed.

The listing runs twice, side by side: as shipped (the folders of each level listed
``list_concurrency`` at a time) and one folder at a time (``list_concurrency=1``, the listing
before), with the ratio.

With ``--storage-url`` and ``--service-key`` (default: GENJOBS_TEST_SUPABASE_URL and
GENJOBS_TEST_STORAGE_SERVICE_KEY, which ``scripts/storage_server.sh start`` exports) it measures
that server (e.g. the real v1.70.6 on loopback); else the stand-in in this process. With
``--latency-ms`` (and ``--link-mbit``) the listings reach the real server through a standing
proxy that adds that much to every request, as for a Supabase project a round trip away
(seeding still goes the direct way).

Usage: ``python benchmarks/inventory_rate.py [--objects 10000] [--users 200] [--latency-ms 20]``
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devstack is not installed

from benchmarks.backfill_copy_rate import SOURCE, TARGET, storage_server
from benchmarks.common import add_link_arguments, through_link
from genjobs.backfill.plan import BucketInventory, build_plan
from genjobs.storage.supabase import SupabaseStorage

TARGET_SECONDS = 60.0
TARGET_OBJECTS = 10_000


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=TARGET_OBJECTS)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="seeding uploads at once")
    parser.add_argument("--storage-url", default=os.environ.get("GENJOBS_TEST_SUPABASE_URL"))
    parser.add_argument("--service-key", default=os.environ.get("GENJOBS_TEST_STORAGE_SERVICE_KEY"))
    add_link_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with (
        ExitStack() as stack,
        storage_server(args.storage_url, args.service_key) as (url, token, where),
    ):
        linked, link = through_link(parser, args, stack)
        storage = SupabaseStorage.from_supabase(url, token, timeout=60.0)
        run = uuid.uuid4().hex[:8]
        bucket = f"{SOURCE}-{run}"
        httpx.post(
            f"{url}/storage/v1/bucket",
            json={"id": bucket, "name": bucket, "public": False},
            headers={"Authorization": f"Bearer {token}", "apiKey": token},
            timeout=30.0,
        ).raise_for_status()
        users = [str(uuid.uuid4()) for _ in range(args.users)]
        paths = [
            f"{users[n % args.users]}/sdxl_{uuid.uuid4()}_{1754550000 + n}_1.png"
            for n in range(args.objects)
        ]
        data = tiny_png()
        seeding = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(lambda path: storage.put(bucket, path, data, "image/png"), paths))
        seeded = time.perf_counter() - seeding

        storage.close()

        def listing(**options: int) -> tuple[float, float]:
            """Seconds for the listing, and for the listing and the plan."""
            far = SupabaseStorage.from_supabase(linked or url, token, timeout=60.0, **options)
            with far:
                started = time.perf_counter()
                objects = far.list(bucket)
                listed = time.perf_counter() - started
                plan = build_plan([BucketInventory(bucket=bucket, objects=tuple(objects))], TARGET)
                total = time.perf_counter() - started
            assert len(objects) == args.objects, (len(objects), args.objects)
            assert len(plan.copies) == args.objects, len(plan.copies)
            return listed, total

        one_at_a_time, _ = listing(list_concurrency=1)
        listed, total = listing()

    print(f"{args.objects} objects in {args.users} user folders, {where}{link}")
    print(f"seeding (not timed): {seeded:.1f} s")
    print(f"listing: {listed:.2f} s ({args.objects / listed:.0f} objects/s)")
    print(
        f"listing one folder at a time: {one_at_a_time:.2f} s; shipped / one at a time: "
        f"{listed / one_at_a_time:.2f}"
    )
    print(f"listing and plan: {total:.2f} s")
    scaled = total * TARGET_OBJECTS / args.objects
    print(
        f"for {TARGET_OBJECTS} objects at this rate: {scaled:.1f} s, "
        f"{scaled / TARGET_SECONDS:.2f} of the {TARGET_SECONDS:.0f} s target"
    )


if __name__ == "__main__":
    main()
