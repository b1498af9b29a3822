"""Sweeps and hardening: the candidates grammar, Pareto flags, the recommendation, a tiny harden via the CLI."""

from __future__ import annotations

import json

import pytest

from midre.cli import main
from midre.defenses import defense_label
from midre.errors import ConfigError
from midre.sweep import HardenConfig, SweepConfig, build_frontier, pareto_flags, parse_candidates, recommend


def test_grammar_ranges_lists_and_combinations():
    specs = parse_candidates("nodef; midre:a_h=0.1..0.8; nls; bido; midre+nls")
    labels = [defense_label(s) for s in specs]
    assert labels[0] == "nodef" and labels[-3:] == ["nls", "bido", "midre+nls"]
    assert [s["a_h"] for s in specs[1:9]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert [s["a_h"] for s in parse_candidates("midre:a_h=0.2..0.8/0.2")[1:]] == [0.2, 0.4, 0.6, 0.8]
    combo = parse_candidates("midre:a_h=0.3|0.5+nls:smoothing=-0.1")
    assert combo[1] == {"name": "midre+nls", "midre": {"a_h": 0.3}, "nls": {"smoothing": -0.1}}
    assert [defense_label(s) for s in combo[1:]] == ["midre-a_h0.3+nls-smoothing-0.1",
                                                     "midre-a_h0.5+nls-smoothing-0.1"]
    # NoDef is always first and only once; duplicates collapse; a JSON list works like ';'
    assert [defense_label(s) for s in parse_candidates(["midre", "nodef; midre", {"name": "nls"}])] == \
        ["nodef", "midre", "nls"]


@pytest.mark.parametrize(("text", "field"), [
    ("midre:a_h=0.8..0.1", "candidates[0].a_h"),
    ("bogus", "candidates[0].name"),
    ("nodef; midre:zz=1", "candidates[1].zz"),
    ("midre:a_h", "candidates[0]"),
    ("midre:a_h=0..100/0.001", "candidates[0].a_h"),
])
def test_grammar_errors_name_the_candidate(text, field):
    with pytest.raises(ConfigError) as exc:
        parse_candidates(text)
    assert exc.value.field == field


def test_configs_roundtrip_and_validate():
    cfg = SweepConfig.from_dict({"data": "digits", "candidates": "midre:a_h=0.4|0.8"})
    assert [defense_label(d) for d in cfg.defenses] == ["nodef", "midre-a_h0.4", "midre-a_h0.8"]
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    hard = HardenConfig.from_dict({"data": "digits"})
    assert hard.max_accuracy_drop == 1.0 and len(hard.defenses) == 5  # NoDef + the coarse a_h grid
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        HardenConfig.from_dict({"data": "digits", "max_accuracy_drop": -1})
    with pytest.raises(ConfigError, match="candidates"):
        SweepConfig.from_dict({"data": "digits", "candidates": ""})


def test_pareto_on_constructed_numbers():
    assert pareto_flags([(90, [50]), (89, [30]), (80, [5]), (85, [40])]) == [True, True, True, False]
    assert pareto_flags([(90, [50, 10]), (89, [30, 20]), (88, [40, 25])]) == [True, True, False]
    assert pareto_flags([(90, [50]), (90, [50])]) == [True, True]  # ties dominate neither


def _cands(*labels):
    return [{"label": lbl, "defense": {"name": lbl.split("-")[0], **({"a_h": float(lbl.split("a_h")[1])}
                                                                     if "a_h" in lbl else {})}, "skipped": None}
            for lbl in labels]


def _records(label, accs, attaccs, attack="gmi"):
    return [{"defense": label, "seed": s, "attack": attack, "acc": acc, "attacc_top1": att, "attacc_top5": att}
            for s, (acc, att) in enumerate(zip(accs, attaccs, strict=True))]


def test_recommendation_picks_the_largest_reduction_within_budget():
    records = (_records("nodef", [90.0, 90.4], [50.0, 52.0]) + _records("midre-a_h0.4", [89.6, 89.8], [30.0, 32.0])
               + _records("midre-a_h0.6", [89.4, 89.6], [40.0, 41.0])
               + _records("midre-a_h0.8", [80.0, 81.0], [5.0, 6.0]))
    frontier = build_frontier(_cands("nodef", "midre-a_h0.4", "midre-a_h0.6", "midre-a_h0.8"), records, ["gmi"])
    assert [e["pareto"] for e in frontier] == [True, True, False, True]
    assert frontier[3]["acc_drop"] == pytest.approx(9.7)
    chosen, note = recommend(frontier, ["gmi"], 1.0)
    assert chosen["defense"] == "midre-a_h0.4" and chosen["reason"] == note
    assert "20.0 points" in note and "1-point budget" in note
    chosen, _ = recommend(frontier, ["gmi"], 20.0)  # a larger budget admits the strongest erasing
    assert chosen["defense"] == "midre-a_h0.8"


def test_recommendation_none_when_within_seed_spread_or_one_seed():
    records = _records("nodef", [90.0, 90.4], [50.0, 54.0]) + _records("midre-a_h0.4", [89.6, 89.8], [49.0, 53.0])
    frontier = build_frontier(_cands("nodef", "midre-a_h0.4"), records, ["gmi"])
    chosen, note = recommend(frontier, ["gmi"], 1.0)
    assert chosen is None and note.startswith("No candidate lowers top-1 AttAcc beyond the seed spread")
    assert "(1 of 1 candidates stayed within the budget)" in note
    one = build_frontier(_cands("nodef", "midre-a_h0.4"),
                         _records("nodef", [90.0], [50.0]) + _records("midre-a_h0.4", [89.9], [10.0]), ["gmi"])
    chosen, note = recommend(one, ["gmi"], 1.0)
    assert chosen is None and "one seed" in note.lower()


def test_recommendation_refuses_a_candidate_that_raises_another_attack():
    records = (_records("nodef", [90.0, 90.0], [50.0, 52.0]) + _records("nodef", [90.0, 90.0], [20.0, 21.0], "di")
               + _records("midre-a_h0.4", [89.8, 89.8], [30.0, 31.0])
               + _records("midre-a_h0.4", [89.8, 89.8], [40.0, 41.0], "di"))
    frontier = build_frontier(_cands("nodef", "midre-a_h0.4"), records, ["gmi", "di"])
    assert recommend(frontier, ["gmi", "di"], 1.0)[0] is None


def test_skipped_candidates_are_never_pareto_or_recommended():
    cands = _cands("nodef", "midre-a_h0.4")
    cands[1]["skipped"] = "seed 0: accuracy drop beyond the budget"
    records = _records("nodef", [90.0, 90.4], [50.0, 52.0]) + _records("midre-a_h0.4", [89.6, 89.8], [10.0, 11.0])
    frontier = build_frontier(cands, records, ["gmi"])
    assert frontier[1]["pareto"] is False and frontier[1]["skipped"]
    assert recommend(frontier, ["gmi"], 1.0)[0] is None


def test_harden_end_to_end_through_the_cli(tmp_path, capsys):
    out = tmp_path / "harden"
    (tmp_path / "extra.json").write_text(json.dumps({"max_images_per_identity": 12}))
    rc = main(["harden", "--data", "digits", "--config", str(tmp_path / "extra.json"), "--image-size", "32",
               "--channels", "1", "--epochs", "1",
               "--seeds", "2", "--batch-size", "128", "--attacks", "deepinversion", "--steps", "2",
               "--per-identity", "1", "--identities", "2", "--eval-archs", "resnet18,cnn-small", "--eval-epochs", "1",
               "--feature-identities", "0", "--candidates", "midre:a_h=0.3|0.6", "--max-accuracy-drop", "1.0",
               "--max-seeds", "3", "--quiet", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "recommendation:" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "harden" and report["max_accuracy_drop"] == 1.0
    frontier = report["frontier"]
    assert frontier[0]["defense"] == "nodef" and len(frontier) >= 3
    for entry in frontier:
        assert {"defense", "params", "acc", "attacc", "pareto", "skipped"} <= set(entry)
    assert [j["arch"] for j in report["judges"]] == ["resnet18", "cnn-small"]
    assert (out / "frontier_deepinversion.png").is_file()
    rec = report["recommendation"]
    if rec is None:
        assert report["recommendation_note"] and "recommendation: none" in printed
    else:
        assert rec["reason"] and (out / "recommended" / "model.safetensors").is_file()
        assert (out / "recommended" / "model.json").is_file()
    # the search never runs more training/attack units than the full grid of its candidates at the cap
    # (with 1-epoch targets every interval overlaps the best one's, so screening may stop none)
    ran = [p for p in (out / "units").rglob("*.json")
           if json.loads(p.read_text())["kind"] in ("target", "attack")]
    assert len(ran) <= len(frontier) * 3 * (1 + 1)
    # every finalist says how its evidence ended, and no candidate ran more seeds than the cap
    finalists = [e for e in frontier[1:] if e.get("evidence")]
    assert finalists and all(len(e["seeds"]) <= 3 for e in frontier)
    assert all(e["evidence"].startswith(("decided after", "undecided at the cap of 3")) for e in finalists)


def test_sweep_and_harden_flags_reach_the_config(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(config, out, progress=None, should_stop=None):
        seen["config"] = config
        return {"attacks": [{"name": "gmi"}], "frontier": [], "recommendation": None,
                "recommendation_note": "nothing qualifies"}

    monkeypatch.setattr("midre.plan.run_study", fake)
    assert main(["sweep", "--data", "digits", "--candidates", "midre:a_h=0.4|0.8; nls", "--attacks", "gmi",
                 "--seeds", "2", "--quiet", "--out", str(tmp_path)]) == 0
    cfg = seen["config"]
    assert isinstance(cfg, SweepConfig) and cfg.max_accuracy_drop is None
    assert [defense_label(d) for d in cfg.defenses] == ["nodef", "midre-a_h0.4", "midre-a_h0.8", "nls"]
    assert main(["harden", "--data", "digits", "--attacks", "deepinversion", "--max-accuracy-drop", "2.5",
                 "--finalists", "3", "--no-refine", "--init-from", "runs/base", "--eval-archs", "resnet18,vgg16",
                 "--quiet", "--out", str(tmp_path)]) == 0
    cfg = seen["config"]
    assert isinstance(cfg, HardenConfig) and cfg.max_accuracy_drop == 2.5 and cfg.finalists == 3
    assert cfg.refine is False and cfg.init_from == "runs/base" and cfg.eval_archs == ["resnet18", "vgg16"]
    assert "recommendation: none. nothing qualifies" in capsys.readouterr().out
    assert main(["harden", "--data", "digits", "--candidates", "midre:a_h=2..1", "--out", str(tmp_path)]) == 2


def _fake_target(out, label, seed, acc):
    path = out / "targets" / label / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.json").write_text(json.dumps({"metrics": {"test_accuracy": acc}}))


def _fake_attack(out, label, seed, attacc, identities=None):
    path = out / "attacks" / label / f"seed{seed}" / "deepinversion"
    path.mkdir(parents=True, exist_ok=True)
    record = {"attack": "deepinversion", "attacc_top1": attacc}
    if identities is not None:  # per-identity top-1 AttAcc (percent)
        record["identities"] = {str(i): {"attacc_top1": v} for i, v in enumerate(identities)}
    (path / "metrics.json").write_text(json.dumps(record))


def test_harden_stages_screen_refine_and_stop_dominated_candidates(tmp_path):
    from midre.harden import plan_harden, run_expand

    cfg = HardenConfig.from_dict({"data": "digits", "attacks": ["deepinversion"], "seeds": 2,
                                  "eval_archs": ["resnet18", "cnn-small"]})
    units = plan_harden(cfg)
    keys = {u.key for u in units}
    assert {"target/nodef/seed1", "attack/nodef/seed1/deepinversion", "target/midre-a_h0.8/seed0"} <= keys
    assert "target/midre-a_h0.8/seed1" not in keys and "attack/midre-a_h0.2/seed0/deepinversion" not in keys
    for seed in (0, 1):
        _fake_target(tmp_path, "nodef", seed, 0.90)
    for a_h, acc in ((0.2, 0.897), (0.4, 0.895), (0.6, 0.85), (0.8, 0.70)):
        _fake_target(tmp_path, f"midre-a_h{a_h}", 0, acc)
    result, new = run_expand(cfg, tmp_path, units[-1])  # expand/refine
    assert set(result["skipped"]) == {"midre-a_h0.6", "midre-a_h0.8"} and result["refined"] == [
        "midre-a_h0.3", "midre-a_h0.5"]
    assert [u.key for u in new] == ["target/midre-a_h0.3/seed0", "target/midre-a_h0.5/seed0", "expand/select"]
    _fake_target(tmp_path, "midre-a_h0.3", 0, 0.896)
    _fake_target(tmp_path, "midre-a_h0.5", 0, 0.80)
    result, new = run_expand(cfg, tmp_path, new[-1])  # expand/select
    assert result["within_budget"] == ["midre-a_h0.2", "midre-a_h0.4", "midre-a_h0.3"]
    assert [u.key for u in new[:-1]] == [f"attack/midre-a_h{a}/seed0/deepinversion" for a in (0.2, 0.4, 0.3)]
    for seed, attacc in ((0, 50.0), (1, 52.0)):
        _fake_attack(tmp_path, "nodef", seed, attacc)
    for a_h, attacc in ((0.2, 49.0), (0.4, 30.0), (0.3, 40.0)):
        _fake_attack(tmp_path, f"midre-a_h{a_h}", 0, attacc)
    result, new = run_expand(cfg, tmp_path, new[-1])  # expand/confirm
    assert result["finalists"] == ["midre-a_h0.4"]
    assert "dominated by midre-a_h0.4" in result["skipped"]["midre-a_h0.2"]
    assert "dominated by midre-a_h0.4" in result["skipped"]["midre-a_h0.3"]
    assert [u.key for u in new] == ["target/midre-a_h0.4/seed1", "attack/midre-a_h0.4/seed1/deepinversion",
                                    "expand/decide-1"]
    _fake_target(tmp_path, "midre-a_h0.4", 1, 0.895)
    _fake_attack(tmp_path, "midre-a_h0.4", 1, 31.0)
    result, new = run_expand(cfg, tmp_path, new[-1])  # expand/decide: no per-identity outcomes here
    assert [u.key for u in new] == ["report"]
    assert result["decided"] == {"midre-a_h0.4": "no per-identity outcomes: the seed spread decides"}
    report = new[-1]
    assert {c["label"]: bool(c["skipped"]) for c in report.params["candidates"]}["midre-a_h0.4"] is False


def _decide_unit(cfg, labels_and_specs, seeds):
    from midre.planners import candidate
    from midre.units import make_unit

    cands = [candidate(spec) for spec in labels_and_specs]
    for c in cands:
        c["seeds"], c["finalist"] = list(seeds), c is not cands[0]
    return make_unit("expand/decide-1", "expand", [], stage="decide", candidates=cands)


def test_harden_adds_seeds_to_an_undecided_finalist_up_to_the_cap(tmp_path):
    from midre.harden import run_expand

    cfg = HardenConfig.from_dict({"data": "digits", "attacks": ["deepinversion"], "seeds": 2, "max_seeds": 3,
                                  "eval_archs": ["resnet18"]})
    unit = _decide_unit(cfg, [{"name": "nodef"}, {"name": "midre", "a_h": 0.4}], [0, 1])
    noisy = {0: [0, 100, 0, 100, 100, 0], 1: [100, 0, 100, 0, 0, 100], 2: [0, 100, 100, 0, 100, 0]}
    for seed in (0, 1, 2):
        for label in ("nodef", "midre-a_h0.4"):
            _fake_target(tmp_path, label, seed, 0.90)
            _fake_attack(tmp_path, label, seed, 50.0, noisy[seed] if label == "nodef" else noisy[(seed + 1) % 3])
    result, new = run_expand(cfg, tmp_path, unit)  # same mean, identity outcomes disagree: undecided
    assert result == {"more_seeds": {"midre-a_h0.4": 2}}
    assert [u.key for u in new] == ["target/nodef/seed2", "attack/nodef/seed2/deepinversion",
                                    "target/midre-a_h0.4/seed2", "attack/midre-a_h0.4/seed2/deepinversion",
                                    "expand/decide-2"]
    result, new = run_expand(cfg, tmp_path, new[-1])  # still undecided at 3 seeds: the cap
    assert [u.key for u in new] == ["report"]
    assert result["decided"]["midre-a_h0.4"] == "undecided at the cap of 3 seeds (--max-seeds)"
    assert new[0].params["candidates"][0]["seeds"] == [0, 1, 2]


def test_harden_stops_adding_seeds_once_the_interval_decides(tmp_path):
    from midre.harden import run_expand

    cfg = HardenConfig.from_dict({"data": "digits", "attacks": ["deepinversion"], "seeds": 2, "max_seeds": 4,
                                  "eval_archs": ["resnet18"]})
    unit = _decide_unit(cfg, [{"name": "nodef"}, {"name": "midre", "a_h": 0.4}], [0, 1])
    for seed in (0, 1):
        _fake_target(tmp_path, "nodef", seed, 0.90)
        _fake_target(tmp_path, "midre-a_h0.4", seed, 0.90)
        _fake_attack(tmp_path, "nodef", seed, 80.0, [100, 100, 100, 0, 100, 100] * 3)
        _fake_attack(tmp_path, "midre-a_h0.4", seed, 10.0, [0, 0, 0, 0, 100, 0] * 3)
    result, new = run_expand(cfg, tmp_path, unit)
    assert [u.key for u in new] == ["report"] and result["decided"]["midre-a_h0.4"] == "decided after 2 seeds"
