"""Tiny random-weight WAN 2.1 models, built from configs at run time (no hub, no download).

They keep the real 1.3B layout (UMT5 text encoder, 3D transformer, causal video VAE with
temporal factor 4 and spatial factor 8, flow-matching scheduler) at a size that renders 81
frames of 480x832 on a small CPU. Weights come from a fixed torch seed, so a folder built twice
holds the same numbers (the global torch random state is left as it was). Folders are built
next to their target and renamed into place, so a half-written folder is never seen and a second
call is a no-op.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from genjobs.render.tiny_sdxl import ensure_model_folder
from genjobs.render.umt5_tokenizer import write_umt5_tokenizer

logger = logging.getLogger(__name__)

SEED = 0
RECIPE = 1
"""Raise when the configs below change, so saved folders of an older recipe are rebuilt."""
TEXT_DIM = 32
"""UMT5 ``d_model``; the transformer's ``text_dim`` must equal it."""
ROPE_MAX_SEQ_LEN = 1024
NUM_LAYERS = 2
VACE_NUM_LAYERS = 2
VACE_LAYERS = (0, 1)

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


def recipe(model: str) -> dict[str, Any]:
    """What a saved folder was built from; a folder with another recipe is rebuilt."""
    import diffusers
    import transformers

    return {
        "model": model,
        "recipe": RECIPE,
        "seed": SEED,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _transformer_kwargs() -> dict[str, Any]:
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": TEXT_DIM,
        "freq_dim": 32,
        "ffn_dim": 32,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": ROPE_MAX_SEQ_LEN,
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
        text_encoder: Any = UMT5EncoderModel(
            UMT5Config(
                vocab_size=vocab_size,
                d_model=TEXT_DIM,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae: Any = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        transformer: Any = WanTransformer3DModel(num_layers=NUM_LAYERS, **_transformer_kwargs())
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
        transformer: Any = WanVACETransformer3DModel(
            num_layers=VACE_NUM_LAYERS,
            vace_layers=list(VACE_LAYERS),
            vace_in_channels=96,
            **_transformer_kwargs(),
        )
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
    return ensure_model_folder(Path(folder), recipe("tiny-wan"), _save_tiny_wan)


def ensure_tiny_wan_vace(folder: Path) -> Path:
    """Build and save the tiny VACE transformer into ``folder`` unless it is there.

    Returns:
        The folder, loadable with ``WanVACETransformer3DModel.from_pretrained(folder)``; the
        transformer fits the tiny text-to-video pipeline's text encoder and VAE.
    """
    return ensure_model_folder(Path(folder), recipe("tiny-wan-vace"), _save_tiny_wan_vace)
