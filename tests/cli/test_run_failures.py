"""``genjobs run`` when a job does not complete: one line on stderr, details only under -v."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entrypoints.cli import main
from genjobs.devserver.receiver import CallbackReceiver

pytestmark = pytest.mark.usefixtures("prefect_api")

USER = "3f1b6a52-8c0d-4d8e-9b9a-2f4c7e1d0a11"
LINE = re.compile(
    r"^Job (?P<id>[0-9a-f-]{36}) was refused \(INVALID_PAYLOAD\): Field 'prompt' is required "
    r"for text-to-image jobs \(''\); only an exact copy runs without one\. The failed callback "
    r"was (?P<fate>.+)\.$"
)


def stored_failure(home: Path, job_id: str) -> dict[str, object] | None:
    receiver = CallbackReceiver(None, home / "receiver.sqlite")
    try:
        return receiver.job(job_id)
    finally:
        receiver.stop()


def test_a_refused_job_is_one_line_naming_the_field_and_the_accepted_callback(
    cli_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--prompt", "", "--num-images", "1"])
    out, err = capfd.readouterr()
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = LINE.match(lines[0])
    assert match is not None, lines[0]
    assert re.fullmatch(
        r"accepted by http://127\.0\.0\.1:\d+/functions/v1/job-callback", match["fate"]
    )
    row = stored_failure(cli_home, match["id"])
    assert row is not None and row["status"] == "failed"
    assert "Field 'prompt'" in str(row["error_message"])
    assert "Traceback" not in out + err


def test_verbose_adds_prefect_logs_and_the_traceback_before_the_line(
    cli_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "-v", "--prompt", "", "--num-images", "1"])
    _, err = capfd.readouterr()
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "genjobs.errors.InvalidPayload" in err
    assert LINE.match(err.splitlines()[-1]) is not None, err


def test_a_401_points_at_the_secret_and_keeps_the_refusal_reason(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with CallbackReceiver("the backend's secret") as backend:
        monkeypatch.setenv("GENJOBS_CALLBACK_URL", backend.url)
        monkeypatch.setenv("GENJOBS_JOB_CALLBACK_SECRET", "another secret")
        code = main(["run", "--prompt", "", "--num-images", "1"])
        answered = [request.answered for request in backend.requests]
    _, err = capfd.readouterr()
    assert code == 1 and answered == [401]
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = LINE.match(lines[0])
    assert match is not None, lines[0]
    assert match["fate"].startswith(f"refused by {backend.url} (")
    assert "401" in match["fate"]
    assert "check JOB_CALLBACK_SECRET" in match["fate"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, r"Cannot read the job file \S+: \[Errno 2\] No such file or directory"),
        ("type: sdxl_image_fast\n", r"The job file \S+ is not JSON: Expecting value"),
        ('["sdxl_image_fast"]', r"The job file \S+ holds a JSON list, not an object"),
    ],
)
def test_a_job_file_that_cannot_be_read_is_one_line_and_exit_2(
    content: str | None, problem: str, cli_home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    job_file = cli_home / "job.json"
    if content is not None:
        job_file.write_text(content)
    code = main(["run", "--job-file", str(job_file)])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert re.fullmatch(f"genjobs run: {problem}.*\n", err), err


def test_an_invalid_setting_is_named_in_one_line(
    cli_home: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GENJOBS_REFERENCE_ALLOW_HOSTS", '["127.0.0.1:18765"')
    code = main(["run"])
    _, err = capfd.readouterr()
    assert code == 2
    assert err.startswith(
        "genjobs run: The setting GENJOBS_REFERENCE_ALLOW_HOSTS is invalid: Value error, "
        "must be a comma-separated list"
    )
    assert len(err.splitlines()) == 1


def test_an_unknown_type_lists_the_valid_ones(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--type", "sdxl_fast"])
    _, err = capfd.readouterr()
    assert exited.value.code == 2
    assert "invalid choice: 'sdxl_fast'" in err
    for name in ("sdxl_image_fast", "sdxl_image_high", "video_fast", "wan_video_high"):
        assert f"'{name}'" in err


def test_type_help_lists_the_valid_types(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out, _ = capfd.readouterr()
    help_text = " ".join(out.split())
    assert "job type, one of sdxl_image_fast, sdxl_image_high, video_fast" in help_text
    assert "contract" not in help_text
    assert json.dumps("docs/payload.md")[1:-1] in help_text
