import time, pytest
from flows.backfill import backfill_legacy_buckets
pytestmark = pytest.mark.usefixtures("prefect_api")

async def test_smoke(backfill_runtime, standin, tmp_path, legacy_seed):
    t=time.perf_counter()
    s = await backfill_legacy_buckets(dry_run=True, manifest_path=str(tmp_path/"m.jsonl"))
    print("dry", time.perf_counter()-t, s)
    t=time.perf_counter()
    state = await backfill_legacy_buckets(dry_run=False, manifest_path=str(tmp_path/"m.jsonl"), return_state=True)
    print("real", time.perf_counter()-t, state)
    print(await state.result())
    t=time.perf_counter()
    s = await backfill_legacy_buckets(dry_run=False, manifest_path=str(tmp_path/"m.jsonl"))
    print("second", time.perf_counter()-t, s)
