"""`intrudim demo` (issue 14): claims decided from planted measurements, settings reuse rules, and the real
quick demo end to end (slow), its report opened in headless Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_train import tiny_llama  # noqa: F401  (a session fixture, used by name)

from intrudim.experiments.claims import STATEMENTS, combine_seeds, decide_claims
from intrudim.experiments.demo import _check_settings
from intrudim.experiments.demo_config import DEMO_FILE, DemoConfig, DemoSettingsError, parse_seeds

QUICK = DemoConfig(quick=True)


def _analysis(intruders: int, effective_rank: float, k_sweep: dict[str, int] | None = None) -> dict[str, Any]:
    return {"total_intruders": intruders, "matrices": 36, "matrices_with_intruders": min(intruders, 36),
            "energy_share": 0.01 * intruders, "epsilon_sweep": {"0.3": intruders // 2, "0.5": intruders,
                                                                 "0.7": intruders + 1},
            "k_sweep": k_sweep, "effective_rank_mean": effective_rank, "effective_ranks": [effective_rank]}  # fmt: skip


def planted() -> dict[str, Any]:
    """Measurements under which every claim holds (the paper's picture)."""
    runs = {
        "lora-r1": {"accuracy": 1.0, "intruders": 6, "analysis": _analysis(6, 1.0, {"10%": 9, "50%": 20}),
                    "tracked": [{"step": 0, "intruders": 0}, {"step": 50, "intruders": 2}, {"step": 150, "intruders": 6}]},
        "lora-r8": {"accuracy": 0.99, "intruders": 1, "analysis": _analysis(1, 5.0, {"10%": 2, "50%": 8})},
        "full": {"accuracy": 1.0, "intruders": 0, "analysis": _analysis(0, 200.0, {"10%": 1, "50%": 8})},
        "b-only-r1": {"accuracy": 0.98, "intruders": 3, "analysis": _analysis(3, 1.0, {"10%": 5, "50%": 12})},
    }  # fmt: skip
    forgetting = {"measure": "contrastive", "text": {"name": "news"}, "rows": {
        "lora-r1": {"delta": 0.5, "ci95": [0.3, 0.7], "accuracy": 1.0, "intruders": 6},
        "lora-r8": {"delta": 0.1, "ci95": [0.0, 0.2], "accuracy": 0.99, "intruders": 1},
        "full": {"delta": 0.2, "ci95": [0.1, 0.3], "accuracy": 1.0, "intruders": 0}}}  # fmt: skip
    point = lambda lam, method, acc, loss: {"lambda": lam, "method": method, "accuracy": acc, "forgetting_loss": loss}  # noqa: E731
    repair = {"total_intruders": 6, "base_loss": 1.0, "points": [
        point(1.0, "none", 1.0, 1.5), point(0.5, "none", 0.99, 1.2), point(0.5, "non-intruder", 0.9, 1.6),
        point(0.5, "shrink", 0.95, 1.3)]}  # fmt: skip
    continual = {"tasks": ["sentiment", "topic"], "methods": {
        "r-1": {"intruders": [0, 3, 7], "energy_share": [0.0, 0.01, 0.02]},
        "full": {"intruders": [0, 0, 0], "energy_share": [0.0, 0.0, 0.0]}}}  # fmt: skip
    baseline = [{"n": n, "mean_max_cos": m, "theory": t, "minimum_possible": n**-0.5}
                for n, m, t in ((64, 0.30, 0.39), (256, 0.17, 0.21), (1024, 0.09, 0.11))]  # fmt: skip
    toy = {"first_intruder_ratio": 0.5, "v_top_ratio": 0.75, "random_baseline": baseline}
    return {"runs": runs, "forgetting": forgetting, "repair": repair, "continual": continual, "toy": toy}


def by_id(claims: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in claims}


def test_every_claim_holds_on_the_papers_picture_in_the_issues_order() -> None:
    claims = decide_claims(planted(), QUICK)
    assert [c["id"] for c in claims] == list(STATEMENTS)  # the issue's order, all ten
    for c in claims:
        assert c["held"] is True, c
        assert set(c) >= {"id", "statement", "figure", "held", "numbers", "rule", "recipe"}
        assert c["numbers"] and c["recipe"] and c["rule"]


@pytest.mark.parametrize(
    ("edit", "cid"),
    [
        (lambda m: m["runs"]["full"]["analysis"].update(total_intruders=4), "intruders-lora-vs-full"),
        (lambda m: m["runs"]["lora-r8"]["analysis"].update(total_intruders=6), "rank"),
        (lambda m: m["runs"]["lora-r8"]["analysis"].update(effective_rank_mean=150.0), "effective-rank"),
        (lambda m: m["runs"]["lora-r1"].update(tracked=[{"step": 0, "intruders": 0}, {"step": 50, "intruders": 8},
                                                        {"step": 150, "intruders": 6}]), "training-dynamics"),
        (lambda m: m["runs"]["b-only-r1"]["analysis"].update(total_intruders=6), "b-only"),
        (lambda m: m["forgetting"]["rows"]["full"].update(delta=0.9), "forgetting"),
        (lambda m: m["continual"]["methods"]["r-1"].update(intruders=[0, 5, 4]), "continual"),
        (lambda m: m["repair"]["points"][3].update(forgetting_loss=1.1), "repair"),  # shrink beats the repair
        (lambda m: m["repair"]["points"][1].update(accuracy=0.9), "repair"),  # too costly for the task
        (lambda m: m["toy"].update(first_intruder_ratio=None), "toy"),
        (lambda m: m["runs"]["full"]["analysis"].update(k_sweep={"10%": 12, "50%": 20}), "epsilon-and-k"),
    ],
)
def test_a_claim_against_the_measurements_is_not_held(edit, cid: str) -> None:
    measurements = planted()
    edit(measurements)
    claims = by_id(decide_claims(measurements, QUICK))
    assert claims[cid]["held"] is False, claims[cid]
    assert all(c["held"] is True for other, c in claims.items() if other != cid)


def test_runs_at_unequal_accuracy_leave_the_comparison_unmeasured_with_the_reason() -> None:
    measurements = planted()
    measurements["runs"]["lora-r1"]["accuracy"] = 0.6  # r=1 did not learn the task
    measurements["forgetting"]["rows"]["lora-r1"]["accuracy"] = 0.6
    claims = by_id(decide_claims(measurements, QUICK))
    for cid in ("intruders-lora-vs-full", "rank", "b-only", "forgetting"):
        assert claims[cid]["held"] is None
        assert "equal accuracy" in claims[cid]["reason"] and "0.6" in claims[cid]["reason"]
    measurements = planted()
    measurements["repair"]["total_intruders"] = 0
    assert "no intruders" in by_id(decide_claims(measurements, QUICK))["repair"]["reason"]


def test_a_demo_folder_is_reused_only_with_the_same_mode_and_other_seeds_may_be_added(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    _check_settings(out, QUICK)  # a new folder is fine
    out.mkdir()
    (out / DEMO_FILE).write_text(json.dumps(QUICK.to_json()), encoding="utf-8")
    _check_settings(out, QUICK)  # same settings: reused
    _check_settings(out, DemoConfig(quick=True, seeds=(0, 3)))  # seed 0 reused from seed-0/, seed 3 added
    with pytest.raises(DemoSettingsError, match=r"quick: stored True, now False"):
        _check_settings(out, DemoConfig(quick=False))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DemoSettingsError, match="holds no demo"):
        _check_settings(other, QUICK)
    assert (other / "notes.txt").read_text(encoding="utf-8") == "mine"
    old = tmp_path / "old"
    old.mkdir()
    (old / DEMO_FILE).write_text(json.dumps({"quick": True, "seed": 0, "recipe": {}}), encoding="utf-8")
    with pytest.raises(DemoSettingsError, match="one-seed demo of an earlier intrudim version"):
        _check_settings(old, QUICK)


def test_bad_settings_are_one_clear_paragraph_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / DEMO_FILE).write_text(json.dumps(DemoConfig(quick=False).to_json()), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "quick: stored False, now True" in done.stderr and "Traceback" not in done.stderr
    blocked = tmp_path / "file"
    blocked.write_text("x", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--out", str(blocked / "sub")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"Cannot write to --out directory '{blocked / 'sub'}'" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--seeds", "0,x", "--out",
                           str(tmp_path / "new")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--seeds: 'x' is not a non-negative integer" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--device", "gpu", "--out",
                           str(tmp_path / "new")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--device 'gpu' is unknown for training" in done.stderr, done.stderr
    assert not (tmp_path / "new").exists()


def test_the_demo_says_how_long_it_takes_and_what_runs_where() -> None:
    """Issue 27, part 4: before it starts, the time on 2 CPU cores and which parts a GPU takes (none on a CPU)."""
    from intrudim.experiments.demo import plan_text
    from intrudim.experiments.demo_config import MEASURED_MINUTES, expected_minutes

    full, quick = DemoConfig(), DemoConfig(quick=True, seeds=(0, 1))
    per_seed, maps = MEASURED_MINUTES["full"]
    assert expected_minutes(full) == 3 * per_seed + maps and expected_minutes(quick) == 2 * MEASURED_MINUTES["quick"][0]
    on_cpu = plan_text(full, "cpu")
    assert on_cpu.startswith("full demo, seeds 0, 1, 2: about ") and " h " in on_cpu  # over an hour: hours shown
    assert "Everything runs on the CPU" in on_cpu and "--device auto" in on_cpu
    on_gpu = plan_text(quick, "cuda")
    assert on_gpu.startswith("quick demo, seeds 0, 1: about ") and " h " not in on_gpu
    assert "On the GPU here: every training run (each seed's runs, continual's stages)" in on_gpu  # no maps in quick
    assert "the maps" in plan_text(full, "cuda") and "on the CPU: the toy model" in on_gpu


def test_seeds_default_by_mode_and_bad_seeds_are_refused() -> None:
    from intrudim.errors import IntrudimError

    assert DemoConfig(quick=True).seeds == (0,) and DemoConfig().seeds == (0, 1, 2)
    assert DemoConfig(seeds=(2, 0)).seeds == (2, 0) and parse_seeds(" 0, 1,2") == (0, 1, 2)
    for bad, message in (((-1,), "non-negative"), ((), "empty"), ((1, 1), "repeats"), ((True,), "non-negative")):
        with pytest.raises(IntrudimError, match=message):
            DemoConfig(seeds=bad)
    with pytest.raises(IntrudimError, match="'-1' is not a non-negative integer"):
        parse_seeds("0,-1")


def _seed_claims(held: dict[str, bool | None]) -> list[dict[str, Any]]:
    """decide_claims of the planted picture with the given claims forced to held/not held/not measured."""
    claims = decide_claims(planted(), QUICK)
    for c in claims:
        if c["id"] in held:
            c["held"] = held[c["id"]]
            c["reason"] = "planted" if held[c["id"]] is None else ""
    return claims


def test_claims_over_seeds_are_held_only_in_every_seed_and_fragile_when_seeds_disagree() -> None:
    per_seed = {0: _seed_claims({"b-only": True, "rank": False, "forgetting": None, "continual": True}),
                1: _seed_claims({"b-only": False, "rank": False, "forgetting": None, "continual": True}),
                2: _seed_claims({"b-only": True, "rank": True, "forgetting": None, "continual": None})}  # fmt: skip
    claims = by_id(combine_seeds(per_seed))
    assert [c["id"] for c in combine_seeds(per_seed)] == list(STATEMENTS)
    assert claims["toy"]["verdict"] == "held" and claims["toy"]["result"] == "held (3/3 seeds)"
    b_only = claims["b-only"]  # 2 of 3: a majority, but the seeds disagree
    assert (b_only["verdict"], b_only["held"], b_only["held_in"], b_only["measured_in"]) == ("fragile", True, 2, 3)
    assert b_only["result"] == "fragile (2/3 seeds)"
    assert [p["held"] for p in b_only["per_seed"]] == [True, False, True]
    rank = claims["rank"]  # 1 of 3: no majority
    assert (rank["verdict"], rank["held"], rank["result"]) == ("fragile", False, "fragile (1/3 seeds)")
    assert claims["forgetting"]["verdict"] == "not measured" and claims["forgetting"]["held"] is None
    assert claims["forgetting"]["reason"] == "planted"  # the same reason in every seed is said once
    continual = claims["continual"]  # seed 2 could not measure it: decided by the two that did
    assert (continual["verdict"], continual["held_in"], continual["measured_in"]) == ("held", 2, 2)
    assert continual["reason"] == "planted"
    assert set(claims["toy"]["numbers"]) == {"seed 0", "seed 1", "seed 2"}  # every seed's numbers are kept
    assert claims["toy"]["recipe"].endswith("seeds 0, 1, 2")
    one = by_id(combine_seeds({4: _seed_claims({"rank": False})}))
    assert one["rank"]["result"] == "not held (0/1 seed)" and one["rank"]["recipe"].endswith("seed 4")


def test_the_report_of_several_seeds_shows_each_seed_and_the_fragile_claims_in_a_browser(tmp_path: Path) -> None:
    """A planted three-seed summary rendered and opened in headless Chromium: every claim's row names each seed,
    a fragile claim has its own badge, and the per-seed figures are drawn."""
    from browser import check_report, require_browser

    from intrudim.report.demo_report import write_demo_report

    per_seed = {seed: _seed_claims({"b-only": seed != 1}) for seed in (0, 1, 2)}
    claims = combine_seeds(per_seed)
    summary = {"demo": QUICK.to_json(), "seeds": [0, 1, 2], "seed_folders": {str(s): f"seed-{s}" for s in (0, 1, 2)},
               "claims": claims, "held": 9, "fragile": 1, "not_held": 0, "not_measured": 0,
               "measurements": {str(s): planted() for s in (0, 1, 2)}, "seconds": {"total": 1.0}, "reused": []}  # fmt: skip
    html = write_demo_report(summary, tmp_path)["html"]
    text = html.read_text(encoding="utf-8")
    assert "fragile (2/3 seeds)" in text and "held (3/3 seeds)" in text
    assert "9 of 10 claims held in every seed, 1 fragile" in text
    require_browser()
    page = check_report(html, required_selectors=["#verdict", "#claims", "#claim-b-only .fragile",
                                                  "#claim-toy .seed-row[data-seed='2']"])  # fmt: skip
    page.assert_ok()
    assert len(page.images) >= 7, page


@pytest.mark.slow
def test_the_quick_demo_measures_every_claim_and_its_report_renders_in_a_browser(tmp_path: Path) -> None:
    """`make demo`'s command from nothing: every claim decided from measurements, a report a browser shows whole,
    and a second run with the same --out reuses every finished piece."""
    out = tmp_path / "demo_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INTRUDIM_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report:" in done.stdout and "report.html" in done.stdout
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    claims = summary["claims"]
    assert [c["id"] for c in claims] == list(STATEMENTS)
    for c in claims:
        assert c["held"] in (True, False, None)
        assert c["numbers"], c  # measured, never hard-coded
        if c["held"] is None:
            assert c["reason"], c
    assert summary["seeds"] == [0] and all(c["measured_in"] <= 1 for c in claims)
    import torch

    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and summary["workers"] == 2
    assert "quick demo, seed 0: about " in done.stderr and "on 2 CPU cores" in done.stderr, done.stderr[:2000]
    runs = summary["measurements"]["0"]["runs"]
    assert runs["lora-r1"]["analysis"]["total_intruders"] >= 1
    assert runs["full"]["analysis"]["total_intruders"] <= 1

    from browser import check_report, require_browser

    require_browser()
    page = check_report(out / "report.html", required_selectors=["#verdict", "#claims", "#repair-report"])
    page.assert_ok()
    assert (out / "seed-0" / "repair" / "report.html").is_file()  # the link to the repair sweep's own report leads somewhere
    assert len(page.images) >= 8, page

    before = {p: p.stat().st_mtime_ns for p in (out / "seed-0" / "runs").glob("*/result.json")}
    again = subprocess.run([sys.executable, "-m", "intrudim.cli", "demo", "--quick", "--out", str(out), "--json"],
                           capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["claims"] == claims
    assert {p: p.stat().st_mtime_ns for p in (out / "seed-0" / "runs").glob("*/result.json")} == before
    assert "reused from an earlier demo" in again.stderr and "run lora-r1 (seed 0)" in again.stderr, again.stderr[-2000:]


def test_intruders_over_steps_start_at_the_base_and_count_each_step_once(tmp_path: Path) -> None:
    """Fig. 7's series from a run's metrics.jsonl: step 0 is the base (0), then every tracked checkpoint; the final
    weights of a run that ended on a checkpoint step replace that step's point instead of repeating it."""
    from intrudim.experiments.demo_measures import tracked_intruders

    records = [{"event": "start", "step": 0}, {"event": "checkpoint", "step": 50, "intruders": {"total_intruders": 2}},
               {"event": "eval", "step": 100, "accuracy": 1.0},
               {"event": "checkpoint", "step": 100, "intruders": {"total_intruders": 4}},
               {"event": "final", "step": 100, "intruders": {"total_intruders": 4}}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    assert tracked_intruders(tmp_path) == [{"step": 0, "intruders": 0}, {"step": 50, "intruders": 2},
                                           {"step": 100, "intruders": 4}]  # fmt: skip


def test_forgetting_and_repair_claims_state_their_regime() -> None:
    """A perplexity rise above 2× is called destructive (issue 27); MiniLM's contrastive loss has no perplexity."""
    import math

    from intrudim.experiments.claims import forgetting_regime

    measurements = planted()
    assert by_id(decide_claims(measurements, QUICK))["forgetting"]["numbers"]["regime"] is None  # contrastive
    measurements["forgetting"]["measure"] = "perplexity"
    measurements["forgetting"]["rows"]["lora-r1"]["delta"] = 16.75  # the SmolLM2 recipe of docs/repair.md
    measurements["repair"]["regime"] = {"perplexity_ratio": 80.0, "destructive": True, "destructive_above": 2.0}
    claims = by_id(decide_claims(measurements, QUICK))
    regime = claims["forgetting"]["numbers"]["regime"]
    assert regime["perplexity_ratio"]["lora-r1"] == pytest.approx(math.exp(16.75))
    assert regime["destructive"] == {"lora-r1": True, "lora-r8": False, "full": False}
    assert claims["repair"]["numbers"]["regime"]["destructive"] is True
    assert forgetting_regime({"measure": "pseudo_loss", "rows": {"a": {"delta": math.log(1.5)}}})["destructive"] == {"a": False}


def test_the_full_demo_draws_each_map_once_and_its_report_shows_where_intruders_begin(tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    """The full recipe holds docs/train.md's two maps; a map step (here on a tiny LLaMA, two runs side by side)
    writes OUT/map-MODEL with map.json and the figure, reuses its cells, and the report shows the figure, where
    intruders begin and the rule's pick (opened in headless Chromium)."""
    from browser import check_report, require_browser

    from intrudim.experiments.demo import map_units
    from intrudim.experiments.demo_config import FULL, MapRecipe
    from intrudim.experiments.demo_config import QUICK as QUICK_RECIPE
    from intrudim.experiments.demo_measures import measure_map
    from intrudim.experiments.demo_progress import DemoProgress
    from intrudim.experiments.demo_state import Demo
    from intrudim.report.demo_report import write_demo_report

    assert [m.model for m in FULL.maps] == ["minilm", "smollm2"] and QUICK_RECIPE.maps == ()
    assert [m.runs() for m in FULL.maps] == [23, 7] and map_units(QUICK_RECIPE) == 0
    assert FULL.maps[0].train_config(0).total_lr is not None and FULL.maps[1].train_config(0).other_lr == 1e-5

    recipe_map = MapRecipe(model=str(tiny_llama), lrs=(1e-3, 5e-2), ranks=(1, "full"), full_lrs=(1e-4,), steps=3,
                           forgetting_tokens=512, forgetting_seq_len=32,
                           train=(("task", "sentiment"), ("max_train_examples", 96), ("max_validation_examples", 32),
                                  ("eval_batch_size", 32), ("max_length", 32)))  # fmt: skip
    out = tmp_path / "demo"
    with DemoProgress(map_units(FULL), enabled=False) as bar:
        demo = Demo(DemoConfig(quick=False, seeds=(0,)), 0, out, out / f"map-{tiny_llama.name}", bar, workers=2,
                    device="cpu")  # side by side on the device asked for
        data = measure_map(demo, recipe_map)
        assert bar.done == recipe_map.runs() * recipe_map.steps  # every step of every cell, once
    assert (out / data["figure"]).stat().st_size > 10_000
    assert len(data["cells"]) == 3 and set(data["first_intruder_lr"]) == {"1"}
    assert data["chosen_lr"] in (None, 1e-3, 5e-2) and data["rule"].startswith("the smallest α·η")
    assert all(c["forgetting"] is not None for c in data["cells"])
    before = {p: p.stat().st_mtime_ns for p in out.glob("map-*/*/*/result.json")}
    assert len(before) == 3
    again = measure_map(demo, recipe_map)
    assert again["cells"] == data["cells"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("map-*/*/*/result.json")} == before

    per_seed = {0: _seed_claims({})}
    summary = {"demo": DemoConfig(quick=False, seeds=(0,)).to_json(), "seeds": [0], "seed_folders": {"0": "seed-0"},
               "claims": combine_seeds(per_seed), "held": 10, "fragile": 0, "not_held": 0, "not_measured": 0,
               "measurements": {"0": planted()}, "maps": {data["model"]: data}, "seconds": {"total": 1.0}, "reused": [],
               "device": "cpu"}  # fmt: skip
    html = write_demo_report(summary, out)["html"]
    text = html.read_text(encoding="utf-8")
    assert data["model"] == tiny_llama.name and data["folder"] == f"map-{tiny_llama.name}"
    assert "full demo, seed 0, trained on the CPU, 1 s)" in text
    assert "Intruders first appear at: r = 1 at" in text and f"map-{tiny_llama.name}/map.json" in text
    require_browser()
    page = check_report(html, required_selectors=["#maps", f"#maps .map[data-model='{tiny_llama.name}'] img"])
    page.assert_ok()
