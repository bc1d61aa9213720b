"""The README's quick starts run as written: each code block marked ``<!-- quickstart: NAME -->`` is extracted and
executed offline, on tiny stand-ins for the models it names (the substitutions below are the only changes, and each
must still be present in the block, so that an edited README is tested as edited)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK_STARTS = ("cli", "python", "callback")


def quickstart(name: str) -> tuple[str, str]:
    """The language and the code of the fenced block right after ``<!-- quickstart: name -->``."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- quickstart: {name} -->\s*\n```(\w+)\n(.*?)\n```", text, flags=re.S)
    assert match, f"README.md has no code block marked <!-- quickstart: {name} -->"
    return match.group(1), match.group(2)


def substitute(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the quick start no longer mentions {old!r}: update tests/test_readme.py with it"
        code = code.replace(old, new)
    return code


def test_the_readme_is_a_short_front_door_with_three_quick_starts_and_its_picture():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert [quickstart(name)[0] for name in QUICK_STARTS] == ["bash", "python", "python"]
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures and all((ROOT / picture).is_file() for picture in pictures)
    for command in ("analyze", "toy", "train", "tasks", "sweep", "predict", "forgetting", "repair", "continual", "scan",
                    "demo"):  # fmt: skip
        assert f"`intrudim {command}" in text, f"the command list lacks {command}"
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", text):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_cli_quick_start(tiny_models, tmp_path):
    """The three commands, in a shell, with the tiny BERT standing in for the embedded MiniLM."""
    language, code = quickstart("cli")
    script = substitute(code, {"minilm": str(tiny_models["bert"])})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "analysis.json").is_file()
    alone = json.loads((tmp_path / "analysis.json").read_text())
    assert alone["total_intruders"] > 0  # the planted intruders, found with BASE taken from the adapter
    assert alone["total_intruders"] == json.loads((tmp_path / "report" / "analysis.json").read_text())["total_intruders"]


def test_python_quick_start(tiny_models, tmp_path):
    from intrudim.experiments.planted import build_planted_adapter

    adapter = build_planted_adapter(tiny_models["bert"], tmp_path / "adapter")
    _, code = quickstart("python")
    code = substitute(code, {"path/to/base": str(tiny_models["bert"]), "path/to/adapter": str(adapter)})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md quick start (python)", "exec"), {"__name__": "__readme__"})
    output = printed.getvalue()
    assert "intruder dimensions (k=10, ε=0.5)" in output and "intruder ranks [1]" in output, output


@pytest.mark.slow
def test_callback_quick_start(tmp_path):
    """A tiny LLaMA with LoRA in a real transformers.Trainer, 4 steps: the values reach ``state.log_history``."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=64))  # fmt: skip
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, logging_steps=4, per_device_train_batch_size=8,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}))
    _, code = quickstart("callback")
    exec(compile(code, "README.md quick start (callback)", "exec"), {"__name__": "__readme__", "trainer": trainer})
    logged = [entry for entry in trainer.state.log_history if "intrudim/intruders" in entry]
    assert logged and logged[-1]["intrudim/step"] == 4
    assert (tmp_path / "out" / "intrudim_timeline.json").is_file()


def test_the_readme_picture_is_drawn_by_the_script_in_the_repository(tiny_models, tmp_path):
    """docs/make_figures.py (what drew docs/images/similarity_heatmap.png, on MiniLM) runs, here on the tiny BERT."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.HEATMAP in README.read_text(encoding="utf-8")
    (path,) = module.make_figures(str(tiny_models["bert"]), tmp_path)
    assert path.name == module.HEATMAP and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
