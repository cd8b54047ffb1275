"""A small UMT5-style tokenizer written as files, for the embedded tiny WAN model.

The tokenizer is a Unigram model in a ``tokenizer.json`` (``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, no sentinel ids), which both transformers 4 and 5 load through
``AutoTokenizer.from_pretrained(folder)`` without any hub access. Its vocabulary covers ASCII
letters, digits and punctuation, so different prompts give different token ids.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPACE = "▁"
MODEL_MAX_LENGTH = 512

# Whole words get the best scores so common prompt words stay one token.
_WORDS = (
    *("a", "an", "the", "of", "and", "in", "on", "with", "at", "to", "is", "are"),
    *("cat", "dog", "man", "woman", "girl", "boy", "city", "street", "night", "day", "sun"),
    *("moon", "sky", "sea", "river", "forest", "tree", "flower", "car", "red", "blue", "green"),
    *("white", "black", "light", "dark", "walk", "run", "dance", "slow", "fast", "camera"),
    *("video", "photo", "portrait", "style", "art"),
)


def umt5_vocabulary() -> list[tuple[str, float]]:
    """The Unigram vocabulary as (piece, log probability), special tokens first."""
    pieces: list[tuple[str, float]] = [(PAD_TOKEN, 0.0), (EOS_TOKEN, 0.0), (UNK_TOKEN, 0.0)]
    pieces.append((SPACE, -6.0))
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces.append((char, -5.0))
        pieces.append((SPACE + char, -4.0))
    seen = {piece for piece, _ in pieces}
    for word in _WORDS:
        piece = SPACE + word
        if piece not in seen:
            pieces.append((piece, -2.0))
            seen.add(piece)
    return pieces


def _tokenizer_json(vocabulary: list[tuple[str, float]]) -> dict[str, object]:
    metaspace = {
        "type": "Metaspace",
        "replacement": SPACE,
        "prepend_scheme": "always",
        "split": True,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": index,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for index, token in enumerate((PAD_TOKEN, EOS_TOKEN, UNK_TOKEN))
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}},
            ],
            "special_tokens": {EOS_TOKEN: {"id": EOS_TOKEN, "ids": [1], "tokens": [EOS_TOKEN]}},
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": 2,
            "vocab": [[piece, score] for piece, score in vocabulary],
            "byte_fallback": False,
        },
    }


def write_umt5_tokenizer(folder: Path) -> int:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Args:
        folder: The tokenizer folder (created if missing).

    Returns:
        The vocabulary size, which the text encoder's ``vocab_size`` must cover.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = umt5_vocabulary()
    specials = {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "T5Tokenizer",
        "extra_ids": 0,
        "additional_special_tokens": [],
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (folder / "tokenizer.json").write_text(
        json.dumps(_tokenizer_json(vocabulary), ensure_ascii=False), encoding="utf-8"
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(specials, indent=2), encoding="utf-8"
    )
    return len(vocabulary)
