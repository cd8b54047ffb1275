"""The main command on the embedded default: a job rendered, stored and called back locally."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from entrypoints.cli import main
from genjobs.devserver.receiver import CallbackReceiver

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_run_renders_stores_and_reports_through_the_local_receiver(
    tmp_path: Path,
    model_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_KEY", "JOB_CALLBACK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENJOBS_HOME", str(tmp_path))
    monkeypatch.setenv("GENJOBS_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("GENJOBS_CALLBACK_URL", "")  # the CLI hands its receiver to the run alone
    monkeypatch.setenv("GENJOBS_JOB_CALLBACK_SECRET", "")
    code = main(
        [
            "run",
            "--prompt",
            "a red boat",
            "--num-images",
            "3",
            "--seed",
            "5",
            "--steps",
            "10",
            "--resolution",
            "256x256",
        ]
    )
    # The receiver reached the run in its settings, not through the environment.
    assert (os.environ["GENJOBS_CALLBACK_URL"], os.environ["GENJOBS_JOB_CALLBACK_SECRET"]) == (
        "",
        "",
    )
    out = capsys.readouterr().out
    assert code == 0, out
    pngs = [Path(p) for p in re.findall(r"^  (\S+\.png)", out, re.MULTILINE)]
    assert [p.name for p in pngs] == ["0.png", "1.png", "2.png"]
    for png in pngs:
        assert Image.open(png).size == (256, 256)
        assert png.with_name(png.stem + ".thumb.webp").is_file()
    assert "Callback accepted by http://127.0.0.1:" in out and "HTTP 200" in out
    job_id = pngs[0].parent.name
    receiver = CallbackReceiver(None, tmp_path / "receiver.sqlite")
    rows = receiver.assets(job_id)
    receiver.stop()
    assert [r["asset_metadata"]["seed"] for r in rows] == [5, 6, 7]
    assert [r["asset_metadata"]["file_size_bytes"] for r in rows] == [
        p.stat().st_size for p in pngs
    ]
