"""The SDXL renderer with the real tiny pipeline: sizes, seeds, modes, cache, errors.

The tiny model has random weights, so pixels say nothing about the prompt; the tests assert on
shapes, determinism, pinned pixel values per seed, what changes the pixels and what does not, and
on the reported facts.
"""

from __future__ import annotations

import shutil
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTokenizer

from genjobs.errors import JobCancelled, ModelLoadError, OutOfMemory
from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.render.base import ModelSpec
from genjobs.render.cache import PipelineCache
from genjobs.render.sdxl import (
    EMBEDDED_SOURCE,
    SdxlRenderer,
    fit_reference,
    source_kind,
)
from genjobs.render.tiny_sdxl import COMPLETE_MARKER, ensure_tiny_sdxl
from genjobs.render.tokenizers import check_tokenizer, write_clip_tokenizer
from tests.render.pinned import Pinned, assert_pinned

EMBEDDED = ModelSpec(family="sdxl")


def make_plan(
    *,
    steps: int = 3,
    prompt: str = "a lighthouse at dusk",
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    **fields: Any,
) -> RenderPlan:
    """A plan from a real payload; ``steps`` then overrides the effective steps for speed."""
    raw: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "type": "sdxl_image_fast",
        "prompt": prompt,
        "config": {"num_images": 1, "seed": 7, "resolution": "256x256", **(config or {})},
        "metadata": metadata or {},
        **fields,
    }
    plan = plan_job(parse_job(raw))
    return plan.model_copy(update={"steps": steps}) if steps != plan.steps else plan


def reference_image(width: int = 320, height: int = 240) -> Image.Image:
    """An RGBA test card: red left half, blue centre square, green bottom band."""
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., 3] = 255
    pixels[:, : width // 2, 0] = 255
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (0, 0, 255, 255)
    pixels[-height // 8 :, :, 1] = 255
    return Image.fromarray(pixels, "RGBA")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache()


@pytest.fixture(scope="module")
def renderer(model_cache: Path, cache: PipelineCache) -> SdxlRenderer:
    return SdxlRenderer(EMBEDDED, model_cache, cache)


@pytest.fixture(scope="module")
def txt2img_256(renderer: SdxlRenderer) -> np.ndarray:
    """Seed 7, no negative prompt, 256x256, 3 steps."""
    return renderer.render(make_plan(), {}).frames[0]


# Tokenizers


def test_clip_tokenizer_files_load_with_the_real_layout(tmp_path: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tokenizer"))

    assert len(tokenizer) == 514
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (512, 513)
    assert tokenizer.model_max_length == 77
    # Bytes keep their own ids; the last byte of a word takes its "</w>" form (256 + byte).
    a, c, t = ord("a"), ord("c"), ord("t")
    assert tokenizer("A cat").input_ids == [512, 256 + a, c, a, 256 + t, 513]
    check_tokenizer(tokenizer, "tokenizer", 514)


def test_check_tokenizer_refuses_the_silent_two_token_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "empty")
    assert len(tokenizer) == 2  # what transformers 5 gives without vocabulary files

    with pytest.raises(ModelLoadError, match="'tokenizer_2' has 2 tokens") as caught:
        check_tokenizer(tokenizer, "tokenizer_2", 514)
    assert caught.value.code == "MODEL_LOAD_ERROR"


def test_loading_a_folder_without_vocabulary_fails(model_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken-sdxl"
    shutil.copytree(ensure_tiny_sdxl(model_cache / "tiny-sdxl"), folder)
    for path in (folder / "tokenizer_2").iterdir():
        if path.name != "tokenizer_config.json":
            path.unlink()
    renderer = SdxlRenderer(ModelSpec(family="sdxl", source=str(folder)), tmp_path, PipelineCache())

    with pytest.raises(ModelLoadError, match="tokenizer_2"):
        renderer.render(make_plan(), {})


# The tiny model folder


def test_tiny_model_is_built_once_and_rebuilt_when_incomplete(tmp_path: Path) -> None:
    folder = ensure_tiny_sdxl(tmp_path / "tiny-sdxl")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    first = weights.stat().st_mtime_ns

    assert ensure_tiny_sdxl(folder) == folder
    assert weights.stat().st_mtime_ns == first

    (folder / COMPLETE_MARKER).unlink()  # as if a build had crashed before finishing
    ensure_tiny_sdxl(folder)
    assert (folder / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sdxl"]  # no temp folders left


def test_tiny_model_weights_are_the_same_on_every_build(tmp_path: Path, model_cache: Path) -> None:
    shared = ensure_tiny_sdxl(model_cache / "tiny-sdxl")
    fresh = ensure_tiny_sdxl(tmp_path / "tiny-sdxl")
    for component in ("unet", "vae"):
        name = "diffusion_pytorch_model.safetensors"
        assert (fresh / component / name).read_bytes() == (shared / component / name).read_bytes()


# Text to image


def test_txt2img_gives_the_plan_size_and_reports_facts(renderer: SdxlRenderer) -> None:
    plan = make_plan(config={"resolution": "1024x576"}, steps=2)
    steps: list[tuple[int, int]] = []

    output = renderer.render(plan, {}, on_step=lambda step, total: steps.append((step, total)))

    assert [frame.shape for frame in output.frames] == [(576, 1024, 3)]
    assert output.frames[0].dtype == np.uint8
    assert steps == [(1, 2), (2, 2)]
    assert output.details == {
        "model": EMBEDDED_SOURCE,
        "scheduler": "EulerDiscreteScheduler",
        "pipeline": "txt2img",
        "steps": 2,
        "guidance_scale": 6.0,
        "denoise_strength": None,
        "denoising_steps": 2,
        "resize_policy": None,
        "negative_prompt_used": False,
        "dtype": "float32",
        "device": "cpu",
    }


def test_same_plan_and_seeds_give_identical_pixels(
    renderer: SdxlRenderer, txt2img_256: np.ndarray
) -> None:
    again = renderer.render(make_plan(), {}).frames[0]
    assert again.shape == (256, 256, 3)
    assert np.array_equal(again, txt2img_256)


def test_a_batch_holds_one_distinct_image_per_seed_and_seed_zero_counts(
    renderer: SdxlRenderer,
) -> None:
    plan = make_plan(config={"num_images": 3, "seed": 0})
    assert plan.seeds == (0, 1, 2)

    frames = renderer.render(plan, {}).frames

    assert [frame.shape for frame in frames] == [(256, 256, 3)] * 3
    pairs = [(frames[0], frames[1]), (frames[1], frames[2]), (frames[0], frames[2])]
    assert min(mean_abs_diff(a, b) for a, b in pairs) > 1.0
    # Image 0 is the image of seed 0 alone (batched arithmetic may round a pixel apart), so
    # seed 0 is a real seed, not "no seed".
    alone = renderer.render(make_plan(config={"seed": 0}), {}).frames[0]
    assert mean_abs_diff(frames[0], alone) < 0.5
    assert mean_abs_diff(frames[1], alone) > 1.0


def test_a_negative_prompt_changes_the_image(
    renderer: SdxlRenderer, txt2img_256: np.ndarray
) -> None:
    output = renderer.render(make_plan(negative_prompt="blurry, low quality"), {})

    assert output.details["negative_prompt_used"] is True
    assert mean_abs_diff(output.frames[0], txt2img_256) > 0.5


# Pinned pixels of 256x256 renders at 2 steps: text-to-image of seeds 7 and 8, image-to-image
# (strength 0.5 of 4 steps) and exact copy (one step) of the test card with seed 7.
TXT2IMG_SEED_7 = Pinned(
    sample=[
        [142, 99, 138, 135, 101, 136, 135, 104, 135, 128, 123, 131],
        [123, 119, 145, 117, 75, 127, 143, 108, 128, 144, 101, 144],
        [109, 107, 119, 124, 111, 138, 134, 84, 143, 65, 84, 10],
        [114, 114, 130, 147, 107, 93, 116, 124, 117, 129, 103, 150],
    ],
    means=[127.502, 110.025, 123.402],
)
TXT2IMG_SEED_8 = Pinned(
    sample=[
        [146, 94, 139, 136, 92, 139, 132, 114, 128, 135, 96, 138],
        [119, 113, 130, 124, 114, 136, 114, 127, 114, 108, 59, 127],
        [149, 105, 78, 123, 101, 142, 161, 96, 149, 127, 97, 140],
        [141, 111, 136, 82, 106, 86, 152, 97, 161, 118, 101, 107],
    ],
    means=[127.529, 110.215, 123.502],
)
IMG2IMG_SEED_7 = Pinned(
    sample=[
        [143, 95, 137, 133, 105, 140, 133, 96, 136, 128, 121, 135],
        [122, 111, 134, 122, 137, 144, 127, 97, 139, 120, 106, 130],
        [127, 110, 139, 125, 96, 143, 129, 101, 147, 139, 97, 146],
        [124, 114, 136, 77, 179, 0, 121, 112, 128, 137, 114, 135],
    ],
    means=[128.808, 110.301, 128.721],
)
EXACT_COPY_SEED_7 = Pinned(
    sample=[
        [137, 99, 135, 131, 107, 137, 132, 101, 133, 133, 102, 133],
        [128, 111, 134, 128, 106, 139, 130, 104, 136, 125, 103, 137],
        [128, 111, 135, 128, 104, 137, 129, 105, 139, 127, 105, 137],
        [128, 110, 134, 63, 255, 0, 83, 101, 51, 126, 104, 138],
    ],
    means=[127.95, 109.303, 129.477],
)
REFERENCE_URL = "https://x/ref.png"
PINNED_STRIDE = 64


def test_txt2img_pixels_are_pinned_per_seed(renderer: SdxlRenderer) -> None:
    seed_7 = renderer.render(make_plan(steps=2), {}).frames[0]
    seed_8 = renderer.render(make_plan(steps=2, config={"seed": 8}), {}).frames[0]

    assert_pinned(seed_7, TXT2IMG_SEED_7, PINNED_STRIDE)
    assert_pinned(seed_8, TXT2IMG_SEED_8, PINNED_STRIDE)


def test_img2img_and_exact_copy_pixels_are_pinned(renderer: SdxlRenderer) -> None:
    modify = make_plan(
        steps=4,
        metadata={
            "reference_mode": "modify",
            "reference_image_url": REFERENCE_URL,
            "denoise_strength": 0.5,
        },
    )
    copy = make_plan(
        steps=20, metadata={"exact_copy_mode": True, "reference_image_url": REFERENCE_URL}
    )
    assert (modify.denoising_steps, copy.denoising_steps) == (2, 1)

    modified = renderer.render(modify, {"image": reference_image()}).frames[0]
    copied = renderer.render(copy, {"image": reference_image()}).frames[0]

    assert_pinned(modified, IMG2IMG_SEED_7, PINNED_STRIDE)
    assert_pinned(copied, EXACT_COPY_SEED_7, PINNED_STRIDE)


# Image to image


def test_fit_reference_takes_a_true_centre_crop() -> None:
    card = reference_image(320, 240)  # 4:3, RGBA; the green band is the bottom 30 rows

    square = np.asarray(fit_reference(card, 256, 256))
    wide = np.asarray(fit_reference(card, 1024, 576))

    assert square.shape == (256, 256, 3) and wide.shape == (576, 1024, 3)
    # 1:1 keeps the middle 240 of 320 columns and every row: red, blue centre, black, green.
    assert tuple(square[5, 5]) == (255, 0, 0) and tuple(square[5, 250]) == (0, 0, 0)
    assert tuple(square[128, 128]) == (0, 0, 255)
    assert tuple(square[250, 5]) == (255, 255, 0) and tuple(square[250, 250]) == (0, 255, 0)
    # 16:9 keeps every column and the middle 180 of 240 rows: the green band is cropped away,
    # nothing is stretched or letterboxed.
    assert tuple(wide[2, 2]) == (255, 0, 0) and tuple(wide[2, -3]) == (0, 0, 0)
    assert tuple(wide[288, 512]) == (0, 0, 255)
    assert int(wide[:-8, :, 1].max()) == 0


def test_img2img_modify_gives_the_plan_size(
    renderer: SdxlRenderer, txt2img_256: np.ndarray
) -> None:
    plan = make_plan(
        steps=4,
        config={"num_images": 3},
        metadata={
            "reference_mode": "modify",
            "reference_image_url": "https://x/ref.png",
            "denoise_strength": 0.5,
        },
    )
    steps: list[tuple[int, int]] = []

    output = renderer.render(
        plan, {"image": reference_image()}, on_step=lambda step, total: steps.append((step, total))
    )

    assert [frame.shape for frame in output.frames] == [(256, 256, 3)] * 3
    assert plan.denoising_steps == 2
    assert steps == [(1, 2), (2, 2)]
    assert mean_abs_diff(output.frames[0], output.frames[1]) > 1.0
    assert mean_abs_diff(output.frames[0], txt2img_256) > 1.0
    details = output.details
    assert details["pipeline"] == "img2img"
    assert details["resize_policy"] == "center_crop"
    assert (details["steps"], details["denoise_strength"], details["denoising_steps"]) == (
        4,
        0.5,
        2,
    )


def test_exact_copy_keeps_the_reference_latents(
    renderer: SdxlRenderer, txt2img_256: np.ndarray
) -> None:
    plan = make_plan(
        steps=20, metadata={"exact_copy_mode": True, "reference_image_url": "https://x/ref.png"}
    )
    reference = reference_image()

    output = renderer.render(plan, {"image": reference})

    copy = output.frames[0]
    assert copy.shape == (256, 256, 3)
    assert output.details["denoising_steps"] == 1
    assert output.details["guidance_scale"] == 1.0
    assert output.details["negative_prompt_used"] is False
    # The tiny VAE has random weights, so the best any copy can do is its encode-decode round
    # trip of the fitted reference: the copy is that round trip up to one tiny denoising step.
    pipe = renderer.pipelines().img2img
    with torch.inference_mode():
        pixels = pipe.image_processor.preprocess(fit_reference(reference, 256, 256))
        latents = pipe.vae.encode(pixels).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample
    round_trip = (pipe.image_processor.postprocess(decoded, output_type="np")[0] * 255).round()
    assert mean_abs_diff(copy, round_trip) < 2.0
    assert mean_abs_diff(txt2img_256, round_trip) > 10.0
    other = renderer.render(plan, {"image": reference.transpose(Image.Transpose.ROTATE_180)})
    assert mean_abs_diff(other.frames[0], copy) > 1.0


# Cache, callbacks, errors


def test_the_model_is_loaded_once_for_all_renders(
    renderer: SdxlRenderer, cache: PipelineCache, txt2img_256: np.ndarray
) -> None:
    SdxlRenderer(EMBEDDED, renderer.model_dir, cache).render(make_plan(), {})

    assert cache.load_count("sdxl") == 1
    entry = renderer.pipelines()
    assert entry.img2img.unet is entry.text2img.unet
    assert entry.img2img.vae is entry.text2img.vae


def test_cancellation_from_the_step_callback_propagates(renderer: SdxlRenderer) -> None:
    def cancel(step: int, total: int) -> None:
        raise JobCancelled("Job was cancelled")

    with pytest.raises(JobCancelled):
        renderer.render(make_plan(), {}, on_step=cancel)


def test_out_of_memory_is_retryable_and_leaves_the_renderer_usable(
    renderer: SdxlRenderer, txt2img_256: np.ndarray
) -> None:
    def exhaust(step: int, total: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory) as caught:
        renderer.render(make_plan(), {}, on_step=exhaust)

    assert caught.value.retryable is True
    assert caught.value.code == "OOM_ERROR"
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    assert np.array_equal(renderer.render(make_plan(), {}).frames[0], txt2img_256)


def test_a_named_scheduler_is_set_and_reported(model_cache: Path) -> None:
    cache = PipelineCache()
    spec = ModelSpec(family="sdxl", scheduler="DPMSolverMultistepScheduler")

    output = SdxlRenderer(spec, model_cache, cache).render(make_plan(), {})

    assert output.details["scheduler"] == "DPMSolverMultistepScheduler"
    assert cache.load_count("sdxl") == 1


def test_an_unknown_scheduler_is_a_model_load_error(model_cache: Path) -> None:
    spec = ModelSpec(family="sdxl", scheduler="NoSuchScheduler")
    with pytest.raises(ModelLoadError, match="NoSuchScheduler"):
        SdxlRenderer(spec, model_cache, PipelineCache()).render(make_plan(), {})


def test_sources_route_to_their_loaders(tmp_path: Path) -> None:
    assert source_kind(None) == "embedded"
    assert source_kind("/models/lustify_v20.safetensors") == "single_file"
    assert source_kind("/models/old.CKPT") == "single_file"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind("stabilityai/stable-diffusion-xl-base-1.0") == "hub"


def test_a_single_file_source_is_loaded_with_from_single_file(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"not a safetensors file")
    renderer = SdxlRenderer(
        ModelSpec(family="sdxl", source=str(checkpoint)), tmp_path, PipelineCache()
    )

    with pytest.raises(ModelLoadError, match="single-file source") as caught:
        renderer.render(make_plan(), {})

    cause = caught.value.__cause__
    assert cause is not None
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(cause.__traceback__)]
    assert "from_single_file" in frames
