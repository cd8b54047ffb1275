"""The upload journal and the undo rule, on the local folder storage."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from genjobs.storage.local import LocalFolderStorage
from genjobs.storage.provenance import (
    JournalUnreadable,
    UploadJournal,
    Write,
    journal_file,
    undo_writes,
)

BUCKET = "workspace-temp"
RUN = "7d9f2c1e-5b3a-4e8f-9c0d-1a2b3c4d5e6f"


@pytest.fixture
def storage(tmp_path: Path) -> LocalFolderStorage:
    return LocalFolderStorage(tmp_path / "storage")


def put_as_run(storage: LocalFolderStorage, journal: UploadJournal, path: str, data: bytes) -> None:
    journal.record([Write.of(BUCKET, path, data)])
    storage.put(BUCKET, path, data, "image/png")


def test_the_journal_file_holds_each_write_before_the_put_and_reads_back(tmp_path: Path) -> None:
    journal = UploadJournal.for_run(tmp_path, RUN)
    assert not journal.file.exists()  # created at the first record
    journal.record(
        [Write.of(BUCKET, "u/j/0.png", b"png"), Write.of(BUCKET, "u/j/0.thumb.webp", b"")]
    )

    assert journal.file == tmp_path / "uploads" / f"{RUN}.jsonl"
    first = json.loads(journal.file.read_text().splitlines()[0])
    assert first == {
        "bucket": BUCKET,
        "path": "u/j/0.png",
        "sha256": hashlib.sha256(b"png").hexdigest(),
        "size": 3,
    }
    assert UploadJournal.load(tmp_path, uuid.UUID(RUN)).writes == journal.writes
    journal.discard()
    assert UploadJournal.load(tmp_path, RUN).writes == []  # no file: nothing recorded


def test_a_journal_is_named_by_a_flow_run_id_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        journal_file(tmp_path, "../../etc/passwd")


def test_a_damaged_journal_is_unreadable(tmp_path: Path) -> None:
    file = journal_file(tmp_path, RUN)
    file.parent.mkdir(parents=True)
    file.write_text('{"bucket": "workspace-temp", "path": "u/j/0.png"\n')
    with pytest.raises(JournalUnreadable, match="damaged"):
        UploadJournal.load(tmp_path, RUN)


def test_the_undo_removes_only_objects_that_still_hold_the_bytes_the_run_wrote(
    tmp_path: Path, storage: LocalFolderStorage
) -> None:
    journal = UploadJournal.for_run(tmp_path, RUN)
    put_as_run(storage, journal, "u/j/0.png", b"first")
    put_as_run(storage, journal, "u/j/0.png", b"retried")  # the last bytes sent count
    put_as_run(storage, journal, "u/j/1.png", b"mine")
    journal.record([Write.of(BUCKET, "u/j/2.png", b"never stored")])
    storage.put(BUCKET, "u/j/1.png", b"rewritten by another run", "image/png")
    storage.put(BUCKET, "u/j/other.png", b"not in the journal", "image/png")

    report = undo_writes(storage, journal.writes)

    assert report.removed == ["u/j/0.png"]
    assert report.kept == {"u/j/1.png": "its bytes changed since this run wrote them"}
    assert [info.path for info in storage.list(BUCKET)] == ["u/j/1.png", "u/j/other.png"]
    assert storage.get(BUCKET, "u/j/1.png") == b"rewritten by another run"


def test_a_storage_error_while_checking_removes_nothing(
    tmp_path: Path, storage: LocalFolderStorage
) -> None:
    journal = UploadJournal.for_run(tmp_path, RUN)
    put_as_run(storage, journal, "u/j/0.png", b"mine")
    # A record the storage refuses to read (an unclean path): the undo cannot check it.
    journal.record([Write.of(BUCKET, "u//j/1.png", b"x")])

    report = undo_writes(storage, journal.writes)

    assert report.removed == []
    assert set(report.kept) == {"u/j/0.png", "u//j/1.png"}
    assert "INVALID_OBJECT_PATH" in report.kept["u/j/0.png"]
    assert storage.get(BUCKET, "u/j/0.png") == b"mine"
