"""The regime experiment's questions, decided per seed from what it measured, then over the seeds. Pure functions.

Per seed (:func:`decide_seed`), each question is a claim dict as the demo's (:mod:`intrudim.experiments.claims`):
``id``, ``statement``, ``figure``, ``held`` (True / False / None when not measured), ``numbers``, ``rule``, ``reason``,
``recipe``; :func:`~intrudim.experiments.claims.combine_seeds` decides each over the seeds (held / fragile / not held
/ not measured, n / N). Every claim carries the regime of the runs it compares (tuned perplexity / base perplexity,
destructive above 2), and :func:`aggregate` adds, per method, the mean forgetting over seeds with a bootstrap
interval over seeds.

- Forgetting comparisons are made window by window on the same text (tuned losses of two runs paired by window):
  a run forgets more than another when the paired bootstrap 95% interval of the difference lies above 0. Both runs
  must be at equal accuracy (both reached the target, within :data:`~intrudim.experiments.claims.EQUAL_ACCURACY`).
- The repair beats the controls at λ when scaling the intruders recovers a larger share of the run's forgetting
  than scaling as many non-intruder directions and than the norm-matched shrink (point estimates of the mean loss
  on the same windows; the sweep has no interval).
"""

from __future__ import annotations

from typing import Any

import torch

from intrudim.evaluate.forgetting_result import paired_bootstrap_ci
from intrudim.experiments.claims import EQUAL_ACCURACY, accuracy_spread_within, combine_seeds
from intrudim.experiments.regime_config import FULL, RegimeConfig, lora_name
from intrudim.repair.sweep_result import DESTRUCTIVE_RATIO

METHOD_NAMES = {"none": "intruders × λ", "non-intruder": "non-intruders × λ", "shrink": "norm-matched shrink"}


def _claim(cid: str, statement: str, figure: str, held: bool | None, numbers: dict[str, Any], rule: str, recipe: str,
           reason: str = "") -> dict[str, Any]:  # fmt: skip
    return {"id": cid, "statement": statement, "figure": figure, "held": held, "numbers": numbers, "rule": rule,
            "reason": reason, "recipe": recipe}  # fmt: skip


def at_equal_accuracy(rows: dict[str, dict[str, Any]], names: list[str], target: float) -> tuple[bool, str]:
    """Whether the runs ``names`` are at equal accuracy (each ≥ ``target``, within EQUAL_ACCURACY), and why not."""
    accuracies = {name: rows[name]["accuracy"] for name in names}
    values = list(accuracies.values())
    if None not in values and min(values) >= target and accuracy_spread_within(values):
        return True, ""
    shown = ", ".join(f"{name} {'—' if a is None else f'{a:.3f}'}" for name, a in accuracies.items())
    return False, (f"not at equal accuracy (held-out accuracy {shown}; need each ≥ {target:g} and within "
                   f"{EQUAL_ACCURACY}), so the comparison the paper makes does not apply")  # fmt: skip


def forgetting_difference(forgetting: dict[str, Any], higher: str, lower: str) -> dict[str, Any]:
    """Δ(higher) − Δ(lower) on the same windows: the mean of the per-window tuned-loss differences and its paired
    bootstrap 95% interval (2000 resamples of the windows, seed 0)."""
    a = torch.tensor(forgetting["rows"][higher]["window_losses"], dtype=torch.float64)
    b = torch.tensor(forgetting["rows"][lower]["window_losses"], dtype=torch.float64)
    low, high = paired_bootstrap_ci(b, a)
    return {"difference": float((a - b).mean()), "ci95": [low, high]}


def _regime(forgetting: dict[str, Any], names: list[str]) -> dict[str, Any]:
    regime = forgetting.get("regime") or {}
    ratios, destructive = regime.get("perplexity_ratio", {}), regime.get("destructive", {})
    return {name: {"perplexity_ratio": ratios.get(name), "destructive": destructive.get(name)} for name in names}


def _above(cid: str, statement: str, figure: str, forgetting: dict[str, Any], higher: str, lower: str,
           target: float, recipe: str) -> dict[str, Any]:  # fmt: skip
    """The claim that ``higher`` forgets more than ``lower``: held when the interval of the difference is above 0."""
    rows = forgetting["rows"]
    numbers: dict[str, Any] = {name: {"delta": rows[name]["delta"], "ci95": rows[name]["ci95"],
                                      "accuracy": rows[name]["accuracy"], "intruders": rows[name]["intruders"]}
                               for name in (higher, lower)}  # fmt: skip
    numbers["difference"] = forgetting_difference(forgetting, higher, lower)
    numbers["regime"] = _regime(forgetting, [higher, lower])
    rule = (f"{higher}'s loss increase on the text minus {lower}'s, paired by window: its 95% interval lies above 0; "
            f"both at equal accuracy")  # fmt: skip
    equal, why = at_equal_accuracy(rows, [higher, lower], target)
    if not equal:
        return _claim(cid, statement, figure, None, numbers, rule, recipe, why)
    low, high = numbers["difference"]["ci95"]
    difference = numbers["difference"]["difference"]
    if low > 0:
        return _claim(cid, statement, figure, True, numbers, rule, recipe)
    if high < 0:
        reason = f"the opposite: {higher} forgets less than {lower} ({difference:+.4g} [{low:+.4g}, {high:+.4g}])"
    else:
        reason = f"indistinguishable: the difference {difference:+.4g} has a 95% interval [{low:+.4g}, {high:+.4g}] containing 0"
    return _claim(cid, statement, figure, False, numbers, rule, recipe, reason)


def repair_claim(run: str, lam: float, repair: dict[str, Any], forgetting: dict[str, Any], recipe: str) -> dict[str, Any]:
    """At λ, scaling ``run``'s intruders recovers more of its forgetting than each control."""
    cid = f"repair-{run}-lambda-{lam:g}"
    statement = (f"Scaling {run}'s intruder singular values by λ={lam:g} recovers more of its forgetting than scaling "
                 f"as many non-intruder directions by λ, and more than a norm-matched shrink of the whole update.")  # fmt: skip
    rule = "the intruders' recovered fraction of the forgetting is above both controls' at this λ"
    numbers: dict[str, Any] = {"lambda": lam, "intruders": repair.get("total_intruders"),
                               "regime": _regime(forgetting, [run])}  # fmt: skip
    if repair.get("skipped"):
        return _claim(cid, statement, "v2 abstract", None, numbers, rule, recipe, repair["skipped"])
    key = f"{lam:g}"
    recovered = {method: repair["recovered"].get(method, {}).get(key) for method in METHOD_NAMES}
    points = {(p["method"], f"{p['lambda']:g}"): p for p in repair["points"]}
    numbers.update({"recovered": recovered, "base_loss": repair["base_loss"], "tuned_loss": repair["tuned_loss"],
                    "loss": {m: (points.get((m, key)) or {}).get("forgetting_loss") for m in METHOD_NAMES},
                    "accuracy": {m: (points.get((m, key)) or {}).get("accuracy") for m in METHOD_NAMES},
                    "tuned_accuracy": (points.get(("none", "1")) or {}).get("accuracy")})  # fmt: skip
    if not repair["tuned_loss"] > repair["base_loss"]:
        return _claim(cid, statement, "v2 abstract", None, numbers, rule, recipe,
                      "the run did not forget (its loss on the text is not above BASE's): nothing to recover")  # fmt: skip
    if None in recovered.values():
        return _claim(cid, statement, "v2 abstract", None, numbers, rule, recipe, "a point of the sweep is missing")
    intruders = recovered["none"]
    held = intruders > recovered["non-intruder"] and intruders > recovered["shrink"]
    reason = ""
    if not held:
        beaten = [METHOD_NAMES[m] for m in ("non-intruder", "shrink") if recovered[m] >= intruders]
        reason = f"{' and '.join(beaten)} recovered as much or more"
    return _claim(cid, statement, "v2 abstract", held, numbers, rule, recipe, reason)


def decide_seed(config: RegimeConfig, forgetting: dict[str, Any], repairs: dict[str, dict[str, Any]],
                recipe: str) -> list[dict[str, Any]]:  # fmt: skip
    """Every question for one seed, in a fixed order (so that the seeds combine claim by claim)."""
    r1, high = lora_name(1), lora_name(config.high_rank)
    target = config.target_accuracy
    claims = [
        _above("rank-forgetting", f"LoRA r=1 forgets more of the pre-training distribution than LoRA r={config.high_rank} "
               "(α = 2r), at equal task accuracy.", "Sec. 4, Fig. 9", forgetting, r1, high, target, recipe),
    ]  # fmt: skip
    for run, rank in ((r1, 1), (high, config.high_rank)):
        claims.append(_above(
            f"full-vs-{run}", f"Full fine-tuning forgets more than LoRA r={rank}, at equal task accuracy (v2: LoRA "
            "forgets less than full fine-tuning; v1's Fig. 9 found r=1 forgetting more).", "v2 abstract; Fig. 9",
            forgetting, FULL, run, target, recipe))  # fmt: skip
    for run in (r1, high):
        for lam in config.lambdas:
            if lam != 1.0:
                claims.append(repair_claim(run, lam, repairs[run], forgetting, recipe))
    return claims


def seed_interval(values: list[float]) -> list[float]:
    """The 95% percentile interval of the mean over seeds, from 2000 resamples of the seeds (coarse at 3 seeds)."""
    data = torch.tensor(values, dtype=torch.float64)
    if data.numel() < 2:
        return [float(data.mean()), float(data.mean())] if data.numel() else [float("nan"), float("nan")]
    return list(paired_bootstrap_ci(torch.zeros_like(data), data))


def _regime_text(claim: dict[str, Any]) -> dict[str, Any]:
    """The regime of the runs a combined claim compares, over its seeds: ratios per run and the destructive seeds."""
    ratios: dict[str, list[float]] = {}
    destructive: set[int] = set()
    for seed in claim["seeds"]:
        for run, regime in (claim["numbers"][f"seed {seed}"].get("regime") or {}).items():
            if regime.get("perplexity_ratio") is not None:
                ratios.setdefault(run, []).append(regime["perplexity_ratio"])
            if regime.get("destructive"):
                destructive.add(seed)
    spans = ", ".join(f"{run} ×{min(v):.3g}" + (f"–{max(v):.3g}" if max(v) != min(v) else "") for run, v in ratios.items())
    seeds_text = f"seed{'s' if len(destructive) > 1 else ''} {', '.join(map(str, sorted(destructive)))}"
    where = (f"destructive (ratio > {DESTRUCTIVE_RATIO:g}) in {seeds_text}" if destructive
             else f"non-destructive (ratio ≤ {DESTRUCTIVE_RATIO:g}) in every seed")  # fmt: skip
    return {"destructive_seeds": sorted(destructive), "text": f"tuned / base perplexity: {spans}; {where}"}


def aggregate(config: RegimeConfig, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Over the seeds: per method the mean forgetting with a bootstrap interval over seeds, every seed's value, its
    regime; per LoRA run, method and λ the mean recovered fraction; the claims combined (n / N) with their regime."""
    seeds = list(per_seed)
    methods: dict[str, Any] = {}
    for run in config.run_names:
        deltas = [per_seed[s]["forgetting"]["rows"][run]["delta"] for s in seeds]
        ratios = [(per_seed[s]["forgetting"].get("regime") or {}).get("perplexity_ratio", {}).get(run) for s in seeds]
        methods[run] = {
            "mean_delta": sum(deltas) / len(deltas), "ci95_over_seeds": seed_interval(deltas),
            "per_seed": {str(s): {"delta": d, "ci95": per_seed[s]["forgetting"]["rows"][run]["ci95"],
                                  "perplexity_ratio": r, "accuracy": per_seed[s]["runs"][run]["accuracy"],
                                  "steps": per_seed[s]["runs"][run]["steps"],
                                  "intruders": per_seed[s]["runs"][run]["intruders"]}
                         for s, d, r in zip(seeds, deltas, ratios, strict=True)},
            "destructive_seeds": [s for s, r in zip(seeds, ratios, strict=True) if r is not None and r > DESTRUCTIVE_RATIO],
        }  # fmt: skip
    recovered: dict[str, Any] = {}
    for run in config.lora_runs:
        for method in METHOD_NAMES:
            for lam in config.lambdas:
                values = {s: (per_seed[s]["repairs"][run].get("recovered") or {}).get(method, {}).get(f"{lam:g}")
                          for s in seeds}  # fmt: skip
                found = [v for v in values.values() if v is not None]
                recovered.setdefault(run, {}).setdefault(method, {})[f"{lam:g}"] = {
                    "mean": sum(found) / len(found) if found else None,
                    "ci95_over_seeds": seed_interval(found) if found else None,
                    "per_seed": {str(s): v for s, v in values.items()}, "seeds_measured": len(found),
                }  # fmt: skip
    claims = combine_seeds({s: per_seed[s]["claims"] for s in seeds})
    for claim in claims:
        claim["regime"] = _regime_text(claim)
    return {"methods": methods, "recovered": recovered, "claims": claims}
