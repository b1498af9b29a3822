"""Human review of reconstructions: reviewer screening, the two-way interval, kappa, and the report section."""

from __future__ import annotations

import numpy as np
import pytest

from midre.report import SCHEMA_VERSION, Report, aggregate_runs, render_html
from midre.report.human import cohen_kappa, summarize
from tests.unit.test_report import _runs

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJ"
       "RU5ErkJggg==")


def controls(reviewer: str, right: int, wrong: int = 0) -> list[dict]:
    """``right`` correct and ``wrong`` wrong control answers, real images and blanks alternating."""
    kinds = ("control_real", "control_blank")
    return [{"reviewer": reviewer, "kind": kinds[n % 2], "correct": n < right} for n in range(right + wrong)]


def recon(reviewer: str, identity: int, item: str, correct: bool, hits=None, *, attack: str = "gmi",
          defense: str = "nodef", seed: int = 0, chance: float = 0.2, image: str | None = None) -> dict:
    answer = {"reviewer": reviewer, "kind": "reconstruction", "correct": correct, "attack": attack,
              "defense": defense, "seed": seed, "identity": identity, "item": item, "judge_hits": hits,
              "chance": chance}
    if image is not None:
        answer["image"] = image
    return answer


def test_a_perfect_reviewer_scores_100_with_the_interval_at_100():
    answers = controls("ann", 6) + [recon("ann", i, f"gmi/{i}/{k}", True, [True]) for i in range(20) for k in range(2)]
    out = summarize(answers, judges=["resnet18 (seed 0)"], resamples=500)
    (row,) = out["results"]
    assert row["attacc_top1"] == {"mean": 100.0, "ci_low": 100.0, "ci_high": 100.0}
    assert row["answers"] == 40 and row["identities"] == 20 and row["chance"] == pytest.approx(20.0)
    assert row["judge_attacc_top1"] == 100.0 and row["kappa"] is None  # both always "yes": kappa undefined
    assert out["included"] == 1 and out["per_reviewer"][0]["reason"] is None
    assert out["per_reviewer"][0]["control_accuracy"] == 100.0


def test_a_random_reviewer_scores_chance_and_fails_the_controls():
    rng = np.random.default_rng(1)
    picks = rng.integers(0, 5, size=300)  # four candidates and "none", the right one is 0
    answers = [recon("rnd", i % 30, f"it{i}", bool(p == 0)) for i, p in enumerate(picks)]
    answers += [{"reviewer": "rnd", "kind": ("control_real", "control_blank")[n % 2], "correct": bool(p == 0)}
                for n, p in enumerate(rng.integers(0, 5, size=20))]
    screened = summarize(answers, resamples=300)
    assert screened["included"] == 0 and screened["results"] == []
    assert screened["per_reviewer"][0]["reason"].startswith("control accuracy")
    (row,) = summarize(answers, control_floor=0.0, resamples=300)["results"]
    mean = row["attacc_top1"]
    assert abs(mean["mean"] - 20.0) < 6 and mean["ci_low"] < 20.0 < mean["ci_high"]
    assert row["chance"] == pytest.approx(20.0) and row["judge_attacc_top1"] is None and row["kappa"] is None


def test_cohen_kappa_by_hand():
    a = [True, True, False, False, True, False, True, True, False, False]
    b = [True, False, False, False, True, True, True, True, False, False]
    assert cohen_kappa(a, b) == pytest.approx(0.6)  # observed 0.8, expected 0.5
    assert cohen_kappa([True, True, True, False], [True, True, False, False]) == pytest.approx(0.5)
    assert cohen_kappa([True, True], [True, True]) is None and cohen_kappa([], []) is None
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa([True], [True, False])


def test_reviewers_are_screened_with_reasons_and_left_out_of_the_figures():
    answers = controls("few", 2) + controls("bad", 2, 3) + controls("edge", 3, 1) + controls("good", 5)
    answers += [recon(name, i, f"x{i}", name in ("good", "edge")) for name in ("few", "bad", "edge", "good", "none")
                for i in range(4)]
    out = summarize(answers, resamples=100)
    reasons = {p["reviewer"]: p["reason"] for p in out["per_reviewer"]}
    assert reasons == {"bad": "control accuracy 40 % < floor 75 %", "edge": None, "few": "answered 2 controls, needs 4",
                       "good": None, "none": "answered 0 controls, needs 4"}
    assert [p["control_accuracy"] for p in out["per_reviewer"]] == [40.0, 75.0, 100.0, 100.0, None]
    assert out["reviewers"] == 5 and out["included"] == 2 and out["answers"] == len(answers)
    assert out["results"][0]["attacc_top1"]["mean"] == 100.0  # the wrong answers were all excluded reviewers'
    with pytest.raises(ValueError, match="kind"):
        summarize([{"reviewer": "a", "kind": "guess", "correct": True}])


def test_the_interval_resamples_reviewers_too():
    """Every identity scores 50 % either way; only when reviewers disagree does redrawing them move the figure."""
    alike, apart = [], []
    for name in ("a", "b", "c"):
        alike += controls(name, 4)
        apart += controls(name, 4)
        for i in range(15):
            alike += [recon(name, i, f"{i}/0", True), recon(name, i, f"{i}/1", False)]
            right = {"a": (True, True), "b": (False, False), "c": (True, False)}[name]
            apart += [recon(name, i, f"{i}/0", right[0]), recon(name, i, f"{i}/1", right[1])]
    (same,) = summarize(alike, resamples=400)["results"]
    (split,) = summarize(apart, resamples=400)["results"]
    assert same["attacc_top1"]["mean"] == split["attacc_top1"]["mean"] == 50.0
    assert same["attacc_top1"]["ci_high"] - same["attacc_top1"]["ci_low"] < 1
    assert split["attacc_top1"]["ci_high"] - split["attacc_top1"]["ci_low"] > 30


def test_reviewer_agreement_by_hand():
    a = [True, True, False, False, True, False, True, True, False, False]
    b = [True, False, False, False, True, True, True, True, False, False]
    answers = controls("a", 4) + controls("b", 4) + controls("c", 4)
    answers += [recon(name, i, f"i{i}", v) for name, verdicts in (("a", a), ("b", b)) for i, v in enumerate(verdicts)]
    answers += [recon("c", 0, "i0", True), recon("c", 99, "other", False)]  # one shared item: its pairs are skipped
    out = summarize(answers, resamples=100)
    assert out["reviewer_agreement"] == {"kappa": pytest.approx(0.6), "pairs": 1}
    assert summarize(controls("a", 4) + [recon("a", 0, "i0", True)], resamples=10)["reviewer_agreement"] is None


def test_judge_figures_and_false_positives():
    answers = controls("a", 4) + controls("b", 4) + controls("c", 4)
    answers += [recon(n, 1, "fp", n == "a", [True, False], image=PNG) for n in "abc"]  # judge yes, 2 of 3 people no
    answers += [recon(n, 2, "tie", n == "a", [True, True], image="javascript:alert(1)") for n in "ab"]  # a tie
    answers += [recon(n, 3, "miss", False, [False, False]) for n in "abc"]
    answers += [recon(n, 4, "agree", True, [True, True]) for n in "abc"]
    answers += [recon("a", 5, "fp-midre", False, [True, None], defense="midre", seed=1)]
    out = summarize(answers, judges=["j1", "j2"], resamples=100)
    nodef = next(r for r in out["results"] if r["defense"] == "nodef")
    assert nodef["answers"] == 11 and nodef["judge_attacc_top1"] == pytest.approx(100 * 8 / 11)
    human = [True, False, False, True, False, False, False, False, True, True, True]
    judge = [True] * 5 + [False] * 3 + [True] * 3
    assert nodef["kappa"] == pytest.approx(cohen_kappa(human, judge))
    assert nodef["kappa_per_judge"][0] == nodef["kappa"] and len(nodef["kappa_per_judge"]) == 2
    assert nodef["judge_false_positives"] == 1
    assert out["false_positives"] == [
        {"item": "fp-midre", "attack": "gmi", "defense": "midre", "seed": 1, "identity": 5},
        {"item": "fp", "attack": "gmi", "defense": "nodef", "seed": 0, "identity": 1, "image": PNG}]
    assert summarize(answers, judges=["j1", "j2"], resamples=100) == out  # deterministic given the seed


def _report(human: dict | None) -> Report:
    results, verdicts = aggregate_runs(_runs((90.0, 92.0, 88.0), (60.0, 70.0, 65.0)), ["nodef", "midre"], ["gmi"])
    data = {"kind": "study", "dataset": {"source": "digits", "identities": 10, "image_size": 8},
            "models": {"target": {"arch": "cnn-small"}}, "seeds": [0, 1, 2], "results": results, "verdicts": verdicts}
    if human is not None:
        data["human"] = human
    return Report.from_dict(data)


def test_the_report_shows_the_review_only_when_there_is_one():
    answers = controls("ann", 4) + controls("bob", 4) + controls("cat", 1, 3)
    rng = np.random.default_rng(3)
    for name in ("ann", "bob"):
        answers += [recon(name, i % 12, f"r{i}", bool(rng.random() < 0.6), [bool(i % 3)], image=PNG) for i in range(36)]
    summary = summarize(answers, judges=["resnet18 (seed 0)"], resamples=300)
    report = _report(summary)
    data = report.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 4 and data["human"] == summary
    assert Report.from_dict(data).human == summary and Report.from_dict({**data, "human": "junk"}).human is None
    html = render_html(report, {})
    assert "Human review" in html and summary["interval"].split(",")[0] in html
    row = summary["results"][0]["attacc_top1"]
    assert f"{row['mean']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]" in html
    assert f'<img src="{PNG}"' in html and "gmi · NoDef · identity" in html
    assert "<strong>cat</strong> (control accuracy 25 % &lt; floor 75 %)" in html
    plain = _report(None)
    assert "human" not in plain.to_dict() and "Human review" not in render_html(plain, {})
