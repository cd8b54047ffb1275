"""Local tokenizers written as files, and the size check every tokenizer load goes through.

No hub access: the tiny embedded models get tokenizers written here as plain files, loadable by
``from_pretrained(folder)`` under both transformers generations. Every loaded tokenizer, the
production ones included, is checked with :func:`check_tokenizer`, because transformers 5 returns
a 2-token tokenizer without any error when the files are missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from genjobs.errors import ModelLoadError

logger = logging.getLogger(__name__)

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
CLIP_MODEL_MAX_LENGTH = 77
CLIP_BYTE_VOCAB_SIZE = 2 * 256 + 2
"""256 byte symbols, their ``</w>`` forms, then the start and end tokens."""


class SizedTokenizer(Protocol):
    def __len__(self) -> int: ...


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as UTF-8 JSON (creating the parent folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def check_tokenizer(tokenizer: SizedTokenizer, name: str, minimum: int) -> None:
    """Refuse a tokenizer that is too small to be the one the model was trained with.

    Args:
        tokenizer: Any loaded tokenizer.
        name: Which tokenizer this is, for the message (``"tokenizer_2"``).
        minimum: The smallest acceptable ``len(tokenizer)``.

    Raises:
        ModelLoadError: The tokenizer has fewer than ``minimum`` tokens, which is what a load
            from a folder without vocabulary files silently gives.
    """
    size = len(tokenizer)
    if size < minimum:
        raise ModelLoadError(
            f"Tokenizer {name!r} has {size} tokens, fewer than the {minimum} expected: "
            "its vocabulary files are missing or unreadable"
        )
    logger.debug("Tokenizer %s has %s tokens.", name, size)


def byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0-255, in byte order.

    This is GPT-2's and CLIP's ``bytes_to_unicode`` table: printable Latin-1 bytes stand for
    themselves, the others are shifted to code points from 256 on.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols: dict[int, str] = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[byte] for byte in range(256)]


def clip_byte_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary laid out as the real one, without any merges.

    The byte symbols come first, then their ``</w>`` (end of word) forms, then
    ``<|startoftext|>`` and ``<|endoftext|>`` as the last two ids.
    """
    symbols = byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), CLIP_BOS_TOKEN, CLIP_EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(
    folder: Path,
    *,
    model_max_length: int = CLIP_MODEL_MAX_LENGTH,
    pad_token: str = CLIP_EOS_TOKEN,
) -> Path:
    """Write a byte-level CLIP tokenizer into ``folder``, loadable by ``CLIPTokenizer``.

    Args:
        folder: Where to write ``vocab.json``, ``merges.txt`` and the tokenizer config.
        model_max_length: The padded prompt length; it must not exceed the text encoder's
            ``max_position_embeddings``.
        pad_token: The padding token (real SDXL pads its first tokenizer with
            ``<|endoftext|>``).

    Returns:
        The folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", clip_byte_vocab())
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    special = {
        "bos_token": CLIP_BOS_TOKEN,
        "eos_token": CLIP_EOS_TOKEN,
        "unk_token": CLIP_EOS_TOKEN,
        "pad_token": pad_token,
    }
    write_json(folder / "special_tokens_map.json", special)
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": model_max_length,
            "do_lower_case": True,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            **special,
        },
    )
    logger.debug("Wrote a byte-level CLIP tokenizer to %s.", folder)
    return folder
