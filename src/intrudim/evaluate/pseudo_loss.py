"""MLM pseudo-loss: the pseudo-log-likelihood of Salazar et al. (2020), the paper's forgetting measure (Sec. 4, Figs. 9, 16).

For a sequence w₁…w_L, PLL(w) = Σ_t log P(w_t | w with position t masked): each token is masked once and
scored by the model from both sides. The pseudo-loss of a sequence is −PLL/L (the mean over its tokens),
and the pseudo-perplexity is exp of the mean pseudo-loss. Special tokens ([CLS], [SEP], <s>…) are added
around each window as the model was trained with them and are never masked or scored.

Batched: the L masked copies of a sequence (and of the next sequences) run through the model as batches
of ``batch_size`` copies, not as L sequential passes. Only the masked position of each copy goes through
the output projection (a forward pre-hook on the model's output embedding selects it), so the vocabulary
projection costs one position per copy instead of L; models whose head does not pass per-position hidden
states to an output embedding fall back to full logits. The result equals the naive one-mask-per-pass loop
(tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from intrudim.errors import IntrudimError


class _MaskedPositionSelector:
    """Forward pre-hook on the output embedding: keep only hidden state ``positions[i]`` of copy ``i``."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None  # (b,)

    def __call__(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        hidden = args[0] if args else None
        positions = self.positions
        if positions is None or hidden is None or hidden.ndim != 3 or hidden.shape[0] != positions.shape[0]:
            return None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, positions.to(hidden.device)].unsqueeze(1), *args[1:])  # (b, 1, H)


@torch.no_grad()
def pseudo_log_likelihood_losses(
    model: nn.Module,
    sequences: torch.Tensor,
    scored_positions: torch.Tensor,
    mask_token_id: int,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(sequences,) float64 pseudo-loss −PLL/L of each row of ``sequences`` (n, T), scoring ``scored_positions`` (L,).

    ``sequences`` already hold their special tokens; ``scored_positions`` are the indices of the real tokens
    (the same for every row: all windows have the same length). ``advance(k)`` is called with the number of
    tokens scored after each batch (for a progress bar).
    """
    n, width = sequences.shape
    positions = scored_positions.to(torch.long)
    count = positions.numel()
    nll = torch.empty(n * count, dtype=torch.float64)
    # Copy c = (sequence c // L, position c % L): every masked copy of every sequence, in order.
    copy_rows = torch.arange(n).repeat_interleave(count)
    copy_positions = positions.repeat(n)
    selector = _MaskedPositionSelector()
    output_embedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = output_embedding.register_forward_pre_hook(selector) if isinstance(output_embedding, nn.Module) else None
    try:
        for start in range(0, n * count, batch_size):
            rows = copy_rows[start : start + batch_size]
            masked_at = copy_positions[start : start + batch_size]
            inputs = sequences[rows].clone()  # (b, T)
            batch_rows = torch.arange(rows.numel())
            targets = inputs[batch_rows, masked_at].clone()
            inputs[batch_rows, masked_at] = mask_token_id
            selector.positions = masked_at
            inputs = inputs.to(device)
            logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
            if logits.shape[1] == width and width != 1:  # the hook did not apply: full logits, pick the masked ones
                logits = logits[batch_rows.to(logits.device), masked_at.to(logits.device)]
            else:  # (b, 1, V)
                logits = logits[:, 0]
            if logits.ndim != 2 or logits.shape[-1] <= int(targets.max()):
                raise IntrudimError(
                    f"The model's logits have shape {tuple(logits.shape)}: not a masked LM's vocabulary scores. Score "
                    f"a *ForMaskedLM model (not a classification wrapper)."
                )
            log_probs = torch.log_softmax(logits.float(), dim=-1)  # (b, V)
            picked = log_probs[batch_rows.to(log_probs.device), targets.to(log_probs.device)]
            nll[start : start + rows.numel()] = -picked.double().cpu()
            if advance is not None:
                advance(int(rows.numel()))
    finally:
        selector.positions = None
        if handle is not None:
            handle.remove()
    return nll.view(n, count).mean(dim=1)


@torch.no_grad()
def naive_pseudo_log_likelihood_losses(
    model: nn.Module, sequences: torch.Tensor, scored_positions: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """The reference: one masked copy per forward pass, full logits (slow; tests and benchmarks only)."""
    losses = []
    for row in sequences:
        total = 0.0
        for position in scored_positions.tolist():
            inputs = row.clone().unsqueeze(0)
            inputs[0, position] = mask_token_id
            logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0, position]
            total -= float(torch.log_softmax(logits.double(), dim=-1)[row[position]])
        losses.append(total / scored_positions.numel())
    return torch.tensor(losses, dtype=torch.float64)
