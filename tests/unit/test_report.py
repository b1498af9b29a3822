"""Report aggregation, verdicts and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from midre.report import aggregate_runs, verdict, write_report


def _runs(nodef_att, midre_att, nodef_acc=(99.0, 98.0, 100.0), midre_acc=(97.0, 96.0, 98.0)):
    runs = []
    for seed in range(3):
        for defense, att, acc in (("nodef", nodef_att, nodef_acc), ("midre", midre_att, midre_acc)):
            runs.append({"attack": "deepinversion", "defense": defense, "seed": seed, "acc": acc[seed],
                         "attacc_top1": att[seed], "attacc_top5": att[seed] + 10, "knn_dist": 100.0 + seed,
                         "delta_eval": 100.0 + seed})
    return runs


def test_aggregate_mean_std_delta_and_verdict():
    results, verdicts = aggregate_runs(_runs((90.0, 92.0, 88.0), (60.0, 70.0, 65.0)), ["nodef", "midre"],
                                       ["deepinversion"])
    nodef, midre = results
    assert nodef["metrics"]["attacc_top1"]["mean"] == pytest.approx(90.0)
    assert nodef["metrics"]["attacc_top1"]["std"] == pytest.approx(2.0)
    assert midre["tradeoff_delta"] == pytest.approx((90.0 - 65.0) / (99.0 - 97.0))
    assert nodef["tradeoff_delta"] is None
    (v,) = verdicts
    assert v["status"] == "helped"
    assert v["text"].startswith("MIDRE lowered top-1 AttAcc of deepinversion by 25.0±")
    assert "at a cost of 2.0 accuracy points" in v["text"]


def test_verdict_within_one_std_and_hurt():
    runs = {"acc": [99.0, 99.0], "attacc_top1": [50.0, 60.0]}
    same = verdict("gmi", "midre", runs, {"acc": [99.5, 99.5], "attacc_top1": [58.0, 50.0]})
    assert same["status"] == "no_effect" and "did not lower AttAcc" in same["text"]
    assert "gaining 0.5 accuracy points" in same["text"]
    worse = verdict("gmi", "midre", runs, {"acc": [99.0, 99.0], "attacc_top1": [70.0, 81.0]})
    assert worse["status"] == "hurt" and "did NOT help" in worse["text"]


def test_single_run_is_inconclusive():
    v = verdict("deepinversion", "midre", {"acc": [100.0], "attacc_top1": [3.3]},
                {"acc": [100.0], "attacc_top1": [5.0]})
    assert v["status"] == "inconclusive" and "+1.7 points" in v["text"] and "single run" in v["text"]


def test_write_report_files_and_html(tmp_path):
    results, verdicts = aggregate_runs(_runs((90.0, 92.0, 88.0), (91.0, 89.0, 90.0)), ["nodef", "midre"],
                                       ["deepinversion"])
    real = np.random.default_rng(0).random((3, 1, 8, 8))
    grids = {"deepinversion": {"names": ["a", "b", "c"], "real": real,
                               "recon": {"NoDef": real[::-1].copy(), "MIDRE": real * 0.5}}}
    report = write_report({"dataset": {"source": "digits", "identities": 10, "image_size": 8},
                           "models": {"target": {"arch": "cnn-small"},
                                      "evaluation": {"arch": "resnet18", "accuracy": 97.5}},
                           "seeds": [0, 1, 2], "results": results, "verdicts": verdicts, "timings": {"total": 1.0}},
                          tmp_path, grids=grids)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 4 and data["results"][1]["metrics"]["acc"]["runs"] == [97.0, 96.0, 98.0]
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and "AttAcc top-1" in html and "Δ" in html
    assert "did not lower AttAcc for deepinversion" in html
    assert html.count("data:image/png;base64,") == 2  # trade-off plot + grid, embedded (the summary picture
    # repeats the tables: it is written for sharing, not shown)
    assert (tmp_path / "tradeoff.png").is_file() and report["artifacts"]["plots"]
    assert "summary.png" in report["artifacts"]["plots"]
    from PIL import Image

    with Image.open(tmp_path / "summary.png") as card:  # a real, readable picture of a sensible size
        assert card.format == "PNG" and card.width > 800 and card.height > 250


def test_the_metric_vocabulary_is_defined_once_and_documented() -> None:
    """Report metrics take their label/unit/direction from midre.vocabulary, and docs/results.md holds
    the vocabulary's table as generated."""
    from pathlib import Path

    from midre.report import METRIC_INFO
    from midre.vocabulary import VOCABULARY, markdown_table, normalise

    for name, info in METRIC_INFO.items():
        assert info["unit"] == VOCABULARY[name].unit and info["label"] == VOCABULARY[name].label
    assert normalise({"test_accuracy": 0.9387, "train_loss": 0.5, "midre.gmi.attacc_top1": 12.5, "x": float("nan"),
                      "flag": True}) == {"acc": 93.87, "train_loss": 0.5, "midre.gmi.attacc_top1": 12.5}
    results = (Path(__file__).resolve().parents[2] / "docs" / "results.md").read_text()
    assert markdown_table() in results, "regenerate the table: python -c 'from midre.vocabulary import *; " \
                                        "print(markdown_table())'"


def _panel_runs():
    """Two defenses x 2 seeds judged by two judges; MIDRE's reconstructions are flat in seed 1."""
    runs = []
    for seed in range(2):
        for defense, a, b in (("nodef", 60.0, 40.0), ("midre", 20.0, 18.0)):
            runs.append({"attack": "deepinversion", "defense": defense, "seed": seed, "acc": 95.0 - seed,
                         "attacc_top1": (a + b) / 2, "attacc_top5": 80.0, "knn_dist": 10.0, "delta_eval": 10.0,
                         "judges": [{"arch": "resnet18", "seed": 1234, "attacc_top1": a, "attacc_top5": 80.0},
                                    {"arch": "densenet121", "seed": 2234, "attacc_top1": b, "attacc_top5": 80.0}],
                         "agreement": 70.0 + seed, "double_check": 30.0 - seed, "pixel_std": 0.2})
    return runs


def test_aggregate_adds_panel_figures_to_the_rows():
    results, _ = aggregate_runs(_panel_runs(), ["nodef", "midre"], ["deepinversion"])
    nodef = results[0]
    assert nodef["metrics"]["agreement"]["mean"] == pytest.approx(70.5)
    assert nodef["metrics"]["double_check"]["runs"] == [30.0, 29.0]
    assert nodef["metrics"]["pixel_std"]["mean"] == pytest.approx(0.2)
    assert [j["arch"] for j in nodef["judges"]] == ["resnet18", "densenet121"]
    assert nodef["judges"][0]["attacc_top1"]["mean"] == pytest.approx(60.0)
    # records without a panel keep the rows as they were
    plain, _ = aggregate_runs(_runs((90.0, 92.0, 88.0), (60.0, 70.0, 65.0)), ["nodef", "midre"], ["deepinversion"])
    assert "judges" not in plain[0] and "agreement" not in plain[0]["metrics"]


def test_write_report_panel_leakage_and_warnings(tmp_path):
    runs = _panel_runs()
    results, verdicts = aggregate_runs(runs, ["nodef", "midre"], ["deepinversion"])
    judges = [{"arch": "resnet18", "seed": 1234, "accuracy": 98.75, "accuracy_split": "test", "selected_epoch": 20,
               "epochs": 20},
              {"arch": "densenet121", "seed": 2234, "accuracy": 80.0, "accuracy_split": "test", "selected_epoch": 14,
               "epochs": 20}]
    report = write_report({"dataset": {"source": "att_faces", "identities": 40, "image_size": 64},
                           "models": {"target": {"arch": "cnn-small"}, "evaluation": {"arch": "resnet18"}},
                           "judges": judges, "seeds": [0, 1], "results": results, "verdicts": verdicts, "runs": runs,
                           "warnings": [{"code": "custom", "message": "kept"}]},
                          tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["leakage"] == report["leakage"] and data["leakage"][0]["level"] == "high"
    codes = [w["code"] for w in data["warnings"]]
    assert codes[0] == "custom" and "judge_below_floor" in codes and "judges_disagree" in codes
    assert data["results"][0]["judges"][1]["attacc_top1"]["mean"] == pytest.approx(40.0)
    html = (tmp_path / "report.html").read_text()
    warn_at, results_at = html.index("Warnings: read these"), html.index("Results (paper Table 3 layout)")
    assert warn_at < results_at and html.index("Leakage") < results_at
    assert "high: DeepInversion recovers 50 ± 0 % (judges 40-60 %) of identities" in html
    assert data["leakage"][0]["judges_disagree"] is True
    (v,) = data["verdicts"]  # NoDef's judges disagree, so the verdict says so
    assert v["judges_disagree"] and v["text"].endswith("The judges disagree by more than the seed spread here: "
                                                       "see the warnings.")
    assert "<h2>Judges</h2>" in html and "98.8 % (held-out)" in html and "20 of 20" in html
    assert "AttAcc per judge" in html and "densenet121 (seed 2234) top-1" in html
    assert "Privacy-utility frontier" not in html  # only sweeps and harden studies have one


def test_attack_only_report_gets_a_leakage_statement(tmp_path):
    runs = [{"attack": "deepinversion", "defense": "nodef", "seed": 0, "acc": 97.0, "attacc_top1": 52.0,
             "attacc_top5": 70.0, "knn_dist": 5.0, "delta_eval": 5.0}]
    results, verdicts = aggregate_runs(runs, ["nodef"], ["deepinversion"], baseline="nodef")
    assert verdicts == []
    write_report({"kind": "attack_eval", "dataset": {"source": "digits", "identities": 10, "image_size": 32},
                  "models": {"target": {"arch": "cnn-small"}, "evaluation": {"arch": "resnet18", "accuracy": 96.0}},
                  "seeds": [0], "results": results, "verdicts": verdicts, "runs": runs}, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert [s["level"] for s in data["leakage"]] == ["high"]  # (52 - 10) / (96 - 10) of the way to the judge
    assert [w["code"] for w in data["warnings"]] == ["single_seed"]
    html = (tmp_path / "report.html").read_text()
    assert "No defense to compare" not in html
    assert "high: DeepInversion recovers 52 % of identities, 5.2x chance (10.0 %)" in html
    assert "<h2>Verdict</h2>" not in html and "AttAcc per judge" not in html  # nothing to compare, no panel


def test_rows_carry_their_attack_id_and_differing_ids_are_warned(tmp_path):
    from midre.report import Report

    runs = _runs((90.0, 92.0, 88.0), (60.0, 70.0, 65.0))
    for run in runs:
        run["attack_id"] = "deepinversion@1+aaaaaaaa"
    runs[-1]["attack_id"] = "deepinversion@2+aaaaaaaa"  # midre, seed 2: another version of the attack
    results, verdicts = aggregate_runs(runs, ["nodef", "midre"], ["deepinversion"])
    nodef, midre = results
    assert nodef["attack_id"] == "deepinversion@1+aaaaaaaa" and "attack_ids" not in nodef
    assert midre["attack_ids"] == ["deepinversion@1+aaaaaaaa", "deepinversion@2+aaaaaaaa"] and "attack_id" not in midre
    write_report({"dataset": {"source": "digits", "identities": 10, "image_size": 8},
                  "models": {"target": {"arch": "cnn-small"}, "evaluation": {"arch": "resnet18", "accuracy": 97.5}},
                  "seeds": [0, 1, 2], "results": results, "verdicts": verdicts, "runs": runs}, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["results"][0]["attack_id"] == "deepinversion@1+aaaaaaaa"
    assert data["results"][1]["attack_ids"] == midre["attack_ids"]
    (warning,) = [w for w in data["warnings"] if w["code"] == "attack_id_differs"]
    assert warning["attack"] == "deepinversion" and "deepinversion@2+aaaaaaaa" in warning["message"]
    # a report written before attack ids loads, and writes no id back
    for row in data["results"]:
        row.pop("attack_id", None)
        row.pop("attack_ids", None)
    old = Report.from_dict(data)
    assert old.results[0].attack_id is None and "attack_id" not in old.to_dict()["results"][0]
    plain, _ = aggregate_runs(_runs((90.0, 92.0, 88.0), (60.0, 70.0, 65.0)), ["nodef", "midre"], ["deepinversion"])
    assert "attack_id" not in plain[0] and "attack_ids" not in plain[0]
