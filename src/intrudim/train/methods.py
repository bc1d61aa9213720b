"""The fine-tuning methods of the paper: full, LoRA (α = 2r, fixed α, rsLoRA) and B-only LoRA.

Appendix A: all linear layers of the transformer blocks are trained, plus every bias and LayerNorm,
for every method; the embeddings stay frozen. LoRA is applied through ``peft`` to every linear layer
inside the blocks (attention q/k/v/o and the MLP), biases via ``bias="all"``, LayerNorms and the
classification head (with BERT's pooler, which feeds it) via ``modules_to_save`` so that they are saved
in the adapter. B-only LoRA (Fig. 10) sets each A to a random matrix with orthonormal rows (all
singular values 1) and freezes it.

A causal LM fine-tuned as a language model (``objective="causal-lm"``, issue 13) has no classification
head: its own LM head scores the answer texts and stays frozen with the embeddings (SmolLM2 ties them),
while the block linears and the norms are trained exactly as for an encoder.

Loading the model with that head and its tokenizer is :mod:`intrudim.models.loading`'s (``load_base_model``,
``load_causal_lm``, ``resolve_objective``); this module prepares the loaded model for the method.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.models.loading import load_base_model, load_causal_lm, resolve_objective
from intrudim.train.config import TrainConfig

_BLOCK_PATTERN = re.compile(r"\.(layer|layers|h|block|blocks)\.\d+\.")
_HEAD_NAMES = ("classifier", "score", "pooler")


@dataclass(frozen=True)
class ModelParts:
    """What the training loop needs to know about the model it was given."""

    model: nn.Module
    tokenizer: object
    target_modules: tuple[str, ...]
    trainable_parameters: int
    total_parameters: int
    objective: str = "classification"  # "classification" | "causal-lm"


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def block_linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer inside the transformer blocks (names with ``.layer.N.``, ``.layers.N.``, ``.h.N.``)."""
    return {
        name: module
        for name, module in model.named_modules()
        if _is_linear(module) and _BLOCK_PATTERN.search(f".{name}.")
    }


def norm_modules(model: nn.Module) -> list[str]:
    """Names of the LayerNorm / RMSNorm modules (trained by every method, App. A)."""
    return [
        name
        for name, module in model.named_modules()
        if name and "norm" in type(module).__name__.lower() and any(True for _ in module.parameters(recurse=False))
    ]


def head_modules(model: nn.Module) -> list[str]:
    """Top-level modules of the classification head: the classifier/score and BERT's pooler."""
    names = []
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in _HEAD_NAMES and not _BLOCK_PATTERN.search(f".{name}.") and _has_parameters(module):
            if not any(name.startswith(f"{other}.") for other in names):
                names.append(name)
    return names


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of an nn.Linear or a GPT-2 Conv1D (which stores (in, out))."""
    weight = module.weight
    return (weight.shape[0], weight.shape[1]) if isinstance(module, nn.Linear) else (weight.shape[1], weight.shape[0])


def _freeze_embeddings_train_rest(model: nn.Module, freeze_output_embeddings: bool = False) -> None:
    """Full fine-tuning: everything trainable except embedding tables (App. A), and a causal LM's LM head."""
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad = not isinstance(module, nn.Embedding)
    output = model.get_output_embeddings() if freeze_output_embeddings else None
    if output is not None:
        for parameter in output.parameters():
            parameter.requires_grad = False


def _check_rank(targets: dict[str, nn.Module], rank: int) -> None:
    for name, module in targets.items():
        out_features, in_features = _linear_shape(module)
        if rank > min(out_features, in_features):
            raise IntrudimError(
                f"--rank {rank} is larger than the matrix '{name}' of shape ({out_features}, {in_features}); "
                f"a LoRA rank is at most min(out, in) = {min(out_features, in_features)}. Use a smaller --rank "
                f"or --method full."
            )


def orthonormal_rows(rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """A (rows, columns) matrix with orthonormal rows: every singular value is 1 (Fig. 10's frozen A)."""
    gaussian = torch.randn(columns, rows, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: (columns, rows), orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: Haar-distributed
    return q.T.contiguous().to(torch.float32)  # (rows, columns)


def _apply_lora(model: nn.Module, config: TrainConfig, targets: dict[str, nn.Module], objective: str) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    _check_rank(targets, config.rank)
    causal = objective == "causal-lm"
    modules_to_save = [*norm_modules(model), *([] if causal else head_modules(model))]
    lora_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS,
        r=config.rank,
        lora_alpha=config.resolved_alpha,
        lora_dropout=config.lora_dropout,
        use_rslora=config.alpha_rule == "rslora",
        target_modules=sorted(targets),
        bias="lora_only",  # biases of the targeted linears; others are in modules_to_save
        modules_to_save=modules_to_save,
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in targets.values()),
    )
    with warnings.catch_warnings():  # peft 0.21 calls transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(model, lora_config)
    if config.method == "lora-b-only":
        _freeze_orthonormal_a(peft_model, config.seed)
    return peft_model


def _freeze_orthonormal_a(peft_model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + 7919)
    for _name, module in sorted(peft_model.named_modules(), key=lambda item: item[0]):
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and "default" in lora_a:
            weight = lora_a["default"].weight  # (r, in)
            with torch.no_grad():
                weight.copy_(orthonormal_rows(weight.shape[0], weight.shape[1], generator))
            weight.requires_grad = False


def build_model(config: TrainConfig, model_path: Path, head_outputs: int) -> ModelParts:
    """Load the base model and prepare it for ``config.method`` and ``config.objective``, seeded by ``config.seed``.

    ``head_outputs`` sizes the classification head (unused for a causal LM trained as a language model).
    """
    objective = resolve_objective(config.objective, model_path)
    torch.manual_seed(config.seed)  # the fresh head and LoRA's A are initialised from the seed
    if objective == "causal-lm":
        model, tokenizer = load_causal_lm(model_path)
    else:
        model, tokenizer = load_base_model(model_path, head_outputs)
    targets = block_linear_layers(model)
    if not targets:
        raise IntrudimError(
            f"Found no linear layers inside transformer blocks of '{model_path}' (looked for module names with "
            f".layer.N., .layers.N. or .h.N.); intrudim cannot tell which matrices to train."
        )
    if config.is_lora:
        model = _apply_lora(model, config, targets, objective)
    else:
        _freeze_embeddings_train_rest(model, freeze_output_embeddings=objective == "causal-lm")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ModelParts(model, tokenizer, tuple(sorted(targets)), trainable, total, objective)
