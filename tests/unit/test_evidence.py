"""The evidence behind a verdict, on simulated studies whose truth is known: the hierarchical bootstrap
interval covers the true AttAcc at about its nominal rate, and the paired test rejects "no change" on null
data at about its level."""

from __future__ import annotations

import numpy as np

from midre.evaluation.evidence import bootstrap_p, compare, interval, point

IDENTITIES, SEEDS, PER_IDENTITY = 40, 3, 2


def _population(rng: np.random.Generator, n: int) -> np.ndarray:
    """Identities' log-odds of being recovered: some identities are easy, most are hard."""
    return rng.normal(-0.8, 1.2, n)


def _study(rng: np.random.Generator, logits: np.ndarray, shift: float = 0.0) -> dict[int, np.ndarray]:
    """Per seed, each identity's share of its reconstructions a judge credits (a target trained per seed moves
    every identity a little: the seed effect)."""
    out = {}
    for s in range(SEEDS):
        p = 1 / (1 + np.exp(-(logits + shift + rng.normal(0, 0.25))))
        out[s] = rng.binomial(PER_IDENTITY, p) / PER_IDENTITY
    return out


def _truth(shift: float = 0.0) -> float:
    rng = np.random.default_rng(12345)
    logits = _population(rng, 400_000)
    return float(np.mean(1 / (1 + np.exp(-(logits + shift + rng.normal(0, 0.25, logits.size))))))


def test_the_interval_covers_the_true_attacc_in_at_least_90_percent_of_studies() -> None:
    truth = _truth()
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        study = _study(rng, _population(rng, IDENTITIES))
        low, high = interval(list(study.values()), resamples=1000, seed=int(rng.integers(1 << 30)))
        covered += low <= truth <= high
        assert low <= point(list(study.values())) <= high
    assert covered >= 180, f"covered {covered} of 200"


def test_the_paired_test_keeps_its_level_on_null_data() -> None:
    rng = np.random.default_rng(11)
    rejected = 0
    for _ in range(400):
        logits = _population(rng, IDENTITIES)  # the same identities are attacked on both models
        result = compare(_study(rng, logits), _study(rng, logits), resamples=300, seed=int(rng.integers(1 << 30)))
        assert result is not None and 0 < result.p_value <= 1
        rejected += result.p_value < 0.05
    assert rejected <= 28, f"false positives: {rejected} of 400 (at most 7 %)"


def test_a_real_reduction_is_found_and_its_verdict_follows_the_interval() -> None:
    rng = np.random.default_rng(3)
    logits = _population(rng, IDENTITIES)
    result = compare(_study(rng, logits, shift=-1.5), _study(rng, logits))
    assert result.verdict == "lowers" and result.ci_high < 0 and result.p_value < 0.01
    same = compare(_study(rng, logits), _study(rng, logits))
    assert (same.verdict == "no_evidence") == (same.ci_low <= 0 <= same.ci_high)
    assert bootstrap_p(np.zeros(10), 0.0) == 1.0 and bootstrap_p(np.empty(0), 1.0) == 1.0


def _records(defense: str, shares: dict[int, list[float]], acc: float = 90.0, adaptive: bool = False) -> list[dict]:
    """Study run records with per-identity outcomes (percent) and per-identity held-out accuracy."""
    return [{"attack": "gmi", "defense": defense, "seed": s, "adaptive": adaptive, "acc": acc,
             "attacc_top1": float(np.mean(v)), "attacc_top5": float(np.mean(v)), "knn_dist": 10.0,
             "delta_eval": 10.0, "queries": 0,
             "identities": {str(i): {"attacc_top1": x, "attacc_top5": x, "knn_dist": 10.0} for i, x in enumerate(v)},
             "acc_by_identity": {str(i): [9, 10] for i in range(len(v))}}
            for s, v in shares.items()]


def test_the_report_rows_carry_intervals_and_the_verdict_follows_the_paired_comparison() -> None:
    from midre.report.aggregate import aggregate_runs

    rng = np.random.default_rng(0)
    base = {s: list(rng.choice([0.0, 100.0], 30, p=[0.3, 0.7])) for s in range(3)}
    lower = {s: [x if rng.random() < 0.5 else 0.0 for x in v] for s, v in base.items()}
    runs = _records("nodef", base) + _records("midre", lower, 89.0)
    runs += _records("midre", base, 89.0, adaptive=True)  # the adaptive attacker undoes the defense
    results, verdicts = aggregate_runs(runs, ["nodef", "midre"], ["gmi"])
    for row in results:
        m = row["metrics"]["attacc_top1"]
        assert 0 <= m["ci_low"] <= m["mean"] <= m["ci_high"] <= 100
        assert m["ci_low"] < m["ci_high"]
    assert [(r["defense"], r["adaptive"]) for r in results] == [("nodef", False), ("midre", False), ("midre", True)]
    standard, adaptive = (v for v in verdicts if v["defense"] == "midre")
    c = standard["comparison"]
    assert c["verdict"] == "lowers" and c["ci_high"] < 0 and 0 <= c["p_value"] <= 0.05
    assert "95 % CI" in standard["text"]
    assert adaptive["comparison"]["verdict"] == "no_evidence"
    # the stronger attacker decides: the defense helps only against a non-adaptive attacker
    assert standard["against_adaptive"] == "fails" and standard["status"] == "no_effect"
    assert "only against a non-adaptive attacker" in standard["text"]


def test_the_recommendation_cites_its_interval() -> None:
    from midre.sweep import build_frontier, candidate_evidence, recommend

    rng = np.random.default_rng(1)
    base = {s: list(rng.choice([0.0, 100.0], 30, p=[0.3, 0.7])) for s in range(2)}
    strong = {s: [x if rng.random() < 0.4 else 0.0 for x in v] for s, v in base.items()}
    same = {s: list(v) for s, v in base.items()}
    records = _records("nodef", base) + _records("midre-a_h0.4", strong, 89.6) + _records("midre-a_h0.2", same, 89.9)
    cands = [{"label": lbl, "defense": {"name": "midre", "a_h": a} if a else {"name": "nodef"}, "skipped": None}
             for lbl, a in (("nodef", None), ("midre-a_h0.4", 0.4), ("midre-a_h0.2", 0.2))]
    frontier = build_frontier(cands, records, ["gmi"])
    evidence = candidate_evidence(frontier, records, ["gmi"])
    assert evidence["midre-a_h0.2"]["gmi"]["verdict"] == "no_evidence"
    chosen, reason = recommend(frontier, ["gmi"], 1.0, evidence)
    assert chosen["defense"] == "midre-a_h0.4" and "95 % CI" in reason and chosen["evidence"]
    chosen, note = recommend(frontier[:1] + frontier[2:], ["gmi"], 1.0, evidence)
    assert chosen is None and "95 % CI" in note and "more seeds" in note


def test_identical_outcomes_say_so_instead_of_asking_for_more_seeds() -> None:
    from midre.report.aggregate import aggregate_runs

    same = {s: [0.0, 100.0, 0.0, 100.0] * 5 for s in range(2)}
    _, verdicts = aggregate_runs(_records("nodef", same) + _records("midre", same, 89.0), ["nodef", "midre"], ["gmi"])
    (verdict,) = verdicts
    assert verdict["comparison"]["verdict"] == "no_evidence" and verdict["comparison"]["diff"] == 0
    assert "the same identities were recovered" in verdict["comparison"]["text"]
    assert "would narrow it" not in verdict["comparison"]["text"]
