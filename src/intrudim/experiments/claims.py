"""The paper's claims, decided from what a demo measured (issues 14, 27). Pure functions of the measurements.

Per seed (:func:`decide_claims`), each claim is a dict: ``id``, the paper's ``statement`` and ``figure``, ``held``
(True / False / None when not measured), ``numbers`` (the measured values that decide it), ``rule`` (how they
decide it), ``reason`` (why it is None, or a remark) and ``recipe`` (what was run). :func:`combine_seeds` then
decides each claim over the seeds: held in n of N, and ``fragile`` when the seeds disagree. Thresholds are named
constants below, the same for every demo.
"""

from __future__ import annotations

import math
from typing import Any

from intrudim.repair.sweep_result import DESTRUCTIVE_RATIO, LOSS_MEASURES

EQUAL_ACCURACY = 0.05
"""Two runs are "at equal accuracy" when their held-out accuracies differ by at most this (Sec. 3)."""
MIN_ACCURACY = 0.9
"""…and both reach at least this (the generated tasks are easy: a run below it did not learn the task)."""
ALMOST_NONE = 0.1
"""Full fine-tuning has "(almost) no" intruders: at most max(1, this × LoRA r=1's count)."""
LOW_EFFECTIVE_RANK = 0.5
"""LoRA's ΔW has "much lower" effective rank: its mean is below this × full fine-tuning's mean."""
REPAIR_ACCURACY_COST = 0.02
"""The repair's "small task cost": held-out accuracy drops by at most this."""

STATEMENTS: dict[str, tuple[str, str]] = {
    "intruders-lora-vs-full": (
        "At equal task accuracy, low-rank LoRA has intruder dimensions and full fine-tuning has (almost) none.",
        "Sec. 3; Figs. 1, 4"),
    "epsilon-and-k": (
        "Intruder counts fall as ε falls, and LoRA keeps more intruders than full fine-tuning for k up to the full rank.",
        "Figs. 5, 11"),
    "rank": ("Higher-rank LoRA (α = 2r) has fewer intruder dimensions than rank 1.", "Sec. 4, Figs. 4-5"),
    "effective-rank": ("The update ΔW of LoRA has a much lower effective rank than that of full fine-tuning.", "Fig. 6"),
    "training-dynamics": ("Intruder dimensions appear during training and grow in number as it goes on.", "Fig. 7"),
    "b-only": ("LoRA with A frozen (only B trained) has fewer intruder dimensions than standard LoRA of the same rank.",
               "Fig. 10"),
    "forgetting": ("LoRA r=1, which has intruders, forgets more of the pre-training distribution than higher-rank "
                   "LoRA and full fine-tuning.", "Sec. 4, Fig. 9"),
    "continual": ("Over sequential tasks, LoRA accumulates intruder dimensions (counted against the original base); "
                  "full fine-tuning does not.", "Fig. 8, v2 abstract"),
    "repair": ("Scaling the intruders' singular values down lowers forgetting at little task cost, more than scaling "
               "non-intruder directions or shrinking the whole update by the same norm.", "v2 abstract"),
    "toy": ("A rank-1 update W + λvvᵀ creates an intruder once λ is large against W's singular values; a random "
            "vector's max |cos| against a basis is small, near √(2 ln(2n)/n).", "Sec. 5, App. C"),
}  # fmt: skip


def claim(cid: str, held: bool | None, numbers: dict[str, Any], rule: str, recipe: str, reason: str = "") -> dict[str, Any]:
    statement, figure = STATEMENTS[cid]
    return {"id": cid, "statement": statement, "figure": figure, "held": held, "numbers": numbers, "rule": rule,
            "reason": reason, "recipe": recipe}  # fmt: skip


def not_measured(cid: str, reason: str, recipe: str = "") -> dict[str, Any]:
    return claim(cid, None, {}, "", recipe, reason)


def equal_accuracy(*accuracies: float | None) -> bool:
    values = [a for a in accuracies if a is not None]
    if len(values) != len(accuracies):
        return False
    return min(values) >= MIN_ACCURACY and accuracy_spread_within(values)


def accuracy_spread_within(values: list[float], tolerance: float = EQUAL_ACCURACY) -> bool:
    """max − min ≤ ``tolerance``, counting a spread that equals it only up to float rounding (1.00 and 0.95 differ
    by 0.05000000000000004) as within it."""
    return max(values) - min(values) <= tolerance + 1e-9


def _accuracy_reason(runs: dict[str, dict[str, Any]], names: list[str]) -> str:
    shown = ", ".join(f"{n} {runs[n]['accuracy']}" for n in names)
    return (f"not at equal accuracy (held-out accuracy {shown}; need all ≥ {MIN_ACCURACY} within {EQUAL_ACCURACY}), "
            f"so the comparison the paper makes does not apply")  # fmt: skip


def _sorted_sweep(sweep: dict[str, int]) -> list[tuple[float, int]]:
    return sorted((float(key), int(value)) for key, value in sweep.items())


def intruders_claims(runs: dict[str, dict[str, Any]], high: str, recipe: str) -> list[dict[str, Any]]:
    """Claims 1-6: one task, LoRA r=1, a higher rank, full fine-tuning, B-only LoRA (MiniLM)."""
    r1, hi, full, b_only = runs["lora-r1"], runs[high], runs["full"], runs["b-only-r1"]
    out = []
    n1, nf = r1["analysis"]["total_intruders"], full["analysis"]["total_intruders"]
    numbers = {"lora_r1_intruders": n1, "full_intruders": nf, "lora_r1_accuracy": r1["accuracy"],
               "full_accuracy": full["accuracy"], "lora_r1_energy_share": r1["analysis"]["energy_share"],
               "matrices": r1["analysis"]["matrices"]}  # fmt: skip
    rule = f"r=1 has ≥ 1 intruder and full FT ≤ max(1, {ALMOST_NONE}×r=1's), both at equal accuracy"
    if equal_accuracy(r1["accuracy"], full["accuracy"]):
        out.append(claim("intruders-lora-vs-full", n1 >= 1 and nf <= max(1, ALMOST_NONE * n1), numbers, rule, recipe))
    else:
        out.append(claim("intruders-lora-vs-full", None, numbers, rule, recipe,
                         _accuracy_reason(runs, ["lora-r1", "full"])))  # fmt: skip

    eps = _sorted_sweep(r1["analysis"]["epsilon_sweep"])
    monotone = all(a[1] <= b[1] for a, b in zip(eps, eps[1:], strict=False))
    k1, kf = r1["analysis"].get("k_sweep"), full["analysis"].get("k_sweep")
    numbers = {"lora_r1_by_epsilon": {str(e): n for e, n in eps}, "lora_r1_by_k": k1, "full_by_k": kf}
    if not k1 or not kf:
        out.append(claim("epsilon-and-k", None, numbers, "", recipe, "the k sweep was not measured"))
    else:
        shared = [key for key in k1 if key in kf]
        k_more = all(k1[key] >= kf[key] for key in shared) and any(k1[key] > kf[key] for key in shared)
        out.append(claim("epsilon-and-k", monotone and k_more, numbers,
                         "r=1's count never rises as ε falls, and r=1 ≥ full FT at every k fraction (> at one)",
                         recipe))  # fmt: skip

    nh = hi["analysis"]["total_intruders"]
    numbers = {"lora_r1_intruders": n1, f"{high}_intruders": nh, "lora_r1_accuracy": r1["accuracy"],
               f"{high}_accuracy": hi["accuracy"]}  # fmt: skip
    rule = f"{high} has fewer intruders than r=1, at equal accuracy"
    if equal_accuracy(r1["accuracy"], hi["accuracy"]):
        out.append(claim("rank", nh < n1, numbers, rule, recipe))
    else:
        out.append(claim("rank", None, numbers, rule, recipe, _accuracy_reason(runs, ["lora-r1", high])))

    lora_ranks = [runs[n]["analysis"]["effective_rank_mean"] for n in ("lora-r1", high)]
    full_rank = full["analysis"]["effective_rank_mean"]
    numbers = {"lora_r1_effective_rank": lora_ranks[0], f"{high}_effective_rank": lora_ranks[1],
               "full_effective_rank": full_rank}  # fmt: skip
    if None in lora_ranks or full_rank is None:
        out.append(claim("effective-rank", None, numbers, "", recipe, "effective ranks were not measured"))
    else:
        out.append(claim("effective-rank", max(lora_ranks) < LOW_EFFECTIVE_RANK * full_rank, numbers,
                         f"every LoRA run's mean effective rank of ΔW < {LOW_EFFECTIVE_RANK} × full FT's", recipe))  # fmt: skip

    series = r1.get("tracked") or []
    counts = [p["intruders"] for p in series]
    numbers = {"steps": [p["step"] for p in series], "lora_r1_intruders": counts}
    if len(counts) < 3:
        out.append(claim("training-dynamics", None, numbers, "", recipe, "fewer than two checkpoints were tracked"))
    else:
        out.append(claim("training-dynamics", counts[-1] > counts[0] and counts[-1] == max(counts), numbers,
                         "r=1's count rises from the base's 0 and is largest at the end of training", recipe))  # fmt: skip

    nb = b_only["analysis"]["total_intruders"]
    numbers = {"lora_r1_intruders": n1, "b_only_r1_intruders": nb, "lora_r1_accuracy": r1["accuracy"],
               "b_only_r1_accuracy": b_only["accuracy"]}  # fmt: skip
    rule = "B-only r=1 has fewer intruders than LoRA r=1, at equal accuracy"
    if equal_accuracy(r1["accuracy"], b_only["accuracy"]):
        out.append(claim("b-only", nb < n1, numbers, rule, recipe,
                         "docs/train.md found this ordering fragile across seeds and recipes"))  # fmt: skip
    else:
        out.append(claim("b-only", None, numbers, rule, recipe, _accuracy_reason(runs, ["lora-r1", "b-only-r1"])))
    return out


def forgetting_regime(forgetting: dict[str, Any]) -> dict[str, Any] | None:
    """Each run's perplexity on the text over BASE's, exp(Δ loss), and whether it is destructive (above repair's
    ``DESTRUCTIVE_RATIO``, 2: the run no longer models the text, its forgetting a collapse rather than the paper's
    modest rise at equal accuracy; issue 27); None for a measure with no perplexity (MiniLM's contrastive loss)."""
    measure = LOSS_MEASURES.get(forgetting.get("measure", ""))
    if measure is None or measure.exp_name is None:
        return None
    ratios = {name: math.exp(min(row["delta"], 700.0)) for name, row in forgetting["rows"].items()}
    return {"perplexity_ratio": ratios, "destructive": {name: r > DESTRUCTIVE_RATIO for name, r in ratios.items()},
            "destructive_above": DESTRUCTIVE_RATIO}  # fmt: skip


def forgetting_claim(forgetting: dict[str, Any], low: str, recipe: str) -> dict[str, Any]:
    """Claim 7: the low-rank run's loss on pre-training-like text rises more than every other run's."""
    rows = forgetting["rows"]
    numbers = {name: {"delta": row["delta"], "ci95": row["ci95"], "accuracy": row["accuracy"],
                      "intruders": row["intruders"]} for name, row in rows.items()}  # fmt: skip
    numbers["measure"] = forgetting["measure"]
    numbers["regime"] = forgetting_regime(forgetting)
    others = [name for name in rows if name != low]
    rule = f"{low}'s loss increase (tuned − base) is above every other run's, and its 95% CI excludes 0"
    accuracies = [rows[name]["accuracy"] for name in rows]
    if not equal_accuracy(*accuracies):
        return claim("forgetting", None, numbers, rule, recipe, _accuracy_reason(rows, list(rows)))
    held = all(rows[low]["delta"] > rows[name]["delta"] for name in others) and rows[low]["ci95"][0] > 0
    return claim("forgetting", held, numbers, rule, recipe)


def continual_claim(continual: dict[str, Any], recipe: str) -> dict[str, Any]:
    """Claim 8: LoRA's intruders (vs the original base) rise from the first to the last stage; full FT stays ≤ LoRA."""
    methods = continual.get("methods", {})
    # stage 0 is the base model itself (0 intruders by definition): the claim compares stage 1 with the last stage
    series = {name: list(data.get("intruders", []))[1:] for name, data in methods.items()}
    numbers = {"intruders_after_each_stage": series, "tasks": continual.get("tasks"),
               "energy_share_after_each_stage": {name: [round(x, 5) for x in list(data.get("energy_share", []))[1:]]
                                                 for name, data in methods.items()}}  # fmt: skip
    lora = [name for name in series if name != "full"]
    if not lora or any(None in counts or len(counts) < 2 for counts in series.values()):
        return claim("continual", None, numbers, "", recipe, "fewer than two stages were measured")
    low = lora[0]
    held = series[low][-1] > series[low][0]
    if "full" in series:
        held = held and series["full"][-1] <= series[low][-1]
    return claim("continual", held, numbers, f"{low}'s count after the last stage > after the first, and full FT's "
                 f"last ≤ {low}'s last", recipe)  # fmt: skip


def repair_claim(repair: dict[str, Any], lam: float, recipe: str) -> dict[str, Any]:
    """Claim 9: at λ, the intruder repair lowers the loss on the text, costs ≤ 2 points, and beats both controls."""
    points = {(p["lambda"], p["method"]): p for p in repair["points"]}
    tuned = points.get((1.0, "none"))
    repaired, other, shrink = (points.get((lam, m)) for m in ("none", "non-intruder", "shrink"))
    numbers = {"intruders": repair["total_intruders"], "base_loss": repair["base_loss"], "lambda": lam,
               "tuned": tuned, "intruders_scaled": repaired, "non_intruder_control": other, "shrink_control": shrink,
               "regime": repair.get("regime")}  # fmt: skip
    if repair["total_intruders"] == 0:
        return claim("repair", None, numbers, "", recipe, "the repaired run has no intruders to scale")
    if None in (tuned, repaired, other, shrink):
        return claim("repair", None, numbers, "", recipe, "a point of the sweep is missing")
    loss = {name: p["forgetting_loss"] for name, p in (("tuned", tuned), ("repaired", repaired), ("other", other),
                                                       ("shrink", shrink))}  # fmt: skip
    held = (loss["repaired"] < loss["tuned"] and repaired["accuracy"] >= tuned["accuracy"] - REPAIR_ACCURACY_COST
            and loss["repaired"] < loss["other"] and loss["repaired"] <= loss["shrink"])  # fmt: skip
    return claim("repair", held, numbers, f"at λ={lam:g}: loss below TUNED's, accuracy within {REPAIR_ACCURACY_COST}, "
                 "and loss below the non-intruder control's and no higher than the norm-matched shrink's", recipe)  # fmt: skip


def toy_claim(toy: dict[str, Any], recipe: str) -> dict[str, Any]:
    """Claim 10: the toy sweep finds an intruder (and v's direction on top); the random baseline is small."""
    baseline = toy["random_baseline"]
    below = all(p["minimum_possible"] <= p["mean_max_cos"] <= p["theory"] for p in baseline)
    falling = all(a["mean_max_cos"] > b["mean_max_cos"] for a, b in zip(baseline, baseline[1:], strict=False))
    numbers = {"first_intruder_ratio": toy["first_intruder_ratio"], "v_top_ratio": toy["v_top_ratio"],
               "random_max_cos": {str(p["n"]): round(p["mean_max_cos"], 4) for p in baseline},
               "theory": {str(p["n"]): round(p["theory"], 4) for p in baseline}}  # fmt: skip
    held = toy["first_intruder_ratio"] is not None and toy["v_top_ratio"] is not None and below and falling
    return claim("toy", held, numbers, "an intruder appears at some λ/σ_max of the sweep and v's direction becomes "
                 "top-1; the random max |cos| lies between 1/√n and √(2 ln(2n)/n) and falls with n", recipe)  # fmt: skip


def decide_claims(measurements: dict[str, Any], config: Any) -> list[dict[str, Any]]:
    """All ten claims, in the issue's order, from one seed's measurements (the recipe names no seed: the claims
    of every seed are combined by :func:`combine_seeds`, which adds them)."""
    recipe = config.recipe
    high = f"lora-r{recipe.high_rank}"
    train_recipe = (f"MiniLM, task {recipe.task}, {recipe.steps} steps × batch 16, {recipe.max_length} tokens, "
                    f"LoRA α=2r with α·η={recipe.total_lr:g} ({recipe.schedule}), full FT η=1e-4; "
                    f"k=10, ε=0.5")  # fmt: skip
    claims = intruders_claims(measurements["runs"], high, train_recipe)
    if recipe.forgetting_model == "smollm2":
        causal = (f"SmolLM2-135M as a language model on {recipe.task}, LoRA r=1 vs r=8, α=2r, α·η=2e-2, "
                  f"{recipe.causal_steps} steps × batch 8; perplexity on {recipe.forgetting_tokens} tokens of "
                  f"{recipe.forgetting_text}")  # fmt: skip
        low = "smollm2-r1"
    else:
        causal = (f"{train_recipe}; MiniLM's own contrastive objective on adjacent {recipe.forgetting_text} sentences "
                  f"(≤ {recipe.forgetting_tokens} tokens; MiniLM has no LM head — the full demo uses SmolLM2)")  # fmt: skip
        low = "lora-r1"
    claims.append(forgetting_claim(measurements["forgetting"], low, causal))
    continual_recipe = (f"MiniLM, tasks {' → '.join(recipe.continual_tasks)}, {recipe.continual_steps} steps each, "
                        f"ranks {', '.join(str(r) for r in recipe.continual_ranks)}, LoRA merged between stages")  # fmt: skip
    claims.insert(7, continual_claim(measurements["continual"], continual_recipe))
    claims.insert(8, repair_claim(measurements["repair"], recipe.repair_lambda, f"{causal}; λ={recipe.repair_lambda:g}"))
    claims.append(toy_claim(measurements["toy"], "W Gaussian/√n (n=768 by default), v a random unit vector, k=10, "
                            "ε=0.5; 200 random vectors per n"))  # fmt: skip
    return claims


VERDICTS = ("held", "fragile", "not held", "not measured")
"""A claim's overall verdict over the seeds: held in every measured seed, in some but not all, in none; or in no
seed measured."""


def combine_seeds(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each claim over the seeds: ``verdict`` (:data:`VERDICTS`), ``held_in`` n of ``measured_in`` N seeds,
    ``held`` True only when it held in a majority of the measured seeds (None when none measured it), every seed's
    ``numbers`` (keyed "seed S"), ``per_seed`` (seed, held, reason) and ``result``, the verdict in words
    (:func:`verdict_text`)."""
    seeds = list(per_seed)
    if not seeds:
        return []
    combined = []
    for index, first in enumerate(per_seed[seeds[0]]):
        rows = [per_seed[seed][index] for seed in seeds]
        held_in = sum(1 for row in rows if row["held"] is True)
        measured_in = sum(1 for row in rows if row["held"] is not None)
        if measured_in == 0:
            verdict, held = "not measured", None
        else:
            verdict = "held" if held_in == measured_in else "not held" if held_in == 0 else "fragile"
            held = 2 * held_in > measured_in
        reasons = list(dict.fromkeys(row["reason"] for row in rows if row["reason"]))
        if len(seeds) > 1 and len(reasons) > 1:
            reasons = [f"seed {seed}: {row['reason']}" for seed, row in zip(seeds, rows, strict=True) if row["reason"]]
        seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        combined.append({
            "id": first["id"], "statement": first["statement"], "figure": first["figure"], "verdict": verdict,
            "held": held, "held_in": held_in, "measured_in": measured_in, "seeds": seeds,
            "numbers": {f"seed {seed}": row["numbers"] for seed, row in zip(seeds, rows, strict=True)},
            "per_seed": [{"seed": seed, "held": row["held"], "reason": row["reason"]}
                         for seed, row in zip(seeds, rows, strict=True)],
            "rule": first["rule"], "reason": "; ".join(reasons), "recipe": f"{first['recipe']}; {seeds_text}",
        })  # fmt: skip
        combined[-1]["result"] = verdict_text(combined[-1])
    return combined


def verdict_text(claim: dict[str, Any]) -> str:
    """"held (3/3 seeds)", "fragile (2/3 seeds)", "not held (0/3 seeds)", "not measured"."""
    if claim["verdict"] == "not measured":
        return "not measured"
    return f"{claim['verdict']} ({claim['held_in']}/{claim['measured_in']} seed{'s' if claim['measured_in'] > 1 else ''})"
