"""The HTML reports as a person sees them: opened in headless Chromium (issue 14), every figure loaded and not
blank, no console error, the verdict and tables visible. Skipped only where Chromium is absent and
$INTRUDIM_REQUIRE_BROWSER is unset; CI sets it (.ci/run), so there a missing browser fails."""

from __future__ import annotations

import base64
import io

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
    page = check_report(out / "report.html", required_selectors=ANALYSIS_SELECTORS + ["#per-matrix tr.hot"])
    page.assert_ok()
    assert len(page.images) == len(list((out / "figures").glob("*.png"))) >= 7
    assert "intruder dimensions in" in (out / "report.html").read_text()


def test_analysis_report_without_intruders(tiny_models, tmp_path):
    """The tuned model is the base itself: zero intruders everywhere, so every plot shows empty data."""
    out = _analysis_report(tiny_models, tmp_path, tiny_models["gpt2"])
    page = check_report(out / "report.html", required_selectors=ANALYSIS_SELECTORS)
    page.assert_ok()
    assert len(page.images) == len(list((out / "figures").glob("*.png"))) >= 5
    assert "No intruder dimensions" in (out / "report.html").read_text()


def test_toy_report(tmp_path):
    out = tmp_path / "toy"
    result = runner.invoke(app, ["toy", "--n", "96", "--trials", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = check_report(out / "toy.html", required_selectors=["#findings", "#sweep-table", "#baseline-table"])
    page.assert_ok()
    assert len(page.images) == 2


def test_forgetting_report(tmp_path):
    from intrudim.evaluate.forgetting import summarize
    from intrudim.report.forgetting_report import write_forgetting_outputs

    losses = torch.tensor([2.0, 2.5, 3.0, 2.2], dtype=torch.float64)
    result = summarize(losses, losses + 0.5, measure="perplexity", tokens=64, seq_len=16,
                       text={"source": "file", "description": "four windows", "licence": ""})  # fmt: skip
    paths = write_forgetting_outputs(result, tmp_path / "forgetting")
    page = check_report(
        paths["html"], required_selectors=["section.forgetting .verdict", "section.forgetting table"]
    )
    page.assert_ok()
