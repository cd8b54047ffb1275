"""Install settings the way users do: as the environment variables a flow reads at its entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import AliasChoices, SecretStr

from genjobs.settings import Settings


def _names(field: str) -> list[str]:
    """The variables ``field`` is read from, the preferred one first."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"GENJOBS_{field.upper()}"]


def _text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | dict):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def settings_environment(settings: Settings) -> dict[str, str | None]:
    """Variable -> value that makes ``Settings()`` read ``settings`` back (``None``: unset)."""
    environment: dict[str, str | None] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        first, *others = _names(field)
        environment[first] = None if value is None else _text(value)
        environment.update(dict.fromkeys(others))  # an alias must not win over the value
    return environment


def install_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """Set the environment so a flow's entry reads ``settings`` (undone after the test)."""
    for name, value in settings_environment(settings).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Settings() == settings, "the environment does not read back as the settings"
    return settings
