"""The text cut into a measure's inputs, once per BASE: token windows (LMs), sentence pairs (contrastive)."""

from __future__ import annotations

import random
from typing import Any

import torch

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.evaluate.perplexity import token_windows
from intrudim.evaluate.text import TextSample, adjacent_sentence_pairs

_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")  # positions start at pad+1


PAIR_SHUFFLE_SEED = 0


def _token_stream(text: TextSample, tokenizer: Any, needed: int) -> list[int]:
    """Token ids (no special tokens) of the sample's paragraphs joined by blank lines, at least ``needed`` if there are."""
    from transformers.utils import logging as hf_logging

    paragraphs = text.paragraphs
    chars = max(4096, 8 * needed)  # BPE/WordPiece English: 3–5 characters a token; grow until enough
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the model's maximum" is expected for one stream
    try:
        while True:
            chosen, total = [], 0
            for paragraph in paragraphs:
                if total >= chars:
                    break
                chosen.append(paragraph)
                total += len(paragraph) + 2
            ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
            if len(ids) >= needed or len(chosen) == len(paragraphs):
                return list(ids)
            chars *= 2
    finally:
        hf_logging.set_verbosity(verbosity)


def _special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before and after a text ([CLS] … [SEP], <s> … </s>)."""
    encoded = tokenizer("hello", add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = list(encoded["input_ids"]), list(encoded["special_tokens_mask"])
    content = [i for i, s in enumerate(special) if not s]
    if not content:
        return [], []
    return ids[: content[0]], ids[content[-1] + 1 :]


def _prepare_windows(
    text: TextSample, tokenizer: Any, config: ForgettingConfig, measure: str, model_config: Any
) -> tuple[dict[str, Any], int]:
    if not text.paragraphs:
        raise IntrudimError(f"--text {text.source} holds no text. Give a text with at least {config.seq_len} tokens.")
    windows = token_windows(_token_stream(text, tokenizer, config.max_tokens), config.seq_len, config.max_tokens)
    tokens = int(windows.numel())
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if measure == "perplexity":
        if max_positions is not None and config.seq_len > max_positions:
            raise IntrudimError(f"--seq-len {config.seq_len} exceeds the model's {max_positions} positions; use a smaller --seq-len.")
        return {"windows": windows}, tokens
    mask_token_id = tokenizer.mask_token_id
    if mask_token_id is None:
        raise IntrudimError("BASE's tokenizer has no mask token, so the masked-LM pseudo-loss cannot be computed.")
    before, after = _special_template(tokenizer)
    width = len(before) + config.seq_len + len(after)
    if max_positions is not None:
        limit = max_positions - (2 if getattr(model_config, "model_type", "") in _POSITION_OFFSET_TYPES else 0)
        if width > limit:
            raise IntrudimError(
                f"--seq-len {config.seq_len} plus {len(before) + len(after)} special tokens exceeds the model's "
                f"{limit} positions; use --seq-len {limit - len(before) - len(after)} or less."
            )
    n = windows.shape[0]
    with_specials = torch.cat([
        torch.tensor(before, dtype=torch.long).expand(n, len(before)), windows,
        torch.tensor(after, dtype=torch.long).expand(n, len(after)),
    ], dim=1)  # fmt: skip
    positions = torch.arange(len(before), len(before) + config.seq_len)
    return {"windows": with_specials, "scored_positions": positions, "mask_token_id": int(mask_token_id)}, tokens


def _prepare_pairs(text: TextSample, tokenizer: Any, config: ForgettingConfig) -> tuple[dict[str, Any], int]:
    pairs = adjacent_sentence_pairs(text)
    # Shuffled (fixed seed) so that a batch's negatives come from many articles, as in MiniLM's training batches;
    # in text order the pairs of one article would share a batch and be each other's hard negatives.
    random.Random(PAIR_SHUFFLE_SEED).shuffle(pairs)
    group = config.pairs_per_batch
    anchors: list[list[int]] = []
    positives: list[list[int]] = []
    tokens = 0
    kept_tokens = 0
    for start in range(0, len(pairs) - group + 1, group):
        chunk = pairs[start : start + group]
        a = tokenizer([p[0] for p in chunk], truncation=True, max_length=config.seq_len)["input_ids"]
        b = tokenizer([p[1] for p in chunk], truncation=True, max_length=config.seq_len)["input_ids"]
        chunk_tokens = sum(len(x) for x in a) + sum(len(x) for x in b)
        if anchors and tokens + chunk_tokens > config.max_tokens:
            break
        anchors.extend(list(x) for x in a)
        positives.extend(list(x) for x in b)
        tokens += chunk_tokens
        kept_tokens = tokens
    if not anchors:
        raise IntrudimError(
            f"--text {text.source} gives {len(pairs)} pairs of adjacent sentences, fewer than one batch of "
            f"{group} pairs that the contrastive loss compares. Give a longer text (more paragraphs of several "
            f"sentences each)."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return {"anchors": anchors, "positives": positives, "pad_id": int(pad_id)}, kept_tokens
