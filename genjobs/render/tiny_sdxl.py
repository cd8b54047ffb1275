"""The tiny embedded SDXL model: random weights, real architecture, saved as a normal folder.

It runs the same loading and rendering code as the production model, in a fraction of a second
on a CPU, so development and tests need no download. The components are built from configs with
a fixed seed, saved with ``save_pretrained`` and loaded back like any other folder. The configs
agree the way real SDXL's do:

- ``unet.cross_attention_dim`` = hidden size of text encoder 1 + text encoder 2;
- ``unet.projection_class_embeddings_input_dim`` = 6 x ``addition_time_embed_dim`` +
  ``projection_dim`` of text encoder 2 (the six time ids of a base model);
- the token ids in the text encoder configs are the tokenizers' ids, the vocabulary fits the
  embeddings and the prompt length fits the position embeddings;
- four VAE blocks, so the VAE scale factor is 8 as in the real model.

Attention runs only on the lowest-resolution UNet level and the VAE has none, which keeps a
1024x1024 image affordable on a CPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genjobs.render.tokenizers import (
    CLIP_BOS_TOKEN,
    CLIP_BYTE_VOCAB_SIZE,
    CLIP_EOS_TOKEN,
    CLIP_MODEL_MAX_LENGTH,
    write_clip_tokenizer,
    write_json,
)

logger = logging.getLogger(__name__)

TINY_SDXL_SEED = 0
TINY_SDXL_RECIPE = 1
"""Raise when the configs below change, so saved folders of an older recipe are rebuilt."""

COMPLETE_MARKER = "genjobs-tiny-model.json"
"""Written last into a finished folder; a folder without a matching marker is rebuilt."""

SDXL_COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)

TEXT_HIDDEN_SIZE = 32
TEXT_PROJECTION_DIM = 32
ADDITION_TIME_EMBED_DIM = 8
BASE_TIME_IDS = 6  # original size, crop origin, target size
POSTERIOR_LOGVAR = -20.0
POSTERIOR_MEAN_GAIN = 30.0

_build_lock = threading.Lock()


def _text_encoder_config(pad_token_id: int) -> dict[str, Any]:
    return {
        "vocab_size": CLIP_BYTE_VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": 37,
        "projection_dim": TEXT_PROJECTION_DIM,
        "num_hidden_layers": 2,  # SDXL reads hidden_states[-2]
        "num_attention_heads": 4,
        "max_position_embeddings": CLIP_MODEL_MAX_LENGTH,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": CLIP_BYTE_VOCAB_SIZE - 2,
        "eos_token_id": CLIP_BYTE_VOCAB_SIZE - 1,  # pooling reads the first eos position
        "pad_token_id": pad_token_id,
    }


def unet_config() -> dict[str, Any]:
    """Three levels; cross-attention only on the lowest one (and in the mid block)."""
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4, 8),
        "transformer_layers_per_block": 1,
        "use_linear_projection": True,
        "norm_num_groups": 8,
        "cross_attention_dim": 2 * TEXT_HIDDEN_SIZE,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": (
            BASE_TIME_IDS * ADDITION_TIME_EMBED_DIM + TEXT_PROJECTION_DIM
        ),
    }


def vae_config() -> dict[str, Any]:
    """Four blocks (scale factor 8), narrow channels and no attention."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (4, 8, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "mid_block_add_attention": False,
        "force_upcast": False,
    }


def scheduler_config() -> dict[str, Any]:
    """SDXL's own Euler schedule."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": "epsilon",
    }


def recipe() -> dict[str, Any]:
    """What a saved folder was built from; a folder with another recipe is rebuilt."""
    import diffusers
    import transformers

    return {
        "model": "tiny-sdxl",
        "recipe": TINY_SDXL_RECIPE,
        "seed": TINY_SDXL_SEED,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _make_posterior_narrow(vae: Any) -> None:
    """Give the encoder a near-deterministic posterior, as a trained VAE has.

    With random weights the predicted log-variance is near 0, so a sampled latent would be mostly
    noise and image-to-image would lose its input; a fixed log-variance of
    ``POSTERIOR_LOGVAR`` keeps the sample on the mean.
    """
    import torch

    latent_channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:latent_channels] *= POSTERIOR_MEAN_GAIN
        vae.quant_conv.bias[:latent_channels] *= POSTERIOR_MEAN_GAIN
        vae.quant_conv.weight[latent_channels:] = 0.0
        vae.quant_conv.bias[latent_channels:] = POSTERIOR_LOGVAR


def build_tiny_sdxl(workdir: Path, seed: int = TINY_SDXL_SEED) -> Any:
    """Build the tiny pipeline in memory; its tokenizers are written into ``workdir``.

    The global torch random state is left as it was.

    Returns:
        A ``StableDiffusionXLPipeline`` on the CPU in float32.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(workdir / "tokenizer"))
    # Real SDXL pads its second tokenizer with "!" (id 0).
    tokenizer_2 = CLIPTokenizer.from_pretrained(
        write_clip_tokenizer(workdir / "tokenizer_2", pad_token="!")
    )
    if tokenizer.convert_tokens_to_ids([CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]) != [
        CLIP_BYTE_VOCAB_SIZE - 2,
        CLIP_BYTE_VOCAB_SIZE - 1,
    ]:
        raise RuntimeError("The tiny CLIP tokenizer does not have the expected special token ids")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config())
        vae = AutoencoderKL(**vae_config())
        _make_posterior_narrow(vae)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(**_text_encoder_config(tokenizer.pad_token_id))
        ).eval()
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**_text_encoder_config(tokenizer_2.pad_token_id))
        ).eval()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
        add_watermarker=False,
    )


def is_complete(folder: Path, expected: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished model built from the ``expected`` recipe."""
    marker = folder / COMPLETE_MARKER
    try:
        written = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(written == expected)


def ensure_model_folder(
    folder: Path, expected: dict[str, Any], build: Callable[[Path], None]
) -> Path:
    """Make sure ``folder`` holds a complete model, building it only when it does not.

    ``build(tmp)`` writes the model into a fresh temporary folder beside ``folder``; the marker
    is written last and the temporary folder is then renamed into place, so a crash or a
    concurrent builder never leaves a half-written model where a loader would read it.

    Args:
        folder: The final model folder.
        expected: The recipe the folder must have been built from (the marker's content).
        build: Writes the model files into the folder it is given.

    Returns:
        ``folder``.
    """
    if is_complete(folder, expected):
        return folder
    with _build_lock:
        if is_complete(folder, expected):
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.build-", dir=folder.parent))
        try:
            build(tmp)
            write_json(tmp / COMPLETE_MARKER, expected)
            if folder.exists():
                stale = folder.with_name(f".{folder.name}.stale-{os.getpid()}-{time.time_ns()}")
                logger.warning("Replacing the incomplete or outdated model folder %s.", folder)
                folder.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            try:
                tmp.rename(folder)
            except OSError:
                if not is_complete(folder, expected):
                    raise
                logger.info("Another process finished the model folder %s first.", folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _save_tiny_sdxl(workdir: Path) -> None:
    started = time.perf_counter()
    pipeline = build_tiny_sdxl(workdir)
    pipeline.save_pretrained(workdir)
    missing = [name for name in SDXL_COMPONENTS if not (workdir / name).is_dir()]
    if missing:
        raise RuntimeError(f"The saved tiny SDXL model lacks the components {missing}")
    logger.info(
        "Built the tiny SDXL model in %s in %.2f s.", workdir, time.perf_counter() - started
    )


def ensure_tiny_sdxl(folder: Path) -> Path:
    """Build and save the tiny SDXL model into ``folder`` unless it is already there.

    Returns:
        The folder, loadable with ``StableDiffusionXLPipeline.from_pretrained(folder)``.
    """
    return ensure_model_folder(Path(folder), recipe(), _save_tiny_sdxl)
