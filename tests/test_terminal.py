"""The terminal as a user sees it: the installed `intrudim` console script in a subprocess (typer's CliRunner hides
tracebacks), at 80 columns: bad input gives exit 2 and one message without a traceback; tables and --help fit;
library noise is silenced while intrudim's own output stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_peft_adapter
from safetensors.torch import load_file

SCRIPT = Path(sys.executable).parent / "intrudim"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="the intrudim console script is not installed in this venv")


def run(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS=str(columns), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("TRANSFORMERS_VERBOSITY", None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def assert_fits(text: str, width: int = 80) -> None:
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, f"{len(long)} line(s) over {width} columns: {long[:3]}"


# --- bad input through the real console script ------------------------------------------------------------------


def test_bad_input_exits_2_with_a_message_and_no_traceback(tiny_models, tmp_path):
    bert = str(tiny_models["bert"])
    assert_clean_error(run("analyze", bert, str(tmp_path / "missing_adapter")), "missing_adapter", "does not exist")
    assert_clean_error(run("analyze", bert, bert, "--epsilon", "1.5", "--no-cache"), "epsilon must be in (0, 1]")
    assert_clean_error(run("analyze", bert, bert, "--k", "49", "--no-cache"), "--k 48 or less")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_clean_error(run("analyze", bert, str(broken), "--no-cache"), "truncated or corrupt")
    pickled = tmp_path / "pt_model"
    pickled.mkdir()
    torch.save(load_file(str(tiny_models["bert"] / "model.safetensors")), str(pickled / "pytorch_model.bin"))
    assert_clean_error(run("analyze", bert, str(pickled / "pytorch_model.bin")), "pickle", "--allow-pickle")
    assert_clean_error(run("toy", "--n", "8", "--k", "20"), "--k between 1 and n")


def test_unwritable_out_fails_cleanly_as_root_too(tiny_models, tmp_path):
    """An --out under a regular file cannot be created by anyone, root included: refused before any work."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    result = run("analyze", str(tiny_models["bert"]), str(tiny_models["bert"]), "--out", str(blocker / "sub" / "x"))
    assert_clean_error(result, "Cannot write to --out directory")
    assert blocker.read_text() == "keep me"
    assert_clean_error(run("toy", "--n", "16", "--trials", "2", "--out", str(blocker / "t")), "Cannot write")


# --- 80 columns --------------------------------------------------------------------------------------------------


def test_analyze_table_fits_80_columns_one_line_per_matrix_with_short_names(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2, strength=2.0)
    result = run("analyze", str(tiny_models["bert"]), str(adapter), "--cache", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout)
    rows = [line for line in result.stdout.splitlines() if line.strip().startswith("L")]
    assert len(rows) == 12  # 2 layers × (q, k, v, attn out, MLP in, MLP out), one line each
    labels = {" ".join(line.split()[:2]) for line in rows}
    assert {"L0 attn.q", "L0 attn.k", "L0 attn.v", "L0 attn.o", "L0 mlp.up", "L0 mlp.down", "L1 mlp.down"} <= labels
    assert "encoder.layer" not in result.stdout  # full names are for JSON/CSV


def test_modules_prints_one_summary_line_for_what_it_left_out(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2)
    result = run("analyze", str(tiny_models["llama"]), str(adapter), "--modules", "q_proj", "--no-cache")
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "12 matrices" in skipped[0], result.stdout


def test_analyze_summary_is_one_fact_a_line_with_paths_whole_after_their_labels(tiny_models, tmp_path):
    """At 80 columns the summary does not wrap in mid-phrase, and a path too long to follow its label on one line
    comes whole on the next line (not cut, not parted from its label by the wrap)."""
    adapter = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a", r=2, strength=2.0)
    out = tmp_path / "an_output_folder_whose_name_is_rather_long" / "analysis_of_this_adapter"
    result = run("analyze", str(tiny_models["llama"]), str(adapter), "--out", str(out), "--cache", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    paths = {label: str(out / name) for label, name in (("report:", "report.html"), ("json:", "analysis.json"),
                                                          ("csv:", "analysis.csv"))}  # fmt: skip
    for label, path in paths.items():
        if len(f"{label} {path}") <= 80:
            assert f"{label} {path}" in lines
        else:
            assert lines[lines.index(label) + 1].strip() == path, result.stdout
    assert len(f"report: {paths['report:']}") > 80  # the case is exercised
    assert all(len(line) <= 80 or line.strip() in paths.values() for line in lines), result.stdout
    facts = ("intruder dimensions (k=10, ε=0.5) in ", "energy: intruders carry ", f"tuned (lora): {adapter}",
             f"base: {tiny_models['llama']}", "base SVD cache: 0 hits, 14 computed")  # fmt: skip
    for fact in facts:  # each on a line of its own
        assert sum(1 for line in lines if fact in line) == 1, (fact, result.stdout)


def test_phrase_lines_cut_between_phrases_and_never_inside_a_word():
    from intrudim.cli.output import phrase_lines

    def wrapped(text: str, width: int) -> list[str]:
        return [text[start:end] for start, end in phrase_lines(text, width)]

    assert wrapped("report: /short/path.html", 80) == ["report: /short/path.html"]
    long_path = "/tmp/" + "a_folder/" * 10 + "report.html"
    assert wrapped(f"report: {long_path}", 80) == ["report:", long_path]  # longer than a line: whole all the same
    sentence = "TUNED forgot: its loss on the text is +0.0123 higher than BASE's (95% CI [+0.00123, +0.0234])."
    assert wrapped(sentence, 70) == ["TUNED forgot: its loss on the text is +0.0123 higher than BASE's",
                                     "(95% CI [+0.00123, +0.0234])."]  # fmt: skip
    assert wrapped("a list (one, two, three, four)", 26) == ["a list", "(one, two, three, four)"]  # brackets: whole
    assert wrapped("word " * 20, 30) == ["word word word word word word", *["word word word word word"] * 2,
                                         "word word word word"]  # a phrase longer than a line: cut between words


def test_short_names_cover_the_three_architectures():
    from intrudim.weights.names import short_matrix_name

    assert short_matrix_name("encoder.layer.4.attention.self.query.weight") == "L4 attn.q"
    assert short_matrix_name("encoder.layer.4.attention.output.dense.weight") == "L4 attn.o"
    assert short_matrix_name("encoder.layer.4.intermediate.dense.weight") == "L4 mlp.up"
    assert short_matrix_name("encoder.layer.4.output.dense.weight") == "L4 mlp.down"
    assert short_matrix_name("model.layers.4.mlp.up_proj.weight") == "L4 mlp.up"
    assert short_matrix_name("model.layers.4.self_attn.o_proj.weight") == "L4 attn.o"
    assert short_matrix_name("h.4.attn.c_attn.weight") == "L4 attn.qkv"
    assert short_matrix_name("h.4.mlp.c_proj.weight") == "L4 mlp.down"
    assert short_matrix_name("pooler.dense.weight") == "pooler.dense"


def test_toy_output_fits_80_columns_and_names_the_thresholds():
    result = run("toy", "--n", "128", "--trials", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout)
    assert "from λ = 0.5·σ_max" in result.stdout and "it is not the threshold" in result.stdout


@pytest.mark.parametrize("command", ["analyze", "toy", "train", "sweep", "tasks", "forgetting", "repair", "regime"])
def test_help_at_80_columns(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert_fits(text)
    assert "<bool>" not in text  # flags are shown as flags
    if command in ("analyze", "forgetting", "repair"):
        assert f"Usage: intrudim {command} [OPTIONS] [BASE] TUNED" in text
    if command == "analyze":
        assert "--effective-rank / --no-effective-rank" in text
    # No option's help squeezed into a narrow column: it starts by column 40, leaving it 40 or more characters.
    import re

    columns = [m.start(2) for line in text.splitlines() if (m := re.match(r"^  (--\S.*?)\s{2,}(\S.*)$", line))]
    assert columns and max(columns) <= 40, columns
    from typer.main import get_command

    from intrudim.cli import app

    click_command = get_command(app).commands[command]
    for param in click_command.params:
        assert (param.help or "").strip(), f"{command} {param.name} has no help text"


# --- library noise --------------------------------------------------------------------------------------------


NOISY = """
import sys
if sys.argv[1] == "quiet":
    from intrudim.cli.common import quiet_libraries
    quiet_libraries()
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[2])
model.is_gradient_checkpointing
model.save_pretrained(sys.argv[3])
"""


def test_library_noise_is_silenced_by_the_cli(tiny_models, tmp_path):
    """transformers' "Loading weights"/"Writing model shards" bars and the is_gradient_checkpointing FutureWarning
    appear without intrudim's quiet_libraries() (which main() calls) and not with it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="default")
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    env.pop("TRANSFORMERS_VERBOSITY", None)
    outputs = {}
    for mode in ("loud", "quiet"):
        done = subprocess.run([sys.executable, "-c", NOISY, mode, str(tiny_models["bert"]), str(tmp_path / mode)],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        outputs[mode] = done.stderr
    for noise in ("Loading weights", "Writing model shards", "is_gradient_checkpointing"):
        assert noise in outputs["loud"], noise  # the check can fail: the noise exists without the fix
        assert noise not in outputs["quiet"], noise
    cli_source = (Path(__file__).resolve().parents[1] / "src" / "intrudim" / "cli" / "app.py").read_text()
    assert "    quiet_libraries()\n    app()" in cli_source  # main() calls it before anything is imported



def test_tasks_table_fits_80_columns():
    result = run("tasks")
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout)
    assert "sentiment" in result.stdout and "--describe" in result.stdout


def test_training_progress_writes_lines_when_not_a_terminal(capsys, monkeypatch):
    """Without a terminal (a log file, CI) the progress is plain lines, and each phase is named."""
    import intrudim.train.progress as progress_module

    monkeypatch.setattr(progress_module, "LINE_EVERY_SECONDS", 0.0)
    with progress_module.TrainingProgress(10, 0, enabled=True, description="lora sentiment") as bar:
        bar.update(5, 0.5, None)
        bar.message("evaluating 400 held-out examples")
        bar.update(10, 0.25, 0.9)
    err = capsys.readouterr().err
    assert "lora sentiment: step 5/10, loss 0.5000, acc -" in err
    assert "lora sentiment: evaluating 400 held-out examples" in err
    assert "step 10/10, loss 0.2500, acc 0.900" in err


def test_analyze_progress_is_plain_lines_without_a_terminal(tiny_models, tmp_path):
    """stderr is a pipe here: the progress comes as lines (first matrix, then at most every 10 s, and the end)."""
    adapter = write_peft_adapter(tiny_models["bert"], "bert", tmp_path / "a", r=2)
    result = run("analyze", str(tiny_models["bert"]), str(adapter), "--no-cache")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("analyze: ")]
    assert lines and lines[0].startswith("analyze: 0/") and lines[-1].endswith("(done)"), result.stderr


def test_a_run_without_checkpoints_draws_no_intruders_over_steps_figure(tmp_path):
    from intrudim.train.figures import intruders_over_steps

    final_only = [{"event": "final", "step": 10, "intruders": {"total_intruders": 3, "matrices": [
        {"name": "m", "intruders": 3, "intruder_ranks": [1, 2, 3], "singular_values": [3.0, 2.0, 1.0]}]}}]
    assert intruders_over_steps(final_only, tmp_path / "f.png") is None and not (tmp_path / "f.png").exists()
    two = [{**final_only[0], "event": "checkpoint", "step": 5}, *final_only]
    assert intruders_over_steps(two, tmp_path / "g.png") == tmp_path / "g.png"
