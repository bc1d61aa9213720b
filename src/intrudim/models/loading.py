"""Loading a resolved model folder with the head and objective a verb needs, and its tokenizer.

- ``train`` (and the sweeps that re-load what it trained): a ``*ForSequenceClassification`` model with a fresh head
  of ``head_outputs`` outputs (:func:`load_base_model`), or a causal LM trained as a language model
  (:func:`load_causal_lm`); :func:`resolve_objective` tells which from the folder's config.json.
- ``forgetting``: the model with the head its measure scores text with (:func:`measure_for_config`,
  :func:`load_language_model`): a causal LM (perplexity), a masked LM (the pseudo-loss of Salazar et al. 2020), or
  a sentence-transformers encoder (its contrastive pre-training objective; :func:`is_sentence_transformer` reads
  the folder's own sentence-transformers files).
- ``repair --merged``: the class a PEFT adapter's ``task_type`` was trained on (:func:`load_for_peft_task`).

Every function takes a local folder (resolve a reference first with
:func:`intrudim.models.references.resolve_model_folder`) and turns loading failures into one readable
:class:`~intrudim.errors.IntrudimError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.models.references import read_model_config

Measure = Literal["perplexity", "pseudo_loss", "contrastive"]
SUPPORTED_HEADS = (
    "a causal LM (*ForCausalLM / *LMHeadModel: perplexity), a masked LM (*ForMaskedLM: the pseudo-loss of "
    "Salazar et al. 2020), or a sentence-transformers model such as minilm (a folder with modules.json, as "
    "sentence-transformers saves it: its contrastive pre-training objective)"
)
# Encoder families whose bare model (no head) can be a sentence-transformers encoder (the contrastive measure).
ENCODER_MODEL_TYPES = (
    "bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2", "camembert",
    "albert", "modernbert", "nomic_bert", "xlm-roberta-xl", "ernie",
)  # fmt: skip
SENTENCE_TRANSFORMERS_MODULES = "modules.json"
SENTENCE_TRANSFORMERS_TRANSFORMER = "sentence_transformers.models.Transformer"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers without its "Loading weights" bar and warnings ("newly initialized classifier" is expected:
    the head is fresh); restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------------- training objective


def causal_lm_architectures() -> set[str]:
    """Class names transformers loads with ``AutoModelForCausalLM`` (LlamaForCausalLM, GPT2LMHeadModel, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update(value if isinstance(value, (tuple, list)) else (value,))
    return names


def is_causal_lm(model_path: Path) -> bool:
    """Whether the folder's config.json names a causal-LM architecture (its ``architectures`` list)."""
    config = read_model_config(model_path)
    architectures = config.get("architectures") if config is not None else None
    known = causal_lm_architectures()
    return any(isinstance(name, str) and (name in known or name.endswith("ForCausalLM")) for name in architectures or ())


def resolve_objective(objective: str, model_path: Path) -> str:
    """``auto`` → ``causal-lm`` for a causal-LM folder, else ``classification``; the others as given."""
    if objective != "auto":
        return objective
    return "causal-lm" if is_causal_lm(model_path) else "classification"


def load_base_model(model_path: Path, head_outputs: int) -> tuple[nn.Module, object]:
    """Load a local HF folder as a sequence-classification model with ``head_outputs`` outputs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=head_outputs, ignore_mismatched_sizes=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(
            f"Could not load '{model_path}' as a sequence-classification model with its tokenizer: {exc}. "
            f"Give a Hugging Face model folder whose architecture has a *ForSequenceClassification class."
        ) from None
    if tokenizer.pad_token is None:  # causal LMs (LLaMA, GPT-2) ship without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_causal_lm(model_path: Path) -> tuple[nn.Module, object]:
    """Load a local HF folder as a causal LM (``AutoModelForCausalLM``) with its tokenizer, in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(
            f"Could not load '{model_path}' as a causal language model with its tokenizer: {exc}. Give a Hugging "
            f"Face model folder whose architecture has a *ForCausalLM class, or train it with a classification "
            f"head (--objective classification)."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ------------------------------------------------------------------------------- other heads and classes


def load_causal_lm_alone(model_path: Path) -> nn.Module:
    """Load a local HF causal-LM folder as ``AutoModelForCausalLM``, as saved (its dtype), without a tokenizer."""
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(str(model_path))
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(f"Could not load '{model_path}' as a causal language model: {exc}") from None


def load_bare_model(model_path: Path) -> nn.Module:
    """Load a local HF folder as its model body without a head (``AutoModel``), as saved (its dtype, train mode)."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(model_path))
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(f"Could not load '{model_path}' as a Hugging Face model: {exc}") from None


def load_for_peft_task(model_path: Path, task_type: str | None, *, num_labels: int | None = None) -> nn.Module:
    """Load a local HF folder with the class a PEFT adapter's ``task_type`` was trained on, so that peft can load and
    merge the adapter into it: ``CAUSAL_LM`` → ``AutoModelForCausalLM``, ``SEQ_CLS`` → ``AutoModelForSequenceClassification``
    (with ``num_labels`` when given: the rows of the adapter's saved head), ``"ARCHITECTURE"`` → the class BASE's
    config names, anything else → ``AutoModel``."""
    import transformers

    auto = {"CAUSAL_LM": transformers.AutoModelForCausalLM, "SEQ_CLS": transformers.AutoModelForSequenceClassification}
    loader = auto.get(str(task_type), transformers.AutoModel)
    if task_type == "ARCHITECTURE":  # the class BASE's config.json names (e.g. LlamaForCausalLM), when transformers has it
        names = list(getattr(load_transformers_config(model_path), "architectures", None) or [])
        loader = getattr(transformers, names[0], transformers.AutoModel) if names else transformers.AutoModel
    kwargs = {}
    if task_type == "SEQ_CLS" and num_labels is not None:
        kwargs["num_labels"] = num_labels
    return loader.from_pretrained(str(model_path), **kwargs)


# ------------------------------------------------------------------------------- forgetting measures


def load_transformers_config(path: Path) -> Any:
    """The folder's config.json as transformers reads it (``AutoConfig``); a readable error when it cannot."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(f"Cannot read the model config of '{path}': {exc}") from None


def is_sentence_transformer(folder: Path) -> bool:
    """Whether ``folder`` is a sentence-transformers model, judged from its own files: a ``modules.json`` (written by
    sentence-transformers' ``save``) whose module list has a ``sentence_transformers.models.Transformer`` module at
    the folder itself (path ``""``), i.e. the weights transformers loads from this folder are the encoder of a
    sentence-embedding model (e.g. the embedded ``minilm``). A bare ``BertModel`` saved by ``save_pretrained`` has no
    such file."""
    try:
        modules = json.loads((Path(folder) / SENTENCE_TRANSFORMERS_MODULES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(modules, list):
        return False
    return any(
        isinstance(module, dict) and module.get("type") == SENTENCE_TRANSFORMERS_TRANSFORMER
        and module.get("path", "") in ("", ".", "./")
        for module in modules
    )  # fmt: skip


def _masked_lm_class(architectures: list[str], model_type: str) -> str:
    """``BertModel`` → ``BertForMaskedLM``: the class name of the masked-LM checkpoint of a bare encoder."""
    for name in architectures:
        if name.endswith("Model"):
            return name[: -len("Model")] + "ForMaskedLM"
    return f"a {model_type or 'its'} …ForMaskedLM"


def measure_for_config(config: Any, where: str = "BASE", *, sentence_transformer: bool = False) -> Measure:
    """The forgetting measure that fits a model's architecture; a clear error when none does.

    ``sentence_transformer``: the model's folder is a sentence-transformers model (:func:`is_sentence_transformer`);
    only then does a bare encoder get the contrastive measure, which is its own pre-training objective. A bare
    encoder without those files (a plain ``BertModel``, pre-trained as a masked LM whose head it lacks) is refused.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "perplexity"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "pseudo_loss"
    model_type = getattr(config, "model_type", "")
    is_bare = not architectures or all(a.endswith("Model") and "For" not in a for a in architectures)
    if is_bare and model_type in ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False):
        if sentence_transformer:
            return "contrastive"
        found = ", ".join(architectures) or f"a bare {model_type} encoder"
        raise IntrudimError(
            f"{where} is {found}, an encoder without a head, and not a sentence-transformers model (its folder has no "
            f"modules.json naming a sentence_transformers.models.Transformer module), so `forgetting` knows no "
            f"pre-training objective to score it with: it was most likely pre-trained as a masked LM whose head it "
            f"lacks. Give as BASE the checkpoint with that head ({_masked_lm_class(architectures, model_type)}: the "
            f"MLM pseudo-loss of Salazar et al. 2020), a causal LM (…ForCausalLM: perplexity), or a "
            f"sentence-transformers folder (modules.json and 1_Pooling/, as sentence-transformers saves it, e.g. "
            f"minilm: its contrastive loss)."
        )
    found = ", ".join(architectures) or f"a bare {model_type or 'unknown'} model"
    raise IntrudimError(
        f"{where} is {found}, which has no head that `forgetting` can score. Supported: {SUPPORTED_HEADS}. A model "
        f"saved without its LM head (e.g. LlamaModel) or with only a task head (…ForSequenceClassification) cannot "
        f"measure loss on text: give the pre-trained LM folder as BASE (its head is used for TUNED too)."
    )


def load_language_model(path: Path, measure: str, device: str = "cpu") -> nn.Module:
    """Load BASE with the head its measure needs (float32, eval mode); refuse a head that would be random."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    auto = {"perplexity": AutoModelForCausalLM, "pseudo_loss": AutoModelForMaskedLM, "contrastive": AutoModel}[measure]
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own progress bar is the one on stderr
    try:
        model, info = auto.from_pretrained(str(path), dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise IntrudimError(f"Could not load '{path}' as a {measure} model: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(("position_ids", "rotary_emb.inv_freq"))]
    if missing and measure != "contrastive":
        raise IntrudimError(
            f"'{path}' lacks weights of its language-model head ({', '.join(sorted(missing)[:4])}…): loading it would "
            f"score text with a random head. Give the folder of the pre-trained LM with its head. Supported: "
            f"{SUPPORTED_HEADS}."
        )
    return model.to(device).eval()


def load_tokenizer(path: Path) -> Any:
    """The tokenizer saved in a model folder (``AutoTokenizer``); a readable error when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise IntrudimError(
            f"Cannot load a tokenizer from '{path}': {exc}. BASE must be a folder with its tokenizer files "
            f"(tokenizer.json or vocab files), as save_pretrained writes them."
        ) from None
