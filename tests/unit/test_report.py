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
    assert data["schema_version"] == 1 and data["results"][1]["metrics"]["acc"]["runs"] == [97.0, 96.0, 98.0]
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and "AttAcc top-1" in html and "Δ" in html
    assert "did not lower AttAcc for deepinversion" in html
    assert html.count("data:image/png;base64,") == 3  # summary card + trade-off plot + grid, embedded
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
