"""Objects per second through the whole backfill flow, as shipped against the path before it,
side by side in one run, with the storage server near (loopback) and far (a round trip added).

    eval "$(bash scripts/storage_server.sh start)"
    eval "$(bash scripts/start_postgres.sh)"    # optional: the runs' project databases
    python benchmarks/backfill_flow_rate.py [--objects 300] [--rounds 2] [--latency-ms 0,20]
        [--link-mbit 0]

Each run seeds ``--objects`` legacy SDXL images (noise PNGs of ``--size-kb``, three per job,
``--jobs-per-user`` jobs per user folder) into ``sdxl_image_fast`` on the real storage server and
runs ``backfill_legacy_buckets`` (``dry_run=False``, ``batch_size`` and ``concurrency`` as given,
``since`` the run's start so that only its own sources count) on a temporary Prefect API, once
per path, the paths alternating (after one uncounted run of each), and removes what it seeded and
wrote afterwards (so that each run's inventory lists only its own sources):

- ``shipped``: the flow as it is: the next batch's target folders are listed while a batch copies,
  a server-side copy is verified by the row the server answers it with, and an empty listing
  asks whether its bucket exists once per run;
- ``previous``: each batch's folders listed when its turn comes, every copy verified by listing
  its folder afterwards, and every empty listing followed by a request that tells whether its
  bucket exists (the flow before; the same code with those three steps put back).

The flow reaches the server through a standing proxy of its own (``python -m
devstack.storage_proxy --delay-ms N``, a process beside this one) that adds ``--latency-ms`` to
every request (0: loopback): a Supabase project is a round trip away from its workers; with
``--link-mbit N`` the proxy also carries bodies at most N megabits a second each way. With
``GENJOBS_TEST_PG_DSN`` set (scripts/start_postgres.sh) each run records
its copies in a fresh migrated project database, as a deployed run does; else it runs without
one (and says so). It prints objects per second for each path and latency, and the ratio. The
storage server and the client share this machine's cores: the figures compare the paths with
each other. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # devstack is not installed
os.environ["PREFECT_LOGGING_LEVEL"] = "ERROR"  # before Prefect is imported
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from benchmarks.backfill_copy_rate import (  # noqa: E402
    SOURCE,
    TARGET,
    noise_png,
    remove_users,
    storage_server,
)
from benchmarks.common import standing_proxy  # noqa: E402
from devstack.databases import scratch_database  # noqa: E402
from genjobs.storage.supabase import SupabaseStorage  # noqa: E402
from tasks.backfill_run import BackfillSteps, Probed  # noqa: E402

PATHS = ("shipped", "previous")


async def _probed_in_turn(
    self: BackfillSteps, batches: list[list[Any]]
) -> AsyncGenerator[tuple[int, list[Any], Probed], None]:
    """The previous path: each batch's folders listed when its turn comes."""
    for number, batch in enumerate(batches, start=1):
        yield number, batch, await self.probe(batch)


@contextlib.contextmanager
def previous_path() -> Iterator[None]:
    """Within: the flow as it was before (see the module doc)."""
    shipped_probes = BackfillSteps.probed_ahead
    shipped_answer = SupabaseStorage._copied_info
    shipped_list = SupabaseStorage.list

    def list_checking_every_bucket(self: SupabaseStorage, bucket: str, prefix: str = "") -> Any:
        self._buckets_seen.clear()
        return shipped_list(self, bucket, prefix)

    BackfillSteps.probed_ahead = _probed_in_turn  # type: ignore[assignment,method-assign]
    SupabaseStorage._copied_info = classmethod(lambda cls, destination, answer: None)  # type: ignore[assignment,method-assign]
    SupabaseStorage.list = list_checking_every_bucket  # type: ignore[method-assign]
    try:
        yield
    finally:
        BackfillSteps.probed_ahead = shipped_probes  # type: ignore[method-assign]
        SupabaseStorage._copied_info = shipped_answer  # type: ignore[method-assign]
        SupabaseStorage.list = shipped_list  # type: ignore[method-assign]


@contextlib.contextmanager
def project_database() -> Iterator[str | None]:
    """A fresh migrated project database on GENJOBS_TEST_PG_DSN's server, or None."""
    admin = os.environ.get("GENJOBS_TEST_PG_DSN")
    if not admin:
        yield None
        return
    from genjobs.db.migrations import apply_migrations

    with scratch_database(admin, "backfill_bench") as dsn:
        apply_migrations(dsn, bootstrap=True)
        yield dsn


def seed(
    storage: SupabaseStorage, count: int, payload: list[bytes], jobs_per_user: int
) -> list[str]:
    """``count`` legacy images, three per job, ``jobs_per_user`` jobs per user folder; returns
    the user folders."""
    paths = []
    user = job = ""
    for number in range(count):
        if number % 3 == 0:
            if number % (3 * jobs_per_user) == 0:
                user = str(uuid.uuid4())
            job = str(uuid.uuid4())
        paths.append(f"{user}/sdxl_{job}_1754550000_{number % 3 + 1}.png")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda n: storage.put(SOURCE, paths[n], payload[n % 8], "image/png"), range(count)
            )
        )
    return sorted({path.split("/", 1)[0] for path in paths})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=300, help="per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the paths")
    parser.add_argument("--latency-ms", default="0,20", help="added per request, comma-separated")
    parser.add_argument("--size-kb", type=int, default=256)
    parser.add_argument(
        "--link-mbit", type=float, default=0.0, help="link to the server, Mbit/s each way (0: none)"
    )
    parser.add_argument("--jobs-per-user", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--storage-url",
        default=os.environ.get("GENJOBS_TEST_STORAGE_UPSTREAM_URL"),
        help="the storage server itself (default: $GENJOBS_TEST_STORAGE_UPSTREAM_URL)",
    )
    parser.add_argument("--service-key", default=os.environ.get("GENJOBS_TEST_STORAGE_SERVICE_KEY"))
    args = parser.parse_args(argv)
    if not (args.storage_url and args.service_key):
        parser.error(
            'no storage server: run `eval "$(bash scripts/storage_server.sh start)"` first'
        )
    latencies = [float(v) for v in args.latency_ms.split(",") if v.strip()]
    logging.basicConfig(level=logging.WARNING)

    from prefect.testing.utilities import prefect_test_harness

    from flows.backfill import backfill_legacy_buckets

    rates: dict[tuple[str, float], list[float]] = defaultdict(list)
    payload = [noise_png(args.size_kb, n) for n in range(8)]
    with contextlib.ExitStack() as stack:
        proxies = {
            latency: stack.enter_context(standing_proxy(args.storage_url, latency, args.link_mbit))
            for latency in latencies
        }
        _, key, _ = stack.enter_context(storage_server(proxies[latencies[0]], args.service_key))
        dsn = stack.enter_context(project_database())
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="genjobs-backfill-bench-"))
        stack.enter_context(prefect_test_harness())
        os.environ.update(GENJOBS_SUPABASE_SERVICE_KEY=key, GENJOBS_HOME=home)
        if dsn:
            os.environ["GENJOBS_DATABASE_DSN"] = dsn
        else:
            print("GENJOBS_TEST_PG_DSN is not set: the runs record nothing in a project database.")
        seeding = SupabaseStorage.from_supabase(proxies[min(latencies)], key, timeout=60.0)

        def run(path: str, count: int, name: str) -> tuple[int, float]:
            """One backfill run of ``count`` fresh sources on ``path``: (copied, seconds)."""
            since = datetime.now(UTC)
            users = seed(seeding, count, payload, args.jobs_per_user)
            with previous_path() if path == "previous" else contextlib.nullcontext():
                started = time.perf_counter()
                summary = asyncio.run(backfill_legacy_buckets(
                    dry_run=False, buckets=[SOURCE], target_bucket=TARGET,
                    batch_size=args.batch_size, concurrency=args.concurrency,
                    since=since, manifest_path=str(Path(home) / f"{name}.jsonl"),
                ))  # fmt: skip
                seconds = time.perf_counter() - started
            remove_users(seeding, users)
            copied = summary.outcomes.get("copied", 0)
            if copied != count:
                print(f"  warning: {path} copied {copied} of {count}: {summary.outcomes}")
            return copied, seconds

        for path in PATHS:  # first runs, not counted: imports, the API's and the server's caches
            os.environ["GENJOBS_SUPABASE_URL"] = proxies[min(latencies)]
            run(path, 12, f"warm-up-{path}")
        for round_number in range(args.rounds):
            for latency in latencies:
                os.environ["GENJOBS_SUPABASE_URL"] = proxies[latency]
                for path in PATHS:
                    copied, seconds = run(path, args.objects, f"{path}-{latency}-{round_number}")
                    rates[(path, latency)].append(copied / seconds)
                    print(f"  round {round_number + 1}, {latency:g} ms, {path}: {copied} objects "
                          f"in {seconds:.2f} s, {copied / seconds:.1f} objects/s")  # fmt: skip
        seeding.close()

    print(f"\n{args.objects} objects of about {args.size_kb} KiB per run, batches of "
          f"{args.batch_size}, concurrency {args.concurrency}, {args.rounds} round(s), "
          + (f"a link of {args.link_mbit:g} Mbit/s each way, " if args.link_mbit else "") +
          "median objects/s of the whole flow (inventory, plan, copies, thumbnails, "
          "records):")  # fmt: skip
    print(f"{'added latency':<16}" + "".join(f"{p:>12}" for p in PATHS) + f"{'ratio':>9}")
    for latency in latencies:
        medians = [statistics.median(rates[(p, latency)]) for p in PATHS]
        print(f"{f'{latency:g} ms':<16}" + "".join(f"{m:>12.1f}" for m in medians)
              + f"{medians[0] / medians[1]:>8.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
