"""The bounded download on the real storage server: same request as ``get``, capped."""

from __future__ import annotations

import pytest

from genjobs.errors import ErrorCode, StorageError
from genjobs.storage.supabase import SupabaseStorage

USER = "6f1c2a9e-1111-4222-8333-944455556666"
PAYLOAD = bytes(range(256)) * 64  # 16 KiB


@pytest.mark.parametrize("name", ["0.png", "with space.png", "(1) copy.png"])
def test_limited_read_returns_what_get_returns(
    storage: SupabaseStorage, real_bucket: str, name: str
) -> None:
    path = f"{USER}/refs/{name}"
    storage.put(real_bucket, path, PAYLOAD, "image/png")
    assert storage.get_limited(real_bucket, path, len(PAYLOAD)) == PAYLOAD
    assert storage.get(real_bucket, path) == PAYLOAD


def test_limited_read_refuses_a_larger_object(storage: SupabaseStorage, real_bucket: str) -> None:
    path = f"{USER}/refs/big.png"
    storage.put(real_bucket, path, PAYLOAD, "image/png")
    with pytest.raises(StorageError) as caught:
        storage.get_limited(real_bucket, path, len(PAYLOAD) - 1)
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        ErrorCode.OBJECT_OVER_READ_LIMIT,
        "413",
        False,
    )
    assert caught.value.message.startswith(f"Object {real_bucket}/{path} is ")


def test_limited_read_errors_are_translated_like_get(
    storage: SupabaseStorage, real_bucket: str
) -> None:
    for bucket, code in ((real_bucket, "OBJECT_NOT_FOUND"), ("no-such-bucket", "BUCKET_NOT_FOUND")):
        with pytest.raises(StorageError) as limited:
            storage.get_limited(bucket, f"{USER}/missing.png", 10)
        with pytest.raises(StorageError) as whole:
            storage.get(bucket, f"{USER}/missing.png")
        assert (limited.value.code, limited.value.status) == (whole.value.code, "404")
        assert limited.value.code == code
