"""Where the outbox and the local receiver write, and with which modes; old outbox entries."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from flows.generate import generate_job
from flows.outbox import redeliver_callbacks
from genjobs.callback.outbox import Outbox, entry_key
from genjobs.callback.signing import sign
from genjobs.connections import connections_from_settings
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.settings import Settings
from tests.conftest import make_settings
from tests.settings_env import install_settings

JOB = "5b0c1f4e-1d2a-4c3b-9a8e-7f6d5c4b3a21"
HOSTILE_IDS = ["./../../x", "../../../../tmp/escape", "/etc/x", "a/b", "..", "x" * 200]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_outbox_file_names_never_come_from_the_job_id(tmp_path: Path, job_id: str) -> None:
    folder = tmp_path / "home" / "outbox"
    Outbox(folder).put(job_id, "failed", b"body")

    key = entry_key(job_id, "failed")
    assert files_under(tmp_path) == {folder / f"{key}.json"}
    (entry,) = Outbox(folder).entries()
    assert (entry.key, entry.job_id, entry.status, entry.body) == (key, job_id, "failed", b"body")
    Outbox(folder).remove(entry.key)
    assert files_under(tmp_path) == set()


def test_outbox_creates_its_folders_0700_and_files_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Outbox(home / "outbox").put(JOB, "completed", b"one")
    Outbox(home / "outbox").put(JOB, "completed", b"two")  # replaces the first

    (file,) = (home / "outbox").iterdir()
    assert (mode(home), mode(home / "outbox"), mode(file)) == (0o700, 0o700, 0o600)
    assert [e.body for e in Outbox(home / "outbox").entries()] == [b"two"]


def test_an_entry_file_keeps_the_job_status_time_and_exact_body_only(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    entry = Outbox(folder).put(JOB, "failed", b"\x00exact")

    record = json.loads((folder / f"{entry.key}.json").read_bytes())
    assert record == {
        "job_id": JOB,
        "status": "failed",
        "created_at": entry.created_at,
        "body": base64.b64encode(b"\x00exact").decode("ascii"),
    }


def test_outbox_refuses_keys_it_did_not_make(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(JOB, "failed", b"kept")
    for key in ("../outbox/" + entry_key(JOB, "failed"), f"{JOB}.failed", ""):
        with pytest.raises(ValueError, match="not an outbox entry key"):
            outbox.remove(key)
    assert [e.body for e in outbox.entries()] == [b"kept"]


def legacy_record(job_id: str, status: str, body: bytes, created_at: float) -> str:
    return json.dumps(
        {
            "job_id": job_id,
            "status": status,
            "url": "http://x",
            "created_at": created_at,
            "body": base64.b64encode(body).decode("ascii"),
        }
    )


def test_entries_named_after_the_job_id_are_still_read_and_renamed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / f"{JOB}.completed.json").write_text(legacy_record(JOB, "completed", b"old", 1.0))
    (folder / "broken.failed.json").write_text("{not json")
    (folder / "partial.failed.json").write_text(json.dumps({"job_id": "x"}))

    with caplog.at_level(logging.INFO, logger="genjobs.callback.outbox"):
        (entry,) = Outbox(folder).entries()

    key = entry_key(JOB, "completed")
    assert (entry.key, entry.job_id, entry.status, entry.body) == (key, JOB, "completed", b"old")
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [f"{key}.json", "broken.failed.json", "partial.failed.json"]
    )
    assert mode(folder / f"{key}.json") == 0o600
    messages = [record.getMessage() for record in caplog.records]
    assert any("'broken.failed.json'" in m and "cannot be read" in m for m in messages)
    assert any("'partial.failed.json'" in m and "cannot be read" in m for m in messages)
    assert any(f"'{JOB}.completed.json' has an old-style name" in m for m in messages)
    Outbox(folder).remove(entry.key)
    assert sorted(path.name for path in folder.iterdir()) == [
        "broken.failed.json",
        "partial.failed.json",
    ]


def test_an_old_entry_gives_way_to_a_newer_one_of_the_same_job_and_status(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / f"{JOB}.failed.json").write_text(legacy_record(JOB, "failed", b"old", 1.0))
    Outbox(folder).put(JOB, "failed", b"new")

    assert [e.body for e in Outbox(folder).entries()] == [b"new"]
    assert [path.name for path in folder.iterdir()] == [f"{entry_key(JOB, 'failed')}.json"]


def test_home_is_created_0700_and_the_receiver_database_0600(
    tmp_path: Path, callback_secret: str
) -> None:
    home = tmp_path / "state" / "home"
    assert Settings(home=home).ensure_home() == home
    assert (mode(tmp_path / "state"), mode(home)) == (0o700, 0o700)

    database = home / "receiver.sqlite"
    database.touch(mode=0o644)
    os.chmod(database, 0o644)
    with CallbackReceiver(callback_secret, database) as receiver:
        receiver.register_job(JOB, "user")
    assert mode(database) == 0o600
    fresh = tmp_path / "other" / "receiver.sqlite"
    CallbackReceiver(callback_secret, fresh).stop()
    assert (mode(fresh.parent), mode(fresh)) == (0o700, 0o600)


def test_an_existing_open_home_is_kept_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    with caplog.at_level(logging.WARNING, logger="genjobs.settings"):
        Settings(home=home).ensure_home()
    assert mode(home) == 0o755
    assert "is open to other users (mode 755)" in caplog.text


def test_building_the_connections_creates_the_home_0700(
    tmp_path: Path, model_cache: Path, receiver: CallbackReceiver, callback_secret: str
) -> None:
    home = tmp_path / "home"
    connections = connections_from_settings(
        make_settings(home, model_cache, receiver, callback_secret)
    )
    assert connections.settings.home == home
    assert mode(home) == 0o700


@pytest.mark.parametrize(
    "signature", ["sha256=\u00e9t\u00e9".encode(), b"\xff\xfe", b"sha256=\x80"]
)
def test_receiver_answers_401_to_a_non_ascii_signature(
    receiver: CallbackReceiver, callback_secret: str, signature: bytes
) -> None:
    body = json.dumps({"job_id": JOB, "status": "failed", "error_message": "x"}).encode()
    url = urlsplit(receiver.url)
    connection = http.client.HTTPConnection(url.netloc, timeout=5)
    try:
        connection.putrequest("POST", url.path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("X-Callback-Signature", signature)
        connection.endheaders(body)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (401, {"error": "Unauthorized"})
    finally:
        connection.close()
    assert receiver.job(JOB) is None
    assert [r.answered for r in receiver.requests] == [401]
    # The receiver still serves a correctly signed request afterwards.
    assert (
        receiver.handle("POST", body, {"X-Callback-Signature": sign(callback_secret, body)})[0]
        == 200
    )


@pytest.mark.usefixtures("prefect_api")
async def test_a_refused_payloads_callback_waits_inside_the_outbox_whatever_its_id(
    tmp_path: Path,
    model_cache: Path,
    receiver: CallbackReceiver,
    callback_secret: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    settings = make_settings(
        home,
        model_cache,
        receiver,
        callback_secret,
        callback_retry_window_seconds=0.3,
        callback_retry_base_seconds=0.05,
    )
    install_settings(monkeypatch, settings)
    job = {"id": "./../../x", "user_id": "not-a-uuid", "type": "sdxl_image_fast"}
    receiver.down_for(3600)
    state = await generate_job(job, return_state=True)
    assert state.is_failed()
    outside = files_under(tmp_path) - files_under(home)
    assert outside == set()
    (entry,) = Outbox(settings.outbox_dir).entries()
    assert (entry.job_id, entry.status) == ("./../../x", "failed")
    assert files_under(settings.outbox_dir) == {settings.outbox_dir / f"{entry.key}.json"}
    assert (mode(home), mode(settings.outbox_dir)) == (0o700, 0o700)
    assert mode(settings.outbox_dir / f"{entry.key}.json") == 0o600

    receiver.down_for(0)
    assert await redeliver_callbacks() == {"delivered": 1, "waiting": 0, "rejected": 0}
    assert Outbox(settings.outbox_dir).entries() == []
    (payload,) = receiver.accepted("./../../x")
    assert payload["status"] == "failed" and payload["metadata"]["error_code"] == "INVALID_PAYLOAD"
    assert payload["error_message"].startswith("Field 'id' is invalid")
