"""The examples a user copies run, offline, as they are: the notebook is executed by a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_peft_model_notebook_runs_and_shows_its_results(tmp_path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / "peft_model_in_a_notebook.ipynb", as_version=4)
    monkeypatch.setenv("INTRUDIM_CACHE", str(tmp_path / "cache"))  # the kernel inherits this process's environment
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "intruder dimensions (k=10, ε=0.5)" in text
    before, after = (int(n) for n in text.split("intruders: ")[1].split(" after")[0].split(" before, "))
    assert before > 0 and after < before  # the planted intruders are found, and λ = 0 removes them
    assert "contrastive: tuned − base" in text and text.count("95% CI") == 2
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the figures render inline
