"""Tiny random-weight WAN 2.1 models, built from configs at run time (no hub, no download).

They keep the real 1.3B layout (UMT5 text encoder, 3D transformer, causal video VAE with
temporal factor 4 and spatial factor 8, flow-matching scheduler) at a size that renders 81
frames of 480x832 on a small CPU. Weights come from a fixed torch seed, so a folder built twice
holds the same numbers. Folders are built next to their target and renamed into place, so a
half-written folder is never seen and a second call is a no-op.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from genjobs.render.umt5_tokenizer import write_umt5_tokenizer

logger = logging.getLogger(__name__)

SEED = 0
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


def _transformer_kwargs() -> dict[str, object]:
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


def _build_atomically(folder: Path, build: Callable[[Path], None], what: str) -> Path:
    folder = Path(folder)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent builder winning the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built the tiny %s model in %s.", what, folder)
    return folder


def _build_wan(target: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    tokenizer_dir = target / "tokenizer"
    vocab_size = write_umt5_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    torch.manual_seed(SEED)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).eval()
    torch.manual_seed(SEED)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    torch.manual_seed(SEED)
    transformer = WanTransformer3DModel(num_layers=NUM_LAYERS, **_transformer_kwargs()).eval()
    scheduler = UniPCMultistepScheduler(**SCHEDULER_CONFIG)  # type: ignore[arg-type]
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )
    pipe.save_pretrained(target)
    # save_pretrained rewrites the tokenizer folder; keep the hand-written files authoritative.
    write_umt5_tokenizer(tokenizer_dir)


def _build_wan_vace(target: Path) -> None:
    import torch
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(SEED)
    transformer = WanVACETransformer3DModel(
        num_layers=VACE_NUM_LAYERS,
        vace_layers=list(VACE_LAYERS),
        vace_in_channels=96,
        **_transformer_kwargs(),
    ).eval()
    transformer.save_pretrained(target)


def ensure_tiny_wan(folder: Path) -> Path:
    """Build the tiny text-to-video pipeline folder unless it exists.

    The folder loads with ``WanPipeline.from_pretrained(folder)``, like a released one.

    Args:
        folder: Where the pipeline folder lives.

    Returns:
        ``folder``.
    """
    return _build_atomically(folder, _build_wan, "WAN text-to-video")


def ensure_tiny_wan_vace(folder: Path) -> Path:
    """Build the tiny VACE transformer folder unless it exists.

    The folder loads with ``WanVACETransformer3DModel.from_pretrained(folder)``; it fits the
    tiny text-to-video pipeline's text encoder and VAE.

    Args:
        folder: Where the transformer folder lives.

    Returns:
        ``folder``.
    """
    return _build_atomically(folder, _build_wan_vace, "WAN VACE transformer")
