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
