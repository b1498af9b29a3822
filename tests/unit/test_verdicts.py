"""Leakage statements and warnings, provoked (and not provoked) by constructed reports."""

from __future__ import annotations

import json

import pytest

from midre.report import aggregate_runs
from midre.report.verdicts import (
    ATTACK_NEAR_CHANCE_SHARE,
    JUDGE_ACCURACY_FLOOR,
    JUDGE_DISAGREE_MIN_POINTS,
    leakage_statements,
    report_warnings,
    train_warnings,
)

GOOD_JUDGES = [{"arch": "resnet18", "seed": 1234, "accuracy": 98.0, "accuracy_split": "test"},
               {"arch": "densenet121", "seed": 2234, "accuracy": 96.0, "accuracy_split": "test"}]


def _run(defense, seed, attacc, acc=95.0, judges=None, pixel_std=0.2, attack="deepinversion"):
    run = {"attack": attack, "defense": defense, "seed": seed, "acc": acc, "attacc_top1": attacc,
           "attacc_top5": min(100.0, attacc + 10), "knn_dist": 100.0, "delta_eval": 100.0, "pixel_std": pixel_std}
    if judges is not None:
        run["judges"] = [{"arch": j["arch"], "seed": j["seed"], "attacc_top1": a, "attacc_top5": a}
                         for j, a in zip(GOOD_JUDGES, judges, strict=True)]
        run["attacc_top1"] = sum(judges) / len(judges)
    return run


def _report(runs, identities=40, judges=GOOD_JUDGES, seeds=None):
    defenses = list(dict.fromkeys(r["defense"] for r in runs))
    attacks = list(dict.fromkeys(r["attack"] for r in runs))
    results, verdicts = aggregate_runs(runs, defenses, attacks, baseline=defenses[0])
    report = {"dataset": {"identities": identities}, "results": results, "verdicts": verdicts, "runs": runs,
              "seeds": seeds if seeds is not None else sorted({r["seed"] for r in runs}),
              "models": {"evaluation": {"arch": "resnet18", "accuracy": 98.0}}}
    if judges:
        report["judges"] = judges
    return report


def _codes(report):
    return [w["code"] for w in report_warnings(report)]


def _leaky(seeds=(0, 1, 2), attacc=(50.0, 52.0, 54.0)):
    return [_run("nodef", s, a) for s, a in zip(seeds, attacc, strict=False)]


def test_a_sound_report_has_no_warnings():
    assert report_warnings(_report(_leaky())) == []


def test_leakage_statement_against_chance_and_reference():
    (st,) = leakage_statements(_report(_leaky()))
    assert st["level"] == "high" and st["attacc"] == pytest.approx(52.0)
    assert st["chance"] == pytest.approx(2.5) and st["reference"] == pytest.approx(97.0)
    assert st["text"].startswith("high: DeepInversion recovers 52 ± 2 % of identities, 20.8x chance (2.5 %)")
    assert "97 % of real held-out private images" in st["text"]


@pytest.mark.parametrize(("attacc", "level"), [(5.0, "none"), (15.0, "low"), (30.0, "moderate"), (60.0, "high")])
def test_leakage_levels(attacc, level):
    (st,) = leakage_statements(_report(_leaky(attacc=(attacc,) * 3)))
    assert st["level"] == level


def test_leakage_uses_the_baseline_row_of_each_attack():
    runs = _leaky() + [_run("midre", s, 10.0) for s in range(3)] + \
        [_run("nodef", s, 20.0, attack="gmi") for s in range(3)]
    statements = {s["attack"]: s for s in leakage_statements(_report(runs))}
    assert statements["deepinversion"]["defense"] == "nodef" and statements["deepinversion"]["attacc"] == 52.0
    assert statements["gmi"]["attacc"] == pytest.approx(20.0)


def test_judge_below_floor():
    weak = [GOOD_JUDGES[0], {**GOOD_JUDGES[1], "accuracy": JUDGE_ACCURACY_FLOOR - 5}]
    warnings = report_warnings(_report(_leaky(), judges=weak))
    assert [w["code"] for w in warnings] == ["judge_below_floor"]
    assert "densenet121" in warnings[0]["message"] and "85.0 %" in warnings[0]["message"]
    # a report of the single-judge era: its evaluation model is checked too
    old = _report(_leaky(), judges=[])
    old["models"]["evaluation"]["accuracy"] = 50.0
    assert _codes(old) == ["judge_below_floor"]


def test_attack_at_chance_is_a_failed_attack():
    report = _report(_leaky(attacc=(2.5, 1.25, 3.75)))
    warnings = report_warnings(report)
    assert [w["code"] for w in warnings] == ["attack_at_chance"]
    assert warnings[0]["attack"] == "deepinversion" and "failed" in warnings[0]["message"]
    (st,) = leakage_statements(report)
    assert st["level"] == "none" and "failed" in st["text"] and "not evidence" in st["text"]
    # just above the limit: no warning
    limit = 2.5 + ATTACK_NEAR_CHANCE_SHARE * (97.0 - 2.5)
    assert _codes(_report(_leaky(attacc=(limit + 1,) * 3))) == []


def test_flat_reconstructions_are_a_failed_attack_even_when_judges_credit_them():
    runs = [_run("nodef", s, 30.0, pixel_std=0.001, attack="mi-face") for s in range(3)]
    warnings = report_warnings(_report(runs))
    assert [w["code"] for w in warnings] == ["attack_at_chance"]
    assert "flat" in warnings[0]["message"] and warnings[0]["attack"] == "mi-face"


def test_a_defended_model_at_chance_is_not_a_failed_attack():
    runs = _leaky() + [_run("midre", s, 2.5) for s in range(3)]
    assert _codes(_report(runs)) == []


def test_target_near_chance():
    runs = [_run("nodef", s, 30.0, acc=3.75) for s in range(3)]
    warnings = report_warnings(_report(runs))
    assert [w["code"] for w in warnings] == ["target_near_chance"]
    assert "3.8 %" in warnings[0]["message"] and "2.5 %" in warnings[0]["message"]
    assert warnings[0]["defense"] == "nodef"


def test_single_seed():
    report = _report(_leaky(seeds=(0,), attacc=(50.0,)))
    assert _codes(report) == ["single_seed"]
    report.pop("seeds")  # read from the rows when the report has no seeds list
    assert _codes(report) == ["single_seed"]


def test_judges_disagree_beyond_the_seed_spread():
    runs = [_run("nodef", s, 0.0, judges=(40.0 + s, 20.0 - s)) for s in range(3)]
    warnings = report_warnings(_report(runs))
    assert [w["code"] for w in warnings] == ["judges_disagree"]
    assert "differ by 22.0 points" in warnings[0]["message"]
    (st,) = leakage_statements(_report(runs))
    assert st["judges_disagree"] and "(judges 19-41 %)" in st["text"]
    same = [_run("nodef", s, 0.0, judges=(30.0, 30.0)) for s in range(3)]
    (st,) = leakage_statements(_report(same))
    assert not st["judges_disagree"] and "recovers 30 ± 0 % (every judge 30 %) of identities" in st["text"]


def test_judges_within_the_seed_spread_or_the_minimum_do_not_warn():
    close = [_run("nodef", s, 0.0, judges=(31.0, 31.0 - JUDGE_DISAGREE_MIN_POINTS + 1)) for s in range(3)]
    assert _codes(_report(close)) == []
    noisy = [_run("nodef", s, 0.0, judges=(a + 10.0, a)) for s, a in enumerate((20.0, 50.0, 80.0))]
    assert _codes(_report(noisy)) == []  # 10 points apart, but the pooled figure's seed std is 30


def test_judge_spread_from_runs_when_rows_lack_it():
    runs = [_run("nodef", s, 0.0, judges=(40.0, 20.0)) for s in range(3)]
    report = _report(runs)
    for row in report["results"]:
        row.pop("judges", None)
    assert _codes(report) == ["judges_disagree"]


def test_train_warnings():
    (w,) = train_warnings({"test_accuracy": 0.0375}, 40)
    assert w["code"] == "target_near_chance"
    assert "3.75 %" in w["message"] and "2.50 %" in w["message"] and "40 identities" in w["message"]
    assert train_warnings({"test_accuracy": 0.9}, 40) == []
    assert [x["code"] for x in train_warnings({"acc": 11.0}, 10)] == ["target_near_chance"]
    assert train_warnings({"test_accuracy": float("nan")}, 40) == []


def test_cli_train_says_when_the_model_is_near_chance(tmp_path, capsys):
    from midre.cli import main as cli_main

    args = ["train", "--data", "digits", "--image-size", "16", "--channels", "1", "--arch", "cnn-small",
            "--epochs", "1", "--quiet", "--lr", "1e-9", "--out", str(tmp_path)]
    assert cli_main(args) == 0  # a learning rate this small leaves the model at its random start
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [w["code"] for w in out["warnings"]] == ["target_near_chance"]
    assert "WARNING (target_near_chance): Test accuracy" in captured.err and "near chance" in captured.err
