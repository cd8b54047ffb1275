"""The WAN renderer with the real tiny pipelines: shapes, seeds, solvers, references, cache.

The tiny models have random weights, so pixels say nothing about the prompt or how faithfully a
reference is kept; the tests assert on shapes, determinism, pinned pixel values per seed, what
changes the pixels, the inputs that reach the VACE pipeline, and the reported facts. Sizes are
small (64x96, 9 frames, 2 steps); the tiny model needs multiples of 32.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanVACETransformer3DModel
from PIL import Image
from transformers import AutoTokenizer

from genjobs.errors import (
    InvalidPayload,
    JobCancelled,
    ModelLoadError,
    ReferenceModeUnsupported,
)
from genjobs.jobs.payload import parse_job
from genjobs.jobs.plan import RenderPlan, plan_job
from genjobs.render.base import ModelSpec, RenderOutput
from genjobs.render.cache import PipelineCache
from genjobs.render.sdxl import fit_reference
from genjobs.render.tiny_sdxl import COMPLETE_MARKER
from genjobs.render.tiny_wan import (
    SIZE_MULTIPLE,
    TINY_WAN_FOLDER,
    TRANSFORMER_CONFIG,
    VACE_CONFIG,
    config_digest,
    ensure_tiny_wan,
    ensure_tiny_wan_vace,
)
from genjobs.render.wan import (
    EMBEDDED_SOURCE,
    EMBEDDED_VACE_SOURCE,
    WanRenderer,
    conditioning_inputs,
)
from tests.render.pinned import Pinned, assert_pinned

T2V = ModelSpec(family="wan")
VACE = ModelSpec(family="wan_vace")
WIDTH, HEIGHT, FRAMES, STEPS = 64, 96, 9, 2
REFERENCE_URLS = {
    "single": {"image": "https://example.test/a.png"},
    "start": {"first_frame": "https://example.test/a.png"},
    "end": {"last_frame": "https://example.test/b.png"},
    "both": {
        "first_frame": "https://example.test/a.png",
        "last_frame": "https://example.test/b.png",
    },
}
ROLES = {
    "single": ("image",),
    "start": ("first_frame",),
    "end": ("last_frame",),
    "both": ("first_frame", "last_frame"),
}


def make_plan(
    *, reference_mode: str = "none", seed: int = 3, job_type: str = "video_fast", **updates: Any
) -> RenderPlan:
    """A plan from a real payload, shrunk to test sizes (``updates`` override plan fields)."""
    metadata: dict[str, Any] = {}
    config: dict[str, Any] = {"seed": seed}
    if reference_mode != "none":
        metadata["video_reference_mode"] = reference_mode
        config.update(REFERENCE_URLS[reference_mode])
    raw = {
        "id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "type": job_type,
        "prompt": "a red cat walks in the city at night",
        "config": config,
        "metadata": metadata,
    }
    plan = plan_job(parse_job(raw))
    small: dict[str, Any] = {"width": WIDTH, "height": HEIGHT, "steps": STEPS}
    if plan.mode == "t2v":
        small["num_frames"] = FRAMES
    return plan.model_copy(update={**small, **updates})


def card(seed: int, width: int = 120, height: int = 90) -> Image.Image:
    """A reproducible test card of random coloured blocks (not the target size or aspect): the
    tiny VAE downsamples 32 times, so pixel noise would average out to the same grey."""
    blocks = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks, "RGB").resize((width, height), Image.Resampling.NEAREST)


def references_for(mode: str, image: Image.Image) -> dict[Any, Image.Image]:
    return {role: image for role in ROLES[mode]}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run this module's tiny tensors on one thread: with a few dozen tokens, thread hand-offs
    cost more than they save, and on a busy 2-core machine they cost several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache()


@pytest.fixture(scope="module")
def renderer(model_cache: Path, cache: PipelineCache) -> WanRenderer:
    return WanRenderer(T2V, VACE, model_cache, cache)


@pytest.fixture(scope="module")
def t2v_run(renderer: WanRenderer) -> tuple[RenderOutput, list[tuple[int, int]]]:
    """Seed 3, dpm++ shift 5.0, 9 frames of 64x96, with the steps reported on the way."""
    steps: list[tuple[int, int]] = []
    output = renderer.render(
        make_plan(), {}, on_step=lambda done, total: steps.append((done, total))
    )
    return output, steps


@pytest.fixture(scope="module")
def t2v_video(t2v_run: tuple[RenderOutput, list[tuple[int, int]]]) -> np.ndarray:
    return t2v_run[0].frames[0]


def test_text_to_video_gives_uint8_frames_and_reports_effective_values(
    t2v_run: tuple[RenderOutput, list[tuple[int, int]]],
) -> None:
    output, steps = t2v_run

    (video,) = output.frames
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert video.dtype == np.uint8 and (video.shape[0] - 1) % 4 == 0
    assert video.std() > 0
    assert steps == [(1, STEPS), (2, STEPS)]
    assert output.details == {
        "model": EMBEDDED_SOURCE,
        "vace_model": None,
        "pipeline": "t2v",
        "scheduler": "DPMSolverMultistepScheduler",
        "sample_solver": "dpm++",
        "sample_shift": 5.0,
        "steps": STEPS,
        "guidance_scale": 6.5,
        "frame_num": FRAMES,
        "fps": 16,
        "reference_mode": "none",
        "seed": 3,
        "negative_prompt_used": True,
        "dtype": "float32",
        "vae_dtype": "float32",
        "device": "cpu",
    }


def test_same_seed_repeats_and_another_seed_differs(
    renderer: WanRenderer, t2v_video: np.ndarray
) -> None:
    again = renderer.render(make_plan(seed=3), {}).frames[0]
    other = renderer.render(make_plan(seed=4), {}).frames[0]

    assert np.array_equal(again, t2v_video)
    assert not np.array_equal(other, t2v_video)


# Pixels of the text-to-video render of seed 3 and seed 4 (dpm++, shift 5.0, CFG 6.5).
T2V_SEED_3 = Pinned(
    sample=[
        [126, 143, 85, 127, 123, 82, 107, 152, 100, 113, 141, 122, 107, 152, 100, 113, 141, 122],
        [111, 199, 148, 171, 87, 87, 110, 225, 114, 154, 160, 133, 110, 225, 114, 155, 161, 128],
        [107, 192, 168, 194, 115, 140, 101, 226, 113, 188, 176, 172, 101, 226, 113, 188, 175, 171],
    ],
    means=[124.649, 112.497, 158.004, 148.532, 149.227, 167.031, 166.342, 174.643, 174.384],
)
T2V_SEED_4 = Pinned(
    sample=[
        [126, 143, 85, 127, 123, 82, 107, 152, 100, 113, 141, 122, 107, 152, 100, 113, 141, 122],
        [112, 196, 152, 171, 87, 87, 110, 225, 114, 155, 160, 131, 111, 223, 115, 148, 152, 130],
        [115, 186, 160, 194, 115, 140, 101, 226, 114, 188, 176, 171, 101, 227, 114, 187, 175, 171],
    ],
    means=[124.625, 112.493, 157.665, 148.568, 149.3, 167.179, 166.621, 174.816, 174.814],
)


def test_text_to_video_pixels_are_pinned_per_seed(
    renderer: WanRenderer, t2v_video: np.ndarray
) -> None:
    other = renderer.render(make_plan(seed=4), {}).frames[0]

    assert_pinned(t2v_video, T2V_SEED_3)
    assert_pinned(other, T2V_SEED_4)


def test_seed_zero_is_used_as_a_seed(renderer: WanRenderer, t2v_video: np.ndarray) -> None:
    output = renderer.render(make_plan(seed=0), {})

    assert output.details["seed"] == 0
    assert not np.array_equal(output.frames[0], t2v_video)


def test_unipc_runs_per_job_and_leaves_the_shared_scheduler_alone(
    renderer: WanRenderer, t2v_video: np.ndarray
) -> None:
    shared = renderer.pipelines().t2v
    scheduler_before = shared.scheduler

    unipc = renderer.render(make_plan(sample_solver="unipc"), {})
    dpm_again = renderer.render(make_plan(), {}).frames[0]

    assert unipc.details["scheduler"] == "UniPCMultistepScheduler"
    assert (unipc.details["sample_solver"], unipc.details["sample_shift"]) == ("unipc", 5.0)
    assert not np.array_equal(unipc.frames[0], t2v_video)
    assert np.array_equal(dpm_again, t2v_video)
    assert shared.scheduler is scheduler_before
    assert shared.scheduler.config.flow_shift == 3.0  # the folder's own, untouched
    assert type(shared.scheduler) is UniPCMultistepScheduler


def test_an_unknown_solver_is_refused_before_loading(model_cache: Path) -> None:
    cache = PipelineCache()
    with pytest.raises(InvalidPayload, match="sample_solver"):
        WanRenderer(T2V, VACE, model_cache, cache).render(make_plan(sample_solver="euler"), {})
    assert cache.load_count() == 0


def test_single_frame_types_render_one_image(renderer: WanRenderer) -> None:
    plan = make_plan(job_type="image_fast")
    assert (plan.mode, plan.num_frames) == ("frame", 1)

    output = renderer.render(plan, {})

    (image,) = output.frames
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert output.details["frame_num"] == 1


@pytest.mark.parametrize(("field", "value"), [("width", 40), ("height", 72), ("num_frames", 10)])
def test_sizes_and_frame_counts_the_pipeline_would_bend_are_refused(
    renderer: WanRenderer, field: str, value: int
) -> None:
    updates: dict[str, Any] = {field: value}
    with pytest.raises(InvalidPayload, match=f"{value}"):
        renderer.render(make_plan(**updates), {})


@pytest.mark.parametrize(("width", "height"), [(48, 96), (64, 80)])
def test_sizes_the_loaded_model_would_round_down_are_refused(
    renderer: WanRenderer, width: int, height: int
) -> None:
    # Multiples of 16, as the released model needs, but not of the tiny model's 32: diffusers
    # would render a smaller video with only a warning.
    assert SIZE_MULTIPLE == 32
    with pytest.raises(InvalidPayload, match=f"multiples of 32 .*got {width}x{height}"):
        renderer.render(make_plan(width=width, height=height), {})


def test_a_start_frame_changes_the_video_and_depends_on_the_image(
    renderer: WanRenderer, t2v_video: np.ndarray
) -> None:
    a = renderer.render(make_plan(reference_mode="start"), {"first_frame": card(1)})
    a_again = renderer.render(make_plan(reference_mode="start"), {"first_frame": card(1)})
    b = renderer.render(make_plan(reference_mode="start"), {"first_frame": card(2)})

    assert a.frames[0].shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert not np.array_equal(a.frames[0], t2v_video)
    assert not np.array_equal(a.frames[0], b.frames[0])
    assert np.array_equal(a.frames[0], a_again.frames[0])
    assert a.details["pipeline"] == "vace"
    assert a.details["vace_model"] == EMBEDDED_VACE_SOURCE
    assert a.details["reference_mode"] == "start"


# Pixels of seed 3 with card(1) kept as the first frame, and with card(2) as reference image.
VACE_START = Pinned(
    sample=[
        [126, 143, 85, 127, 123, 82, 107, 152, 100, 113, 141, 122, 107, 152, 100, 113, 141, 122],
        [111, 194, 154, 177, 90, 91, 110, 225, 114, 155, 160, 132, 110, 225, 114, 150, 152, 126],
        [111, 185, 156, 138, 70, 77, 101, 226, 113, 187, 176, 171, 101, 227, 114, 188, 175, 172],
    ],
    means=[124.614, 112.533, 157.724, 148.263, 149.332, 166.638, 165.13, 173.722, 173.565],
)
VACE_SINGLE = Pinned(
    sample=[
        [126, 144, 86, 127, 123, 82, 107, 152, 100, 113, 141, 122, 107, 152, 100, 113, 141, 122],
        [113, 196, 151, 171, 87, 87, 110, 225, 114, 155, 160, 131, 110, 225, 114, 155, 159, 130],
        [108, 185, 154, 194, 115, 140, 101, 226, 113, 187, 176, 171, 101, 226, 113, 187, 175, 171],
    ],
    means=[124.668, 112.419, 157.932, 148.505, 149.303, 167.203, 167.079, 175.329, 175.051],
)


def test_reference_frame_pixels_are_pinned(renderer: WanRenderer, t2v_video: np.ndarray) -> None:
    start = renderer.render(make_plan(reference_mode="start"), {"first_frame": card(1)})
    single = renderer.render(make_plan(reference_mode="single"), {"image": card(2)})

    assert_pinned(start.frames[0], VACE_START)
    assert_pinned(single.frames[0], VACE_SINGLE)
    assert_pinned(t2v_video, T2V_SEED_3)


@pytest.mark.parametrize("mode", ["single", "end", "both"])
def test_other_reference_modes_render(renderer: WanRenderer, mode: str) -> None:
    output = renderer.render(make_plan(reference_mode=mode), references_for(mode, card(5)))

    (video,) = output.frames
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3) and video.dtype == np.uint8
    assert (output.details["reference_mode"], output.details["pipeline"]) == (mode, "vace")


@pytest.mark.parametrize("mode", ["start", "end", "both"])
def test_frame_conditioning_keeps_the_fitted_reference_and_generates_the_rest(mode: str) -> None:
    image = card(7, width=200, height=100)
    fitted = np.asarray(fit_reference(image, WIDTH, HEIGHT))

    inputs = conditioning_inputs(mode, references_for(mode, image), FRAMES, WIDTH, HEIGHT)

    kept = {"start": {0}, "end": {FRAMES - 1}, "both": {0, FRAMES - 1}}[mode]
    assert set(inputs) == {"video", "mask"}
    assert len(inputs["video"]) == len(inputs["mask"]) == FRAMES
    for index, (frame, mask) in enumerate(zip(inputs["video"], inputs["mask"], strict=True)):
        assert frame.size == mask.size == (WIDTH, HEIGHT)
        assert (frame.mode, mask.mode) == ("RGB", "L")
        if index in kept:
            assert np.array_equal(np.asarray(frame), fitted)
            assert np.asarray(mask).max() == 0  # black keeps
        else:
            assert np.all(np.asarray(frame) == 128)
            assert np.asarray(mask).min() == 255  # white generates


def test_single_reference_is_passed_as_a_fitted_reference_image() -> None:
    inputs = conditioning_inputs("single", {"image": card(8)}, FRAMES, WIDTH, HEIGHT)

    assert set(inputs) == {"reference_images"}
    (image,) = inputs["reference_images"]
    assert image.size == (WIDTH, HEIGHT)


def test_a_missing_reference_image_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="last_frame"):
        conditioning_inputs("both", {"first_frame": card(1)}, FRAMES, WIDTH, HEIGHT)


def test_each_pipeline_is_loaded_once_and_vace_shares_the_text_stack(
    model_cache: Path, cache: PipelineCache, renderer: WanRenderer
) -> None:
    # A renderer per job (as the render task makes them) reuses the models already loaded.
    first = WanRenderer(T2V, VACE, model_cache, cache)
    first.render(make_plan(seed=1), {})
    first.render(make_plan(reference_mode="start", seed=1), {"first_frame": card(1)})
    second = WanRenderer(T2V, VACE, model_cache, cache)
    second.render(make_plan(reference_mode="end", seed=2), {"last_frame": card(2)})

    assert (cache.load_count("wan"), cache.load_count("wan_vace")) == (1, 1)
    t2v = renderer.pipelines().t2v
    vace = renderer.vace_pipeline().pipeline
    assert vace.text_encoder is t2v.text_encoder
    assert vace.tokenizer is t2v.tokenizer
    assert vace.vae is t2v.vae
    assert isinstance(vace.transformer, WanVACETransformer3DModel)
    assert t2v.transformer is not vace.transformer


def test_a_vace_transformer_with_another_patch_is_refused(
    model_cache: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "vace-patch-2"
    WanVACETransformer3DModel(**{**VACE_CONFIG, "patch_size": (1, 2, 2)}).save_pretrained(folder)
    vace = ModelSpec(family="wan_vace", source=str(folder))
    renderer = WanRenderer(T2V, vace, model_cache, PipelineCache())

    with pytest.raises(ModelLoadError, match=r"'patch_size': \(1, 2, 2\)"):
        renderer.render(make_plan(reference_mode="start"), {"first_frame": card(1)})


def test_references_without_a_vace_model_are_rejected_before_loading(model_cache: Path) -> None:
    cache = PipelineCache()
    renderer = WanRenderer(T2V, None, model_cache, cache)

    with pytest.raises(ReferenceModeUnsupported, match="needs a VACE model") as caught:
        renderer.render(make_plan(reference_mode="start"), {"first_frame": card(1)})

    assert caught.value.code == "REFERENCE_MODE_UNSUPPORTED"
    assert cache.load_count() == 0


def test_cancelling_from_the_step_callback_propagates(
    renderer: WanRenderer, t2v_video: np.ndarray
) -> None:
    def cancel(done: int, total: int) -> None:
        raise JobCancelled(f"cancelled at step {done} of {total}")

    with pytest.raises(JobCancelled, match="step 1 of 2"):
        renderer.render(make_plan(), {}, on_step=cancel)
    assert np.array_equal(renderer.render(make_plan(), {}).frames[0], t2v_video)


def test_a_saved_folder_loads_like_the_embedded_model(
    model_cache: Path, t2v_video: np.ndarray
) -> None:
    folder = str(model_cache / TINY_WAN_FOLDER)
    renderer = WanRenderer(
        ModelSpec(family="wan", source=folder), None, model_cache, PipelineCache()
    )

    output = renderer.render(make_plan(), {})

    assert output.details["model"] == folder
    assert np.array_equal(output.frames[0], t2v_video)


def test_a_folder_without_vocabulary_fails_to_load(model_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken-wan"
    shutil.copytree(ensure_tiny_wan(model_cache / TINY_WAN_FOLDER), folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    renderer = WanRenderer(ModelSpec(family="wan", source=str(folder)), None, tmp_path)

    with pytest.raises(ModelLoadError, match=r"'tokenizer' has \d+ tokens"):
        renderer.render(make_plan(), {})


def test_tiny_models_are_consistent_and_built_once(model_cache: Path, tmp_path: Path) -> None:
    folder = ensure_tiny_wan(model_cache / TINY_WAN_FOLDER)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    built_at = weights.stat().st_mtime_ns

    assert ensure_tiny_wan(model_cache / TINY_WAN_FOLDER) == folder
    assert weights.stat().st_mtime_ns == built_at
    rebuilt = ensure_tiny_wan(tmp_path / "again")
    again = rebuilt / "transformer" / "diffusion_pytorch_model.safetensors"
    assert again.read_bytes() == weights.read_bytes()  # fixed seed, same numbers
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer("a cat").input_ids[-1] == 1
    pipe = WanPipeline.from_pretrained(folder)
    assert not pipe.text_encoder.training
    assert pipe.text_encoder.config.vocab_size >= len(pipe.tokenizer)
    transformer = pipe.transformer.config
    assert transformer.text_dim == pipe.text_encoder.config.d_model
    assert transformer.rope_max_seq_len == 1024
    assert transformer.attention_head_dim % 2 == 0 and transformer.attention_head_dim >= 6

    vace = WanVACETransformer3DModel.from_pretrained(ensure_tiny_wan_vace(tmp_path / "vace"))
    config = vace.config
    # The mask is folded into 32 x 32 channels per latent pixel: 2 x 16 latent channels + 1024.
    assert (config.in_channels, config.vace_in_channels) == (16, 2 * 16 + 32 * 32)
    assert 0 in config.vace_layers and max(config.vace_layers) < config.num_layers
    assert config.text_dim == transformer.text_dim
    assert tuple(config.patch_size) == tuple(transformer.patch_size) == (1, 1, 1)
    assert pipe.vae_scale_factor_spatial == 32 and pipe.vae_scale_factor_temporal == 4


def test_a_full_size_video_is_8190_tokens(model_cache: Path) -> None:
    pipe = WanPipeline.from_pretrained(ensure_tiny_wan(model_cache / TINY_WAN_FOLDER))
    latent_frames = (81 - 1) // pipe.vae_scale_factor_temporal + 1
    t, h, w = pipe.transformer.config.patch_size
    factor = pipe.vae_scale_factor_spatial

    tokens = latent_frames // t * (832 // factor // h) * (480 // factor // w)

    assert tokens == 21 * 26 * 15 == 8190


def test_folder_names_follow_the_configs_and_an_older_model_is_not_loaded(
    tmp_path: Path,
) -> None:
    coarser = {**TRANSFORMER_CONFIG, "patch_size": (1, 2, 2)}
    assert config_digest(transformer=coarser) != config_digest(transformer=TRANSFORMER_CONFIG)
    assert TINY_WAN_FOLDER.startswith("tiny-wan-") and TINY_WAN_FOLDER != "tiny-wan"
    # A folder of the same name whose marker records other configs is rebuilt, not loaded.
    folder = ensure_tiny_wan(tmp_path / TINY_WAN_FOLDER)
    marker = folder / COMPLETE_MARKER
    recorded = marker.read_text(encoding="utf-8")
    marker.write_text(recorded.replace('"config": "', '"config": "older-'), encoding="utf-8")
    (folder / "transformer" / "config.json").write_text("{}", encoding="utf-8")

    assert ensure_tiny_wan(tmp_path / TINY_WAN_FOLDER) == folder
    assert marker.read_text(encoding="utf-8") == recorded
    WanPipeline.from_pretrained(folder)  # the half-broken older folder was replaced
