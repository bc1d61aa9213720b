"""Turning examples into model inputs and scores.

Encoders (sequence-classification head): logits over the classes, or one score per choice for multiple
choice. Causal LMs (issue 13): each example is a prompt followed by an answer text
(:mod:`intrudim.tasks.prompts`); the loss is the cross-entropy of the answer tokens only and a candidate's
score is its answer's total log-likelihood given the prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.tasks.base import Example, TaskKind
from intrudim.tasks.prompts import Candidate, PromptFormat


def encode_examples(
    tokenizer: object, examples: Sequence[Example], max_length: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Tokenize every choice of every example (row-major: example, then choice), padded to the longest."""
    texts = [text for example in examples for text, _ in example.choices]
    pairs = [pair for example in examples for _, pair in example.choices]
    has_pairs = any(pair is not None for pair in pairs)
    encoded = tokenizer(  # type: ignore[operator]
        texts,
        [pair or "" for pair in pairs] if has_pairs else None,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    return {key: value.to(device) for key, value in encoded.items()}


def example_logits(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    max_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch, classes) logits; for multiple choice, (batch, choices) scores from a one-output head."""
    inputs = encode_examples(tokenizer, examples, max_length, device)
    logits = model(**inputs).logits  # (batch·choices, head outputs)
    if kind == "multiple_choice":
        return logits.view(len(examples), -1)  # one score per choice
    return logits


def example_labels(examples: Sequence[Example], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor([example.label for example in examples], dtype=torch.long, device=device)


# --- causal language models: a prompt, then an answer scored token by token (issue 13) -------------------------


@dataclass(frozen=True)
class EncodedCandidates:
    """(prompt, answer) sequences, left-padded so that every answer ends at the last position.

    ``answer_mask`` is True at the answer's tokens. ``position_ids`` count from 0 at each sequence's first
    real token, so a left-padded row gives the same logits as the row alone (absolute positions, GPT-2,
    included). ``answer_tokens`` is the longest answer, in tokens.
    """

    input_ids: torch.Tensor  # (n, L)
    attention_mask: torch.Tensor  # (n, L)
    position_ids: torch.Tensor  # (n, L)
    answer_mask: torch.Tensor  # (n, L) bool
    answer_tokens: int


def prompt_token_ids(tokenizer: object, prompt: str) -> list[int]:
    """The prompt's tokens with the special tokens the tokenizer puts in front (LLaMA's BOS), none after.

    Trailing specials ([SEP], </s>) would end the text before the answer, so they are dropped: the tokens
    with special tokens are matched against those without, and whatever follows the text is cut.
    """
    full = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])  # type: ignore[operator]
    plain = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    for offset in range(len(full) - len(plain) + 1):
        if full[offset : offset + len(plain)] == plain:
            return full[: offset + len(plain)] or full[:1]
    return plain or full[:1]


def answer_token_ids(tokenizer: object, answer: str) -> list[int]:
    """The answer's tokens, without special tokens (it continues the prompt)."""
    ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
    if not ids:
        raise IntrudimError(f"The answer text {answer!r} tokenizes to no tokens; give each label a non-empty answer.")
    return ids


def _pad_id(tokenizer: object) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_candidates(
    tokenizer: object, candidates: Sequence[Candidate], max_length: int, device: torch.device | str = "cpu"
) -> EncodedCandidates:
    """Tokenize prompt and answer separately (the answer's tokens are the same in every example) and join them.

    A sequence longer than ``max_length`` loses the start of its prompt (the answer and the words just before
    it are kept); an answer of ``max_length`` tokens or more keeps one prompt token and its first tokens.
    """
    rows: list[tuple[list[int], int]] = []
    for prompt, answer in candidates:
        prompt_ids, answer_ids = prompt_token_ids(tokenizer, prompt), answer_token_ids(tokenizer, answer)
        answer_ids = answer_ids[: max(1, max_length - 1)]
        prompt_ids = prompt_ids[-max(1, max_length - len(answer_ids)) :]
        rows.append((prompt_ids + answer_ids, len(answer_ids)))
    length = max(len(ids) for ids, _ in rows)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    answer_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (ids, answer_length) in enumerate(rows):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
        answer_mask[row, length - answer_length :] = True
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return EncodedCandidates(
        input_ids.to(device), attention_mask.to(device), position_ids.to(device), answer_mask.to(device),
        max(answer_length for _, answer_length in rows),
    )  # fmt: skip


def _innermost(model: nn.Module) -> nn.Module:
    """The transformers model under DDP and PEFT wrappers (to read which arguments its forward takes)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "get_base_model"):  # PeftModel
            inner = model.get_base_model()
            if inner is model:
                return model
            model = inner
        else:
            return model


def _accepts(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(_innermost(model).forward).parameters
    except (TypeError, ValueError):
        return False


def last_position_logits(model: nn.Module, encoded: EncodedCandidates, positions: int) -> torch.Tensor:
    """(n, positions, vocab) logits of the last ``positions`` positions (only those are computed when the
    model takes ``logits_to_keep``: the LM head is a large share of a small LM's forward pass)."""
    inputs: dict[str, torch.Tensor | int] = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
    if _accepts(model, "position_ids"):
        inputs["position_ids"] = encoded.position_ids
    if _accepts(model, "logits_to_keep"):
        inputs["logits_to_keep"] = positions
    logits = model(**inputs).logits
    return logits[:, -positions:]


def answer_token_log_probs(model: nn.Module, encoded: EncodedCandidates) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p of each token given the tokens before it, mask of answer tokens), both (n, answer_tokens).

    The answer occupies the last positions of each row; the token at position t is predicted by the
    logits at t − 1, so the last ``answer_tokens + 1`` positions are enough.
    """
    window = encoded.answer_tokens
    logits = last_position_logits(model, encoded, window + 1)[:, :-1].float()  # (n, window, vocab)
    targets = encoded.input_ids[:, -window:]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return log_probs, encoded.answer_mask[:, -window:]


def answer_log_likelihoods(model: nn.Module, encoded: EncodedCandidates) -> torch.Tensor:
    """(n,) total log-likelihood of each row's answer given its prompt: Σ_t log p(answer_t | prompt, answer_<t)."""
    log_probs, mask = answer_token_log_probs(model, encoded)
    return (log_probs * mask).sum(dim=1)


def answer_loss(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    prompt_format: PromptFormat,
    max_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training loss of a causal LM: mean cross-entropy over the right answers' tokens (prompt tokens unscored)."""
    right = [prompt_format.candidates(example, kind)[example.label] for example in examples]
    log_probs, mask = answer_token_log_probs(model, encode_candidates(tokenizer, right, max_length, device))
    return -(log_probs * mask).sum() / mask.sum()


def candidate_scores(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    prompt_format: PromptFormat,
    max_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch, candidates) total log-likelihood of each candidate answer given its prompt; argmax = prediction.

    When every candidate of an example shares its prompt and every answer is one token (the verbalizers of
    the generated tasks on most tokenizers), one forward pass over the prompts scores all of them: the
    log-probabilities of the answer tokens at the prompt's last position. Otherwise each (prompt, answer)
    is its own sequence. Both compute the same quantity.
    """
    per_example = [prompt_format.candidates(example, kind) for example in examples]
    counts = {len(candidates) for candidates in per_example}
    if len(counts) != 1:
        raise IntrudimError(f"Examples of one task must have the same number of choices; found {sorted(counts)}.")
    width = counts.pop()
    answers = {answer: answer_token_ids(tokenizer, answer) for candidates in per_example for _, answer in candidates}
    shared_prompt = all(len({prompt for prompt, _ in candidates}) == 1 for candidates in per_example)
    if shared_prompt and all(len(ids) == 1 for ids in answers.values()):
        # Each prompt as a sequence whose "answer" is its own last token: the logits before that token are not
        # needed, the logits at it predict the answer.
        encoded = encode_candidates(tokenizer, [(c[0][0], c[0][1]) for c in per_example], max_length, device)
        prompts = EncodedCandidates(
            encoded.input_ids[:, :-1], encoded.attention_mask[:, :-1], encoded.position_ids[:, :-1],
            encoded.answer_mask[:, :-1], 1,
        )  # fmt: skip
        log_probs = torch.log_softmax(last_position_logits(model, prompts, 1)[:, -1].float(), dim=-1)  # (n, vocab)
        token_ids = torch.tensor([[answers[a][0] for _, a in c] for c in per_example], device=log_probs.device)
        return log_probs.gather(1, token_ids)
    flat = [candidate for candidates in per_example for candidate in candidates]
    scores = answer_log_likelihoods(model, encode_candidates(tokenizer, flat, max_length, device))
    return scores.view(len(examples), width)
