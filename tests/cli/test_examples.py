"""The example job files of docs/payload.md: each validates as documented, and they run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from entrypoints.cli import main
from genjobs.devserver.receiver import CallbackReceiver
from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import plan_job
from genjobs.references import StorageReference, classify_references

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
PAYLOAD_DOC = (ROOT / "docs" / "payload.md").read_text()
# file -> (plan mode, assets, reference roles)
EXPECTED = {
    "text-to-image": ("txt2img", 3, []),
    "image-to-image-modify": ("img2img", 1, ["image"]),
    "exact-copy": ("copy", 1, ["image"]),
    "video": ("t2v", 1, []),
    "video-reference-frames": ("t2v", 1, ["first_frame", "last_frame"]),
}


def test_every_example_is_documented_with_its_command() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(EXPECTED)
    for name in EXPECTED:
        assert f"genjobs run --job-file docs/examples/{name}.json" in PAYLOAD_DOC


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_example_validates_to_its_mode(name: str) -> None:
    job = json.loads((EXAMPLES / f"{name}.json").read_text())
    plan = plan_job(parse_job(job))
    references = classify_references(plan)
    mode, assets, roles = EXPECTED[name]
    assert (plan.mode, plan.num_images, [r.role for r in plan.references]) == (mode, assets, roles)
    # The references are the text-to-image example's own images, in its user's folder.
    for reference in references.values():
        assert isinstance(reference, StorageReference)
        assert reference.path.startswith(f"{plan.user_id}/6f6adcca-04aa-4727-ac5f-3cdae725b001/")


@pytest.mark.usefixtures("prefect_api")
def test_text_to_image_then_modify_run_end_to_end(
    cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("text-to-image", "image-to-image-modify"):
        code = main(["run", "--job-file", f"docs/examples/{name}.json"])
        out = capsys.readouterr().out
        assert code == 0, out
        job = json.loads((EXAMPLES / f"{name}.json").read_text())
        pngs = [Path(p) for p in re.findall(r"^  (\S+\.png)", out, re.MULTILINE)]
        assert len(pngs) == EXPECTED[name][1]
        for png in pngs:
            assert png.parent.name == job["id"] and png.parent.parent.name == job["user_id"]
            assert Image.open(png).size == (512, 512)
        receiver = CallbackReceiver(None, cli_home / "receiver.sqlite")
        rows = receiver.assets(job["id"])
        receiver.stop()
        assert [r["asset_metadata"]["seed"] for r in rows] == [
            job["config"]["seed"] + i for i in range(len(pngs))
        ]
