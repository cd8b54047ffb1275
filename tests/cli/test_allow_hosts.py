"""GENJOBS_REFERENCE_ALLOW_HOSTS as the README writes it, and the refusal that points at it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genjobs.errors import InvalidPayload
from genjobs.references import HttpReference, classify_reference
from genjobs.settings import Settings

USER = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"
LOCAL_URL = "http://127.0.0.1:18765/ref.png"


@pytest.mark.parametrize(
    ("value", "hosts"),
    [
        ("127.0.0.1:18765", ("127.0.0.1:18765",)),
        ("127.0.0.1:18765, storage.lan ,", ("127.0.0.1:18765", "storage.lan")),
        ('["127.0.0.1:18765", "storage.lan"]', ("127.0.0.1:18765", "storage.lan")),
        ("", ()),
    ],
)
def test_allow_hosts_reads_a_comma_separated_or_json_list(
    value: str, hosts: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENJOBS_REFERENCE_ALLOW_HOSTS", value)
    assert Settings().reference_allow_hosts == hosts


def test_a_broken_json_list_is_refused_naming_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENJOBS_REFERENCE_ALLOW_HOSTS", '["127.0.0.1:18765"')
    with pytest.raises(ValidationError, match="comma-separated list"):
        Settings()


def test_the_documented_form_lets_a_loopback_reference_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENJOBS_REFERENCE_ALLOW_HOSTS", "127.0.0.1:18765")
    allowed = Settings().reference_allow_hosts
    reference = classify_reference(LOCAL_URL, USER, role="image", allow_hosts=allowed)
    assert isinstance(reference, HttpReference) and reference.url == LOCAL_URL


def test_a_loopback_refusal_names_the_setting_that_allows_it() -> None:
    with pytest.raises(InvalidPayload) as refused:
        classify_reference(LOCAL_URL, USER, role="image")
    message = str(refused.value)
    assert "loopback address" in message
    assert "GENJOBS_REFERENCE_ALLOW_HOSTS" in message
