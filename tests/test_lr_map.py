"""The learning-rate × rank map (`intrudim sweep --lrs`, issue 27): every cell a real run on a tiny BERT, its
forgetting equal to `intrudim forgetting`'s own measurement of that run, the written recipe rule, resume, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_train import _config, tiny_bert, tiny_llama  # noqa: F401  (session fixtures, used by name)

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.train.lr_map import LrMapResult, MapCell, choose_lr, lr_rank_map, parse_lrs

FORGETTING = ForgettingConfig(text="news", max_tokens=512, seq_len=32)  # the tiny models have 64 positions


def test_the_map_trains_every_cell_measures_its_forgetting_and_resumes(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    """On a causal LM (LLaMA): forgetting is its perplexity on the news text."""
    from intrudim.evaluate.forgetting import measure_forgetting

    config = _config(tiny_llama, max_steps=4, checkpoint_every=None, lr=None)
    out = tmp_path / "map"
    result = lr_rank_map(config, out, (1e-3, 5e-2), (1, 2, "full"), full_lrs=(1e-4,), forgetting=FORGETTING,
                         progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    assert [(c.rank, c.lr) for c in result.cells] == [(1, 1e-3), (2, 1e-3), (1, 5e-2), (2, 5e-2), ("full", 1e-4)]
    for cell in result.cells:
        stored = json.loads((Path(cell.run_dir) / "config.json").read_text())
        if cell.is_full:
            assert (stored["method"], stored["lr"]) == ("full", 1e-4)
        else:
            assert (stored["method"], stored["rank"], stored["total_lr"]) == ("lora", cell.rank, cell.lr)
        assert cell.steps == 4 and isinstance(cell.intruders, int) and 0 <= cell.accuracy <= 1
        low, high = cell.forgetting_ci95
        assert low <= cell.forgetting <= high or low == high
    # the forgetting column is `intrudim forgetting`'s measurement of the same run, to float rounding
    cell = result.cell(2, 5e-2)
    alone = measure_forgetting(str(tiny_llama), Path(cell.run_dir) / "final", FORGETTING)
    assert cell.forgetting == pytest.approx(alone.delta, abs=1e-6)
    data = json.loads((out / "map.json").read_text())
    assert len(data["cells"]) == 5 and set(data["first_intruder_lr"]) == {"1", "2"}
    assert data["forgetting"]["measure"] == alone.measure == "perplexity" and data["rule"].startswith("the smallest α·η of the map")
    assert (out / "figures" / "lr_rank_map.png").stat().st_size > 10_000
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")}
    assert len(before) == 5
    again = lr_rank_map(config, out, (1e-3, 5e-2), (1, 2, "full"), full_lrs=(1e-4,), forgetting=FORGETTING,
                        resume=True, progress=False, figures=False, cache_dir=tmp_path / "cache")  # fmt: skip
    assert again.cells == result.cells
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/result.json")} == before  # nothing retrained
    other_text = ForgettingConfig(text="wiki", max_tokens=512, seq_len=32)  # another text: measured again, not reused
    again = lr_rank_map(config, out, (1e-3, 5e-2), (1, 2, "full"), full_lrs=(1e-4,), forgetting=other_text,
                        resume=True, progress=False, figures=False, cache_dir=tmp_path / "cache")  # fmt: skip
    wiki = measure_forgetting(str(tiny_llama), Path(cell.run_dir) / "final", other_text)
    assert again.cell(2, 5e-2).forgetting == pytest.approx(wiki.delta, abs=1e-6) != cell.forgetting
    with pytest.raises(IntrudimError, match="already exists and is not empty"):
        lr_rank_map(config, out, (1e-3,), (1,), progress=False)


def test_a_model_forgetting_cannot_score_is_refused_before_any_training(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    config = _config(tiny_bert, max_steps=4, checkpoint_every=None, lr=None)
    with pytest.raises(IntrudimError, match="an encoder without a head"):
        lr_rank_map(config, tmp_path / "map", (1e-3,), (1,), progress=False)
    assert not any((tmp_path / "map").glob("lr-*"))  # nothing trained


def _cell(rank: int | str, lr: float, accuracy: float, intruders: int) -> MapCell:
    return MapCell(rank=rank, lr=lr, run_dir=f"r{rank}-{lr}", steps=10, accuracy=accuracy, intruders=intruders)


def test_the_recipe_rule_picks_the_smallest_rate_at_which_rank_1_learns_the_task() -> None:
    cells = (_cell(1, 1e-3, 0.55, 0), _cell(4, 1e-3, 0.93, 0), _cell(1, 3e-3, 0.95, 0), _cell(4, 3e-3, 0.99, 2),
             _cell(1, 1e-2, 0.99, 5), _cell(4, 1e-2, 0.99, 3))  # fmt: skip
    grid = LrMapResult(Path("m"), (1e-3, 3e-3, 1e-2), (1, 4), (), cells, None, 0.9)
    assert choose_lr(grid) == (3e-3, "the smallest α·η of the map at which LoRA r=1 reaches held-out accuracy ≥ 0.9 "
                                     "within the step budget")  # fmt: skip
    assert choose_lr(grid, rank=4)[0] == 1e-3
    assert grid.first_intruder_lr() == {"1": 1e-2, "4": 3e-3}
    never = LrMapResult(Path("m"), (1e-3,), (1,), (), (_cell(1, 1e-3, 0.5, 0),), None, 0.9)
    assert choose_lr(never)[0] is None and never.first_intruder_lr() == {"1": None}


def test_bad_learning_rates_are_one_clear_message(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from intrudim.cli.app import app

    assert parse_lrs("3e-3, 1e-3,3e-3") == (1e-3, 3e-3)
    for bad in ("1e-3,x", "0", "-1e-3", "nan", ""):
        with pytest.raises(IntrudimError, match="is not a positive learning rate"):
            parse_lrs(bad)
    done = CliRunner().invoke(app, ["sweep", "--model", str(tiny_bert), "--lrs", "1e-3,fast", "--ranks", "1",
                                    "--out", str(tmp_path / "m")])  # fmt: skip
    assert done.exit_code == 2 and "--lrs: 'fast' is not a positive learning rate" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "m").exists()
    done = CliRunner().invoke(app, ["sweep", "--model", str(tiny_bert), "--lrs", "1e-3", "--full-lrs", "big",
                                    "--out", str(tmp_path / "m")])  # fmt: skip
    assert done.exit_code == 2 and "--full-lrs: 'big'" in done.output


def test_the_cli_prints_the_map_where_intruders_begin_and_the_rule(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from intrudim.cli.app import app

    done = CliRunner().invoke(app, ["sweep", "--model", str(tiny_bert), "--task", "sentiment", "--lrs", "1e-3,5e-2",
                                    "--ranks", "1", "--steps", "3", "--eval-every", "3", "--checkpoint-every", "0",
                                    "--max-train-examples", "48", "--max-validation-examples", "16",
                                    "--forgetting-text", "none", "--quiet", "--cache-dir", str(tmp_path / "cache"),
                                    "--out", str(tmp_path / "m")], terminal_width=100)  # fmt: skip
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "learning rate × rank map" in text and "First α·η with an intruder: r=1" in text
    assert "Recipe rule (the smallest α·η of the map at which LoRA r=1 reaches" in text
    data = json.loads((tmp_path / "m" / "map.json").read_text())
    assert data["forgetting"] is None and [c["lr"] for c in data["cells"]] == [1e-3, 5e-2]


def test_overwrite_replaces_only_a_map_and_leaves_anything_else_untouched(tiny_bert: Path, tmp_path: Path) -> None:  # noqa: F811
    config = _config(tiny_bert, max_steps=4, checkpoint_every=None, lr=None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(IntrudimError, match=r"--overwrite refused: '.*mine' is not an intrudim map \(no map.json\)"):
        lr_rank_map(config, mine, (1e-3,), (1,), overwrite=True, forgetting=None, progress=False)
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_cells_trained_side_by_side_are_the_cells_trained_one_after_the_other(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    """workers=2 trains every unfinished cell first, two at a time, into the folders the sweeps read: the same
    weights, counts and accuracies as one after the other, each step reported once per cell."""
    from safetensors.torch import load_file

    config = _config(tiny_llama, max_steps=3, checkpoint_every=None, lr=None)
    options = dict(full_lrs=(1e-4,), forgetting=None, progress=False, figures=False, cache_dir=tmp_path / "cache")
    one = lr_rank_map(config, tmp_path / "one", (1e-3, 5e-2), (1, "full"), **options)  # type: ignore[arg-type]
    steps: list[tuple[object, int]] = []
    two = lr_rank_map(config, tmp_path / "two", (1e-3, 5e-2), (1, "full"), workers=2,
                      on_step=lambda key, step: steps.append((key, step)), **options)  # type: ignore[arg-type]  # fmt: skip
    assert sorted(steps, key=str) == sorted([((lr, 1), s) for lr in (1e-3, 5e-2) for s in (1, 2, 3)]
                                            + [((1e-4, "full"), s) for s in (1, 2, 3)], key=str)  # fmt: skip
    for a, b in zip(one.cells, two.cells, strict=True):
        assert (a.rank, a.lr, a.steps, a.accuracy, a.intruders) == (b.rank, b.lr, b.steps, b.accuracy, b.intruders)
        name = "adapter_model.safetensors" if a.rank != "full" else "model.safetensors"
        left, right = load_file(str(Path(a.run_dir) / "final" / name)), load_file(str(Path(b.run_dir) / "final" / name))
        assert left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*/*/result.json")}
    again = lr_rank_map(config, tmp_path / "two", (1e-3, 5e-2), (1, "full"), workers=2, resume=True, **options)  # type: ignore[arg-type]
    assert again.cells == two.cells  # finished cells are not trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*/*/result.json")} == before
