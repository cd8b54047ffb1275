"""scripts/rehearse_runbook.py: how it reads the runbook and what it runs of it (the rehearsal
itself runs in .ci/run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_VALUES = (
    "prefect.internal",
    "abcd.supabase.co",
    "/etc/genjobs",
    "/var/lib/genjobs",
    "/opt/genjobs",
    "/models/",
    "@db:5432",
    "<service_role key",
    "<JOB_CALLBACK_SECRET>",
    "cuda:",
    "<flow run id>",
)


@pytest.fixture(scope="module")
def rehearsal() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rehearse_runbook", REPO / "scripts" / "rehearse_runbook.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rehearse_runbook"] = module
    spec.loader.exec_module(module)
    return module


def test_blocks_keep_order_lines_and_lose_list_indentation(rehearsal: ModuleType) -> None:
    markdown = (
        "# Title\n\n```bash\necho one\n```\n\n- item:\n\n  ```yaml\n  a: 1\n  b: [2]\n  ```\n"
    )
    blocks = rehearsal.extract_blocks(markdown)
    assert [(b.lang, b.text, b.line) for b in blocks] == [
        ("bash", "echo one\n", 3),
        ("yaml", "a: 1\nb: [2]\n", 9),
    ]


def test_every_plan_names_one_block_of_the_runbook(rehearsal: ModuleType) -> None:
    blocks = rehearsal.extract_blocks(rehearsal.RUNBOOK.read_text())
    planned = rehearsal.plan_blocks(blocks)
    actions = {p.marker: p.action for _, p in planned if p.marker}
    assert actions["prefect server start"] == "serve"
    assert actions["create_flow_run"] == "run"
    assert actions["prefect deployment run generate-job/sdxl"] == "run"
    assert [p.action for b, p in planned if "prefect flow-run cancel" in b.text] == [
        "run",
        "syntax",
    ]


def test_no_production_value_reaches_an_executed_block(rehearsal: ModuleType) -> None:
    values = {
        "tmp": "/tmp/r",
        "port": "4321",
        "storage": "http://127.0.0.1:1",
        "key": "k",
        "receiver": "http://127.0.0.1:2/functions/v1/job-callback",
        "venv": "/tmp/r/venv",
        "cancel_run": "run-1",
        "first_run": "run-0",
    }
    blocks = rehearsal.extract_blocks(rehearsal.RUNBOOK.read_text())
    executed = [
        rehearsal.map_block(b, p, values)
        for b, p in rehearsal.plan_blocks(blocks)
        if p.action != "syntax"
    ]
    assert any("--port 4321" in text for text in executed)
    assert any("sqlite+aiosqlite:////tmp/r/prefect.db" in text for text in executed)
    # the temporary folder stands where /etc and /var/lib were
    executed = [
        text.replace("/tmp/r/etc/", "TMP/").replace("/tmp/r/var/", "TMP/") for text in executed
    ]
    leaks = {v for text in executed for v in PRODUCTION_VALUES if v in text}
    assert leaks == set()


def test_a_plan_without_its_block_stops_the_rehearsal(rehearsal: ModuleType) -> None:
    blocks = rehearsal.extract_blocks("```bash\nprefect server start\n```\n")
    with pytest.raises(SystemExit, match="tests/deploy -m slow"):
        rehearsal.plan_blocks(blocks)


@pytest.mark.parametrize(
    ("lang", "text"),
    [("bash", "for x in; do\n"), ("yaml", "a: [1\n"), ("json", "{'a': 1}\n"), ("ini", "k=v\n")],
)
def test_a_block_that_does_not_parse_fails_its_check(
    rehearsal: ModuleType, lang: str, text: str
) -> None:
    with pytest.raises(rehearsal.BlockFailed):
        rehearsal.check_syntax(rehearsal.Block(lang, text, 1))


def test_placeholders_pass_the_shell_check(rehearsal: ModuleType) -> None:
    rehearsal.check_syntax(rehearsal.Block("bash", "prefect flow-run cancel <flow run id>\n", 1))
