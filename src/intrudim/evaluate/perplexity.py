"""Causal-LM loss on a text: mean next-token cross-entropy over fixed-length windows (Sec. 4, Fig. 16's measure).

Definition (so that numbers compare across models and runs): the text is tokenized as one stream without
special tokens, cut into consecutive windows of ``seq_len`` tokens (the last partial window is dropped), and
the loss is the mean next-token cross-entropy over every predicted position: ``seq_len − 1`` per window, the
first token of a window has no context and is not predicted. Perplexity is exp(loss). Every window predicts
the same number of tokens, so the mean of the per-window losses is the loss over all predicted tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from intrudim.errors import IntrudimError


def token_windows(token_ids: Sequence[int] | torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """(windows, seq_len) consecutive windows of the stream; at most ``max_tokens`` tokens, partial window dropped."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = ids.numel() // seq_len
    if windows == 0:
        raise IntrudimError(
            f"The text has {ids.numel()} tokens, fewer than one sequence of --seq-len {seq_len} tokens. Give a longer "
            f"text (--text), a larger --max-tokens, or a smaller --seq-len."
        )
    return ids[: windows * seq_len].view(windows, seq_len)


@torch.no_grad()
def causal_lm_window_losses(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(windows,) float64: mean next-token cross-entropy of each window (positions 1…L−1 predicted from the prefix)."""
    n, length = windows.shape
    if length < 2:
        raise IntrudimError(f"--seq-len must be at least 2 for a causal LM (one predicted token); got {length}.")
    losses = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size].to(device)  # (b, L)
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False).logits  # (b, L, V)
        if logits.ndim != 3 or logits.shape[1] != length or logits.shape[2] <= int(batch.max()):
            raise IntrudimError(
                f"The model returned logits of shape {tuple(logits.shape)} for windows of {length} tokens; a causal "
                f"LM returns (batch, {length}, vocabulary). Score a *ForCausalLM model (not a classification wrapper)."
            )
        # Position t predicts token t+1; the last position predicts nothing (ignored). One window at a time, so
        # that the log-softmax copy is (L, V), not (b, L, V): with a 49k vocabulary that is 25 MB instead of 200.
        targets = F.pad(batch[:, 1:], (0, 1), value=-100)  # (b, L)
        sums = torch.stack([
            F.cross_entropy(logits[row].float(), targets[row], ignore_index=-100, reduction="sum")
            for row in range(batch.shape[0])
        ])  # fmt: skip
        losses[start : start + batch.shape[0]] = sums.double().cpu() / (length - 1)
        del logits
        if advance is not None:
            advance(int(batch.numel()))
    return losses
