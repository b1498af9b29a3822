"""What a sweep's or harden search's recommendation says: advice that fits what happened, and the caveats
that limit a recommendation (judges below their floor, judges that disagree by more than the effect, few
seeds)."""

from __future__ import annotations

from midre.report.aggregate import aggregate_runs
from midre.report.verdicts import recommendation_caveats
from midre.sweep import build_frontier, recommend


def _cands(*labels: str) -> list[dict]:
    return [{"label": lbl, "defense": {"name": lbl.split("-")[0], **({"a_h": float(lbl.split("a_h")[1])}
                                                                     if "a_h" in lbl else {})}, "skipped": None}
            for lbl in labels]


def _runs(label: str, accs: list[float], judge_a: list[float], judge_b: list[float]) -> list[dict]:
    """Records of one candidate on gmi, judged by two judges (pooled AttAcc = their mean)."""
    return [{"defense": label, "seed": s, "attack": "gmi", "acc": acc, "attacc_top1": (a + b) / 2,
             "attacc_top5": (a + b) / 2, "knn_dist": 1.0, "delta_eval": 1.0,
             "judges": [{"arch": "resnet18", "seed": 1234, "attacc_top1": a, "attacc_top5": a},
                        {"arch": "densenet121", "seed": 2234, "attacc_top1": b, "attacc_top5": b}]}
            for s, (acc, a, b) in enumerate(zip(accs, judge_a, judge_b, strict=True))]


def test_the_advice_fits_what_happened() -> None:
    raised = (_runs("nodef", [90.0, 90.2], [30.0, 31.0], [30.0, 31.0])
              + _runs("midre-a_h0.4", [89.9, 90.0], [45.0, 46.0], [45.0, 46.0]))
    frontier = build_frontier(_cands("nodef", "midre-a_h0.4"), raised, ["gmi"])
    chosen, note = recommend(frontier, ["gmi"], 1.0)
    assert chosen is None and "raised top-1 AttAcc" in note and "larger budget" in note
    assert "allow a larger accuracy drop" not in note  # a larger budget cannot fix a defense that leaks more
    costly = (_runs("nodef", [90.0, 90.2], [30.0, 31.0], [30.0, 31.0])
              + _runs("midre-a_h0.8", [70.0, 71.0], [5.0, 6.0], [5.0, 6.0]))
    chosen, note = recommend(build_frontier(_cands("nodef", "midre-a_h0.8"), costly, ["gmi"]), ["gmi"], 1.0)
    assert chosen is None and "No candidate stayed within the 1-point accuracy budget" in note
    assert "allow a larger accuracy drop" in note


def _report(runs: list[dict], judges: list[dict], labels: list[str]) -> dict:
    frontier = build_frontier(_cands(*labels), runs, ["gmi"])
    chosen, _ = recommend(frontier, ["gmi"], 1.0)
    results, _ = aggregate_runs(runs, labels, ["gmi"])
    return {"frontier": frontier, "recommendation": chosen, "results": results, "runs": runs, "judges": judges}


def test_a_recommendation_resting_on_disagreeing_weak_judges_says_so() -> None:
    # Judges 20 points apart on a ~6-point effect, both below the accuracy floor, two seeds.
    runs = (_runs("nodef", [90.0, 90.2], [30.0, 31.0], [50.0, 51.0])
            + _runs("midre-a_h0.4", [89.8, 90.0], [24.0, 25.0], [44.0, 45.0]))
    weak = [{"arch": "resnet18", "accuracy": 70.0}, {"arch": "densenet121", "accuracy": 60.0}]
    report = _report(runs, weak, ["nodef", "midre-a_h0.4"])
    assert report["recommendation"]["defense"] == "midre-a_h0.4"
    caveats = recommendation_caveats(report)
    assert any("2 of 2 judges" in c and "floor" in c for c in caveats)
    assert any("disagree by 20.0 points" in c and "6.0-point effect" in c for c in caveats)
    assert any("only 2 seeds" in c for c in caveats)


def test_a_recommendation_on_sound_judges_and_seeds_has_no_caveat() -> None:
    runs = (_runs("nodef", [90.0, 90.2, 90.1], [50.0, 51.0, 50.5], [51.0, 52.0, 51.5])
            + _runs("midre-a_h0.4", [89.8, 90.0, 89.9], [24.0, 25.0, 24.5], [25.0, 26.0, 25.5]))
    sound = [{"arch": "resnet18", "accuracy": 98.0}, {"arch": "densenet121", "accuracy": 99.0}]
    report = _report(runs, sound, ["nodef", "midre-a_h0.4"])
    assert report["recommendation"]["defense"] == "midre-a_h0.4"
    assert recommendation_caveats(report) == []
