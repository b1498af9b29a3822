"""PipelineConfig / AttackEvalConfig validation, and the pipeline end to end on tiny digits (resumable)."""

from __future__ import annotations

import json
import re

import pytest

from midre.attacks import attack_id
from midre.plan import run_attack_eval, run_pipeline
from midre.study import AttackEvalConfig, PipelineConfig, parse_defense

TINY = {"data": "digits", "image_size": 32, "channels": 1, "epochs": 1, "seeds": 2, "batch_size": 128,
        "max_images_per_identity": 20,
        "attacks": ["deepinversion", "gmi"], "per_identity": 1, "identities": 3, "eval_arch": "resnet18",
        "eval_archs": ["resnet18", "cnn-small"],
        "eval_epochs": 1, "feature_identities": 2,
        "attack_budgets": {"deepinversion": {"steps": 2}, "gmi": {"steps": 2, "restarts": 1, "prior_steps": 1}},
        "attack_options": {"deepinversion": {"adaptive": True, "eot_samples": 2}},
        "prior_options": {"width": 8, "batch_size": 8}}


def test_config_roundtrip_and_defaults():
    cfg = PipelineConfig.from_dict({"data": "digits"})
    assert cfg.seed_list == [0, 1, 2] and cfg.defenses == [{"name": "nodef"}, {"name": "midre"}]
    assert cfg.attacks == ["deepinversion", "gmi"]
    again = PipelineConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert PipelineConfig.from_dict({"data": "digits", "attacks": "lomma,plg"}).attacks == ["lomma+gmi", "plg-mi"]


@pytest.mark.parametrize(("field", "value", "match"), [
    ("bogus", 1, "bogus"),
    ("attacks", ["nope"], "attacks"),
    ("seeds", 0, "seeds"),
    ("per_identity", 0, "per_identity"),
    ("epochs", "3", "epochs"),
    ("attack_budgets", {"gmi": {"stepz": 3}}, "attack_budgets"),
    ("public_fraction", 1.5, "public_fraction"),
])
def test_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        PipelineConfig.from_dict({"data": "digits", field: value})


def test_attack_eval_config_errors():
    with pytest.raises(ValueError, match="target"):
        AttackEvalConfig.from_dict({})
    with pytest.raises(ValueError, match="eval_modle"):
        AttackEvalConfig.from_dict({"target": "x", "eval_modle": "y"})
    cfg = AttackEvalConfig.from_dict({"target": "x", "attacks": ["mi-face"], "seeds": [4, 5]})
    assert cfg.seed_list == [4, 5] and cfg.budget_for("mi-face").steps == 300


def test_parse_defense():
    assert parse_defense("midre:a_h=0.8") == {"name": "midre", "a_h": 0.8}
    assert parse_defense({"name": "nls", "alpha": -0.05}) == {"name": "nls", "alpha": -0.05}
    with pytest.raises(ValueError, match="name"):
        parse_defense({"a_h": 0.4})


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    events = []
    report = run_pipeline(PipelineConfig.from_dict(TINY), out, progress=events.append)
    return out, report, events


def test_pipeline_writes_report(pipeline_run):
    out, report, events = pipeline_run
    assert (out / "report.json").is_file() and (out / "report.html").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 4 and data["seeds"] == [0, 1]
    rows = {(r["attack"], r["defense"], r["adaptive"]): r for r in data["results"]}
    assert set(rows) == {(a, d, False) for a in ("deepinversion", "gmi") for d in ("nodef", "midre")} | {
        ("deepinversion", "midre", True)}  # NoDef is the baseline: nothing of it to adapt to
    for row in rows.values():
        for metric in ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval"):
            assert row["metrics"][metric]["n"] == 2
        top1 = row["metrics"]["attacc_top1"]
        assert 0 <= top1["ci_low"] <= top1["mean"] <= top1["ci_high"] <= 100
        assert {"fid", "precision", "recall", "density", "coverage"} <= set(row["metrics"])
        assert re.fullmatch(rf"{re.escape(row['attack'])}@1\+[0-9a-f]{{8}}", row["attack_id"]), row.get("attack_id")
    # one attack, one set of settings: every row of it carries the same id, so no warning
    assert len({r["attack_id"] for r in data["results"] if r["attack"] == "gmi"}) == 1
    assert rows[("gmi", "nodef", False)]["attack_id"] == attack_id("gmi", PipelineConfig.from_dict(TINY).budget_for(
        "gmi"), PipelineConfig.from_dict(TINY).options_for("gmi"))
    assert "attack_id_differs" not in {w["code"] for w in data["warnings"]}
    assert len(data["verdicts"]) == 3 and all(v["text"] for v in data["verdicts"])
    assert {(c["attack"], c["adaptive"]) for c in data["comparisons"]} == {
        ("deepinversion", False), ("deepinversion", True), ("gmi", False)}
    for c in data["comparisons"]:
        assert c["defense"] == "midre" and c["metric"] == "attacc_top1" and 0 <= c["p_value"] <= 1
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        assert c["verdict"] == ("lowers" if c["ci_high"] < 0 else "raises" if c["ci_low"] > 0 else "no_evidence")
    assert data["intervals"]["resamples"] > 0 and data["adaptive"]["attacks"] == ["deepinversion"]
    assert len(data["identities"]) == 3 and set(data["identities"][0]["recovered"]) == {"nodef", "midre"}
    assert (out / "identities.png").is_file()
    assert data["dataset"]["public_note"]  # digits: the last identities became the public set
    assert data["models"]["evaluation"]["arch"] == "resnet18"
    assert "prior_gmi_1_steps" in data["timings"] and data["timings"]["total"] > 0
    assert data["feature_space"] and "recon_priv_centroid" in next(iter(data["feature_space"].values()))["distances"]
    html = (out / "report.html").read_text()
    assert "AttAcc top-1" in html and "Verdict" in html and html.count("data:image/png;base64,") >= 3
    fractions = [e.fraction for e in events]
    assert fractions[-1] == 1.0 and max(fractions) <= 1.0


def test_pipeline_resumes_without_redoing_work(pipeline_run, monkeypatch):
    out, report, _ = pipeline_run

    def boom(*args, **kwargs):
        raise AssertionError("finished work must be skipped on a re-run")

    monkeypatch.setattr("midre.runners.run_attack", boom)
    again = run_pipeline(PipelineConfig.from_dict(TINY), out)
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in report["results"]]


def test_attack_eval_on_pipeline_target(pipeline_run, tmp_path):
    out, _, _ = pipeline_run
    cfg = AttackEvalConfig.from_dict({"target": str(out / "targets" / "midre" / "seed0"), "attacks": ["mi-face"],
                                      "seeds": 1, "per_identity": 1, "identities": 2, "eval_arch": "resnet18",
                                      "eval_archs": ["resnet18", "cnn-small"],
                                      "eval_epochs": 1, "cache_dir": str(out / "cache"),
                                      "attack_budgets": {"mi-face": {"steps": 2}}})
    report = run_attack_eval(cfg, tmp_path)
    assert report["kind"] == "attack_eval" and report["results"][0]["defense"] == "midre"
    assert report["results"][0]["attack_id"].startswith("mi-face@1+")
    assert (tmp_path / "report.html").is_file()
