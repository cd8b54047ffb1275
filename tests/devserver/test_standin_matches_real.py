"""The stand-in answers what the real storage server (v1.70.6) answers: the same requests go to
both, with the same bucket, users and keys of each one's own secret, and their answers (HTTP
status, error body, or the parts of a success that do not carry ids and times) must be equal.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devstack.storage_standin import StorageStandIn
from devstack.tokens import role_key, user_token
from tests.real_storage import WORKSPACE_BUCKET, RealStorage

STANDIN_SECRET = "parity-tests-jwt-secret-0123456789abcdefgh"
VOLATILE = {"Id", "id", "created_at", "updated_at", "last_accessed_at", "version", "metadata"}


@dataclass
class Server:
    """One side of the comparison: where it lives and the keys its secret signs."""

    storage_url: str
    secret: str
    service_key: str

    def token(self, kind: str, user: str) -> str | None:
        if kind == "service":
            return self.service_key
        if kind == "user":
            return user_token(user, self.secret)
        if kind == "expired":
            return user_token(user, self.secret, ttl_s=-60)
        if kind == "non-uuid":
            return user_token("user-1", self.secret)
        if kind == "other-secret":
            return role_key("service_role", "q" * 48)
        if kind == "junk":
            return "not-a-jwt"
        return None


@pytest.fixture(scope="module")
def parity_standin() -> Iterator[StorageStandIn]:
    with StorageStandIn(STANDIN_SECRET) as running:
        yield running


@pytest.fixture
def servers(real_storage: RealStorage, parity_standin: StorageStandIn) -> tuple[str, list[Server]]:
    # The production bucket: its row policies are what users meet (fresh users per test).
    parity_standin.create_contract_buckets([WORKSPACE_BUCKET])
    return WORKSPACE_BUCKET, [
        Server(real_storage.storage_url, real_storage.jwt_secret, real_storage.service_key),
        Server(parity_standin.storage_url, STANDIN_SECRET, parity_standin.token()),
    ]


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _answer(response: httpx.Response) -> tuple[int, Any]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.status_code, _normalised(json.loads(response.text or "null"))
    return response.status_code, response.content


Call = Callable[[httpx.Client, str, str, str], httpx.Response]


def _upload(path: str, content_type: str = "image/png", upsert: bool = False) -> Call:
    def call(client: httpx.Client, bucket: str, a: str, b: str) -> httpx.Response:
        headers = {"content-type": content_type}
        if upsert:
            headers["x-upsert"] = "true"
        target = path.format(a=a, b=b)
        return client.post(f"/object/{bucket}/{target}", content=b"png bytes", headers=headers)

    return call


def _get(path: str, route: str = "") -> Call:
    def call(client: httpx.Client, bucket: str, a: str, b: str) -> httpx.Response:
        return client.get(f"/object/{route}{bucket}/{path.format(a=a, b=b)}")

    return call


def _post(route: str, body: dict[str, Any]) -> Call:
    def call(client: httpx.Client, bucket: str, a: str, b: str) -> httpx.Response:
        text = json.dumps(body).replace("{bucket}", bucket).replace("{a}", a).replace("{b}", b)
        return client.post(
            route.format(bucket=bucket, a=a, b=b),
            content=text,
            headers={"content-type": "application/json"},
        )

    return call


def _delete(route: str, body: dict[str, Any] | None = None) -> Call:
    def call(client: httpx.Client, bucket: str, a: str, b: str) -> httpx.Response:
        text = None
        if body is not None:
            text = json.dumps(body).replace("{a}", a).replace("{b}", b)
        return client.request(
            "DELETE",
            route.format(bucket=bucket, a=a, b=b),
            content=text,
            headers={"content-type": "application/json"} if text else {},
        )

    return call


CASES: list[tuple[str, str, Call]] = [
    ("upload again without upsert", "service", _upload("{a}/j/0.png")),
    ("upload with upsert", "service", _upload("{a}/j/0.png", upsert=True)),
    ("upload outside the MIME list", "service", _upload("{a}/j/1.png", "text/plain")),
    ("download", "service", _get("{a}/j/0.png")),
    ("download a missing object", "service", _get("{a}/j/none.png")),
    ("info of a missing object", "service", _get("{a}/j/none.png", "info/")),
    ("user reads its own", "user", _get("{a}/j/0.png")),
    ("user reads another's", "user", _get("{b}/j/0.png")),
    ("user uploads into its own folder", "user", _upload("{a}/j/2.png")),
    ("user overwrites another's", "user", _upload("{b}/j/0.png", upsert=True)),
    ("user removes another's", "user", _delete("/object/{bucket}", {"prefixes": ["{b}/j/0.png"]})),
    ("user deletes another's", "user", _delete("/object/{bucket}/{b}/j/0.png")),
    (
        "user moves another's",
        "user",
        _post(
            "/object/move",
            {
                "bucketId": "{bucket}",
                "sourceKey": "{b}/j/0.png",
                "destinationKey": "{a}/j/taken.png",
            },
        ),
    ),
    ("user signs another's", "user", _post("/object/sign/{bucket}/{b}/j/0.png", {"expiresIn": 60})),
    ("user lists another's folder", "user", _post("/object/list/{bucket}", {"prefix": "{b}/j/"})),
    ("key of another secret reads", "other-secret", _get("{a}/j/0.png")),
    ("key of another secret writes", "other-secret", _upload("{a}/j/3.png")),
    ("junk key writes", "junk", _upload("{a}/j/3.png")),
    ("junk key reads authenticated", "junk", _get("{a}/j/0.png", "authenticated/")),
    ("expired user reads", "expired", _get("{a}/j/0.png")),
    ("expired user lists", "expired", _post("/object/list/{bucket}", {"prefix": ""})),
    ("no key reads", "none", _get("{a}/j/0.png")),
    ("no key lists", "none", _post("/object/list/{bucket}", {"prefix": ""})),
    ("non-uuid user reads", "non-uuid", _get("user-1/j/0.png")),
    ("non-uuid user writes", "non-uuid", _upload("user-1/j/1.png")),
    ("service lists", "service", _post("/object/list/{bucket}", {"prefix": "{a}/j/"})),
    (
        "service lists folders and files by name",
        "service",
        _post("/object/list/{bucket}", {"prefix": "{a}/", "sortBy": {"column": "name"}}),
    ),
    ("upload with a charset", "service", _upload("{a}/j/4.png", "text/plain;charset=UTF-8")),
    (
        "service removes one present and one missing",
        "service",
        _delete("/object/{bucket}", {"prefixes": ["{b}/j/0.png", "{b}/j/none.png"]}),
    ),
]


@pytest.mark.parametrize(("case", "key", "call"), CASES, ids=[c[0] for c in CASES])
def test_the_stand_in_answers_like_the_real_server(
    servers: tuple[str, list[Server]], case: str, key: str, call: Call
) -> None:
    bucket, both = servers
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    answers = []
    for server in both:
        service = {"Authorization": f"Bearer {server.service_key}"}
        with httpx.Client(base_url=server.storage_url, timeout=30) as client:
            seeds = (f"{user_a}/j/0.png", f"{user_a}/k.png", f"{user_b}/j/0.png", "user-1/j/0.png")
            for path in seeds:
                seeded = client.post(
                    f"/object/{bucket}/{path}",
                    content=b"png bytes",
                    headers={**service, "content-type": "image/png", "x-upsert": "true"},
                )
                assert seeded.status_code == 200, seeded.text
            token = server.token(key, user_a)
            if token is not None:
                client.headers["Authorization"] = f"Bearer {token}"
            answers.append(_answer(call(client, bucket, user_a, user_b)))

    real, standin = answers
    assert standin == real, case
