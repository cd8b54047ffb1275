"""Tiny random-weight WAN 2.1 models, built from configs at run time (no hub, no download).

They keep the real model's parts (UMT5 text encoder, 3D transformer, causal video VAE with
temporal factor 4, flow-matching scheduler, a VACE transformer that fits the same text encoder
and VAE) at a size that renders 81 frames of 480x832 in seconds per step on a small CPU:

- the VAE downsamples 32 times in space (five levels, two of them also in time) instead of 8, and
  the transformer's patch is (1, 1, 1), so a 480x832 video of 81 frames is 21 x 26 x 15 = 8190
  tokens (the real layout, 8 x (1, 2, 2), gives 32760 and costs a minute per step here);
- sizes must therefore be multiples of 32 (the real model: 16);
- the VAE has one residual block and two channels per level, so decoding 81 full-size frames
  stays cheap; the transformer has one block of two heads.

Weights come from a fixed torch seed, so a folder built twice holds the same numbers (the global
torch random state is left as it was). Each folder's name carries a digest of everything it is
built from, so a cache holding an older tiny model builds the new one beside it instead of
loading the old one. Folders are built next to their target and renamed into place, so a
half-written folder is never seen and a second call is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from genjobs.render.tiny_sdxl import ensure_model_folder
from genjobs.render.umt5_tokenizer import umt5_vocabulary, write_umt5_tokenizer

logger = logging.getLogger(__name__)

SEED = 0
RECIPE = 2
"""Raise when the build steps change in a way the configs below do not show."""
TEXT_DIM = 32
"""UMT5 ``d_model``; the transformer's ``text_dim`` must equal it."""
LATENT_CHANNELS = 16
VAE_LEVELS = 6
SPATIAL_FACTOR = 2 ** (VAE_LEVELS - 1)
"""32: every VAE level but the last halves height and width."""
TRANSFORMER_PATCH = (1, 1, 1)
SIZE_MULTIPLE = SPATIAL_FACTOR * TRANSFORMER_PATCH[1]
"""Heights and widths the tiny pipeline renders without rounding them down."""

UMT5_CONFIG: dict[str, Any] = {
    "d_model": TEXT_DIM,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

VAE_CONFIG: dict[str, Any] = {
    # Two channels per level: decoding 81 frames of 480x832 is mostly full-size work. (With a
    # single channel at full size it is a quarter cheaper, but the noise it draws makes a 15 MB
    # MP4 instead of under 1 MB.)
    "base_dim": 2,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1] * VAE_LEVELS,
    "num_res_blocks": 0,
    # Time is halved on the two lowest levels only: 4k+1 frames give k+1 latent frames.
    "temperal_downsample": [False] * (VAE_LEVELS - 3) + [True, True],
    "scale_factor_spatial": SPATIAL_FACTOR,
    "scale_factor_temporal": 4,
}

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": TRANSFORMER_PATCH,
    "num_attention_heads": 2,
    "attention_head_dim": 6,  # even, and at least 6: the rotary embedding splits it in three
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 1,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
}

VACE_CONFIG: dict[str, Any] = {
    **TRANSFORMER_CONFIG,
    "vace_layers": [0],
    # The VACE context: the inactive and reactive latents, then the mask folded into
    # SPATIAL_FACTOR x SPATIAL_FACTOR channels per latent pixel.
    "vace_in_channels": 2 * LATENT_CHANNELS + SPATIAL_FACTOR**2,
}

# Scheduler config of the released Wan2.1-T2V-1.3B-Diffusers folder (flow sigmas, shift 3.0).
SCHEDULER_CONFIG: dict[str, object] = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "num_train_timesteps": 1000,
    "solver_order": 2,
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "timestep_spacing": "linspace",
    "final_sigmas_type": "zero",
}


def config_digest(**parts: Any) -> str:
    """A short digest of the JSON form of ``parts``: equal parts, equal digest."""
    text = json.dumps(parts, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _t2v_parts() -> dict[str, Any]:
    return {
        "seed": SEED,
        "recipe": RECIPE,
        "umt5": UMT5_CONFIG,
        "vocabulary": umt5_vocabulary(),
        "vae": VAE_CONFIG,
        "transformer": TRANSFORMER_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
    }


T2V_DIGEST = config_digest(**_t2v_parts())
VACE_DIGEST = config_digest(**_t2v_parts(), vace=VACE_CONFIG)
"""The VACE digest covers the text-to-video parts too: the two must fit each other."""
TINY_WAN_FOLDER = f"tiny-wan-{T2V_DIGEST}"
"""The tiny text-to-video folder's name in the model cache, new for every change of recipe."""
TINY_WAN_VACE_FOLDER = f"tiny-wan-vace-{VACE_DIGEST}"


def recipe(model: str, digest: str) -> dict[str, Any]:
    """What a saved folder was built from; a folder with another recipe is rebuilt."""
    import diffusers
    import transformers

    return {
        "model": model,
        "config": digest,
        "recipe": RECIPE,
        "seed": SEED,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def build_tiny_wan(tokenizer_dir: Path) -> Any:
    """Build the tiny text-to-video pipeline in memory; its tokenizer is written to a folder.

    Returns:
        A ``WanPipeline`` on the CPU in float32, every model in eval mode.
    """
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    vocab_size = write_umt5_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) != vocab_size or tokenizer.pad_token_id != 0 or tokenizer.eos_token_id != 1:
        raise RuntimeError("The tiny UMT5 tokenizer does not have the expected size and token ids")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        # Built directly, UMT5 starts in training mode (dropout): eval() is required.
        text_encoder: Any = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **UMT5_CONFIG))
        vae: Any = AutoencoderKLWan(**VAE_CONFIG)
        transformer: Any = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    for model in (text_encoder, vae, transformer):
        model.eval()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
        transformer=transformer,
    )


def build_tiny_wan_vace() -> Any:
    """Build the tiny VACE transformer in memory (CPU, float32, eval mode)."""
    import torch
    from diffusers import WanVACETransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        transformer: Any = WanVACETransformer3DModel(**VACE_CONFIG)
    return transformer.eval()


def _save_tiny_wan(target: Path) -> None:
    started = time.perf_counter()
    scratch = target / ".tokenizer-source"
    pipe = build_tiny_wan(scratch)
    pipe.save_pretrained(target)
    # Keep the hand-written tokenizer files, which both transformers generations load.
    shutil.rmtree(target / "tokenizer")
    write_umt5_tokenizer(target / "tokenizer")
    shutil.rmtree(scratch)
    logger.info("Built the tiny WAN model in %s in %.2f s.", target, time.perf_counter() - started)


def _save_tiny_wan_vace(target: Path) -> None:
    build_tiny_wan_vace().save_pretrained(target)
    logger.info("Built the tiny WAN VACE transformer in %s.", target)


def ensure_tiny_wan(folder: Path) -> Path:
    """Build and save the tiny text-to-video pipeline into ``folder`` unless it is there.

    Returns:
        The folder, loadable with ``WanPipeline.from_pretrained(folder)`` like a released one.
    """
    return ensure_model_folder(Path(folder), recipe("tiny-wan", T2V_DIGEST), _save_tiny_wan)


def ensure_tiny_wan_vace(folder: Path) -> Path:
    """Build and save the tiny VACE transformer into ``folder`` unless it is there.

    Returns:
        The folder, loadable with ``WanVACETransformer3DModel.from_pretrained(folder)``; the
        transformer fits the tiny text-to-video pipeline's text encoder and VAE.
    """
    return ensure_model_folder(
        Path(folder), recipe("tiny-wan-vace", VACE_DIGEST), _save_tiny_wan_vace
    )
