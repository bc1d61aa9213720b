"""The HTML reports as a person sees them: opened in headless Chromium (issue 14), every figure loaded and not
blank, no console error, the verdict and tables visible. Skipped only where Chromium is absent and
$INTRUDIM_REQUIRE_BROWSER is unset; CI sets it (.ci/run), so there a missing browser fails."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import pytest
import torch
from browser import check_report, require_browser
from conftest import write_peft_adapter
from typer.testing import CliRunner

from intrudim.cli import app

runner = CliRunner()

ANALYSIS_SELECTORS = ["#verdict", "#summary", "#per-matrix", ".fig img"]


@pytest.fixture(autouse=True)
def _browser():
    require_browser()


def _png(colour_line: bool) -> str:
    """A 40×30 PNG as base64: white, with a red diagonal when ``colour_line`` (blank otherwise)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (40, 30), "white")
    if colour_line:
        ImageDraw.Draw(image).line((0, 0, 39, 29), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------ the checker can fail


def test_checker_reports_broken_blank_and_missing_images_script_errors_and_hidden_elements(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "good.png").write_bytes(base64.b64decode(_png(True)))
    (tmp_path / "figures" / "blank.png").write_bytes(base64.b64decode(_png(False)))
    page = tmp_path / "broken.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>broken</title></head><body>
<div id="verdict">shown</div><div id="hidden" style="display:none">hidden</div>
<img alt="inline good" src="data:image/png;base64,{_png(True)}">
<img alt="inline blank" src="data:image/png;base64,{_png(False)}">
<img alt="file good" src="figures/good.png">
<img alt="file blank" src="figures/blank.png">
<img alt="broken" src="figures/missing.png">
<img alt="lazy good" loading="lazy" style="margin-top:4000px" src="figures/good.png">
<script>throw new Error("report script failed");</script>
</body></html>""")  # fmt: skip
    result = check_report(page, required_selectors=["#verdict", "#hidden", "#absent"])
    by_alt = {image.alt: image for image in result.images}
    assert set(by_alt) == {"inline good", "inline blank", "file good", "file blank", "broken", "lazy good"}
    # Inline images are read from a canvas; file:// ones taint the canvas and are read from disk.
    assert by_alt["inline good"].blank is False and by_alt["inline good"].pixels_from == "canvas"
    assert by_alt["inline blank"].blank is True
    assert by_alt["file good"].blank is False and by_alt["file good"].pixels_from in ("canvas", "file")
    assert by_alt["file blank"].blank is True and by_alt["lazy good"].loaded
    assert not by_alt["broken"].loaded and by_alt["broken"].natural_width == 0
    assert any("report script failed" in e for e in result.console_errors)
    assert any("missing.png" in e for e in result.console_errors)
    assert result.missing_selectors == ("#absent",) and result.hidden_selectors == ("#hidden",)
    with pytest.raises(AssertionError) as failure:
        result.assert_ok()
    message = str(failure.value)
    for expected in ("'inline blank'", "'file blank'", "did not load", "missing.png", "report script failed",
                     "missing: '#absent'", "not visible: '#hidden'"):  # fmt: skip
        assert expected in message, message
    assert "'inline good'" not in message and "'file good'" not in message
    assert "characters)" in message and len(message) < 3000, "data: URIs are shortened in messages"


def test_checker_passes_a_clean_page(tmp_path):
    page = tmp_path / "clean.html"
    page.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>clean</title></head><body>
<p id="verdict">fine</p><img alt="figure" src="data:image/png;base64,{_png(True)}">
<script>document.getElementById("verdict").dataset.ran = "1";</script></body></html>""")
    result = check_report(page, required_selectors=["#verdict", "img"])
    result.assert_ok()
    assert result.title == "clean" and len(result.images) == 1


# ------------------------------------------------------------------------------ the reports intrudim writes


def _analysis_report(tiny_models, tmp_path, tuned, *extra: str):
    out = tmp_path / "report"
    result = runner.invoke(app, ["analyze", str(tiny_models["gpt2"]), str(tuned), "--out", str(out), "--k-sweep",
                                 "--cache", str(tmp_path / "cache"), *extra])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_analysis_report_with_intruders(tiny_models, tmp_path):
    adapter = write_peft_adapter(tiny_models["gpt2"], "gpt2", tmp_path / "adapter", r=2, strength=2.0)
    out = _analysis_report(tiny_models, tmp_path, adapter)
    page = check_report(out / "report.html", required_selectors=ANALYSIS_SELECTORS + ["#per-matrix tr.hot"],
                        text_of=["#paper-claims", "#measured-here"])  # fmt: skip
    page.assert_ok()
    assert len(page.images) == len(list((out / "figures").glob("*.png"))) >= 7
    assert "intruder dimensions in" in (out / "report.html").read_text()
    # the paper's findings are said to be the paper's; what intrudim measured comes with its regime and the command
    (paper,) = page.texts["#paper-claims"]
    assert paper.startswith("The paper reports") and "recovers part of that forgetting" in paper, paper
    (measured,) = page.texts["#measured-here"]
    assert "not measurements of this model" in measured and "destructive regime" in measured, measured
    assert "intrudim repair BASE TUNED --sweep" in measured and "--control all" in measured, measured


def test_analysis_report_without_intruders(tiny_models, tmp_path):
    """The tuned model is the base itself: zero intruders everywhere. The per-layer and per-type counts have nothing
    to plot, and a reader sees that said in words, not an empty box; the captions state this result's zeros."""
    out = _analysis_report(tiny_models, tmp_path, tiny_models["gpt2"])
    empty = ["#fig-by_layer .empty-state", "#fig-by_module_type .empty-state"]
    page = check_report(out / "report.html", required_selectors=ANALYSIS_SELECTORS + empty,
                        text_of=[*empty, "#fig-epsilon_sweep .caption", "#fig-effective_rank .caption",
                                 "#energy-share", "#fig-by_layer img"])  # fmt: skip
    page.assert_ok()
    assert len(page.images) == len(list((out / "figures").glob("*.png"))) >= 5
    assert "No intruder dimensions" in (out / "report.html").read_text()
    for selector in empty:
        (text,) = page.texts[selector]
        assert text.startswith("No intruder dimensions in any of the 8 matrices (k=10, ε=0.5)"), text
    assert page.texts["#fig-by_layer img"] == (), "no empty chart beside the words"
    (sweep,) = page.texts["#fig-epsilon_sweep .caption"]
    assert sweep.startswith("This tuned model: no intruder dimensions at any ε from 0.1 to 0.9"), sweep
    assert "LoRA does not" not in sweep and "In the paper (Fig. 5)" in sweep
    (rank,) = page.texts["#fig-effective_rank .caption"]
    assert "ΔW is zero in all 8 matrices" in rank and "drawn as one line" in rank, rank
    (energy,) = page.texts["#energy-share"]
    assert "0 % of ‖W_t‖" in energy and "mean over the 8 analysed matrices" in energy, energy


# ------------------------------------------------------------------------------ planted intruders, known answer


def _plant_intruders(base_dir: Path, out_dir: Path, plan: dict[str, list[float]], *, strength: float = 10.0) -> Path:
    """A dense "tuned" GPT-2 = the base plus, per matrix of ``plan``, one new direction u per listed cosine c:
    W_t = W₀ + Σ λ·u·vᵀ with u = c·u₅(W₀) + √(1−c²)·u⊥ (u⊥ outside W₀'s column space, so u's max |cos| to
    the base is c) and v one of W₀'s smallest right singular vectors (so W₀ v ≈ 0 and u becomes a top tuned
    vector, an intruder when c < ε). Conv1D weights are stored (in, out): W₀ is the transpose."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(base_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    for name, cosines in plan.items():
        W0 = state[name].to(torch.float64).T  # (out, in), out > in: W₀'s column space leaves room for u⊥
        U, S, Vh = torch.linalg.svd(W0, full_matrices=True)
        rank = S.shape[0]
        Wt = W0.clone()
        # Orthonormal directions outside W₀'s column space, one per planted vector: the planted u's are orthogonal.
        Q, _ = torch.linalg.qr(torch.randn(U.shape[1] - rank, len(cosines), generator=generator, dtype=torch.float64))
        for i, c in enumerate(cosines):
            u = c * U[:, 4] + (1 - c**2) ** 0.5 * (U[:, rank:] @ Q[:, i])
            Wt += strength * (1 - 0.1 * i) * float(S[0]) * torch.outer(u, Vh[-1 - i])
        state[name] = Wt.T.contiguous().to(state[name].dtype)
    out_dir.mkdir(parents=True)
    shutil.copy(base_dir / "config.json", out_dir / "config.json")
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


# Model order: h.0.attn.c_attn, h.0.mlp.c_fc, …, h.1.attn.c_attn, h.1.mlp.c_fc. The old choice (ties: the highest-
# ranked intruder, then model order) showed h.0.mlp.c_fc, h.0.attn.c_attn, h.1.attn.c_attn: the weakest tied one.
PLANTED = {
    "h.0.attn.c_attn.weight": [0.4],
    "h.0.mlp.c_fc.weight": [0.0, 0.1],
    "h.1.attn.c_attn.weight": [0.2],
    "h.1.mlp.c_fc.weight": [0.0],
}
EXPECTED_HEATMAPS = ["h.0.mlp.c_fc.weight", "h.1.mlp.c_fc.weight", "h.1.attn.c_attn.weight"]


def test_planted_intruders_choose_the_heatmaps_by_the_stated_rule_and_captions_state_the_numbers(tiny_models, tmp_path):
    import json

    tuned = _plant_intruders(tiny_models["gpt2"], tmp_path / "planted", PLANTED)
    out = _analysis_report(tiny_models, tmp_path, tuned)
    data = json.loads((out / "analysis.json").read_text())
    by_name = {m["name"]: m for m in data["matrices"]}
    assert {n: m["intruders"] for n, m in by_name.items() if m["intruders"]} == {n: len(c) for n, c in PLANTED.items()}
    for name, cosines in PLANTED.items():  # each planted direction has the planted max |cos|
        got = [by_name[name]["max_abs_cos"][r - 1] for r in by_name[name]["intruder_ranks"]]
        assert got == pytest.approx(cosines, abs=0.02), (name, got)

    page = check_report(out / "report.html", required_selectors=ANALYSIS_SELECTORS,
                        text_of=["h3", ".fig .caption", "#fig-epsilon_sweep .caption", "#fig-by_layer .caption",
                                 "#energy-share", "#per-matrix tr.hot"])  # fmt: skip
    page.assert_ok()
    heatmaps = [t.removeprefix("Similarity matrix: ") for t in page.texts["h3"] if t.startswith("Similarity matrix")]
    assert heatmaps == EXPECTED_HEATMAPS
    # The same rule, computed here from the JSON: most intruders, then the lowest max |cos| among the intruders.
    def lowest(m):
        return min(m["max_abs_cos"][r - 1] for r in m["intruder_ranks"]) if m["intruder_ranks"] else 1.0

    assert heatmaps == [m["name"] for m in sorted(data["matrices"], key=lambda m: (-m["intruders"], lowest(m)))][:3]
    captions = page.texts[".fig .caption"]
    for caption in captions[:3]:
        assert "most intruders, ties broken by the lowest max |cos| among their intruders" in caption, caption
    assert "Here: 1 intruder at rank 1, with max |cos| to any base vector 0.0" in captions[1], captions[1]
    (sweep,) = page.texts["#fig-epsilon_sweep .caption"]
    at_half = data["epsilon_sweep"]["0.5"]
    assert at_half == 5 and f"{at_half} at ε=0.5" in sweep and sweep.startswith("This tuned model (k=10"), sweep
    assert f"{data['epsilon_sweep']['0.1']} at ε=0.1" in sweep
    (layers,) = page.texts["#fig-by_layer .caption"]
    assert "3 in layer 0; 2 in layer 1" in layers, layers
    # Energy share: one definition (the mean of the per-matrix shares) and one unit (%), in the summary and table.
    (energy,) = page.texts["#energy-share"]
    mean = 100 * data["intruder_energy_share_mean"]
    assert f"{mean:.3g} % of ‖W_t‖" in energy and "mean over the 8 analysed matrices" in energy, energy
    hot = " ".join(page.texts["#per-matrix tr.hot"])
    for m in by_name.values():
        if m["intruders"]:
            assert f"{100 * m['intruder_energy_share']:.3g} %" in hot


def test_toy_report(tmp_path):
    out = tmp_path / "toy"
    result = runner.invoke(app, ["toy", "--n", "96", "--trials", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = check_report(out / "toy.html", required_selectors=["#findings", "#sweep-table", "#baseline-table"])
    page.assert_ok()
    assert len(page.images) == 2


def test_forgetting_report(tmp_path):
    from intrudim.evaluate.forgetting_result import summarize
    from intrudim.report.forgetting_report import write_forgetting_outputs

    losses = torch.tensor([2.0, 2.5, 3.0, 2.2], dtype=torch.float64)
    result = summarize(losses, losses + 0.5, measure="perplexity", tokens=64, seq_len=16,
                       text={"source": "file", "description": "four windows", "licence": ""})  # fmt: skip
    paths = write_forgetting_outputs(result, tmp_path / "forgetting")
    page = check_report(
        paths["html"], required_selectors=["section.forgetting .verdict", "section.forgetting table"]
    )
    page.assert_ok()
