"""The cost estimate: calibration on the real shapes, scaling by the study's work, the CLI flag."""

from __future__ import annotations

import json

import pytest
import torch

from midre.attacks import AttackBudget
from midre.cost import estimate_attack, estimate_study, estimate_training, measure

TINY = {"data": "digits", "image_size": 32, "channels": 1, "epochs": 2, "seeds": 2, "defenses": ["nodef", "midre"],
        "attacks": ["ppa", "gmi"], "identities": 2, "per_identity": 1, "eval_arch": "cnn-small",
        "attack_budgets": {"ppa": {"steps": 3, "chunk_size": 8}, "gmi": {"steps": 3}},
        "attack_options": {"ppa": {"candidates": 4, "search_space": 16, "final_transforms": 2}},
        "prior_options": {"width": 8}}


def test_measure_counts_saved_activations():
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(50, 100, requires_grad=True)
    m = measure(lambda: lin(x).relu().sum().backward(), torch.device("cpu"), fixed_bytes=7)
    assert m["memory_method"] == "parameters_and_saved_activations" and m["seconds"] > 0
    # linear saves its 50x100 input (+ the weight), relu its 50x100 output: at least 2 x 20000 bytes
    assert m["peak_bytes"] >= 2 * 50 * 100 * 4 + 7


def test_training_estimate_scales_with_the_work():
    small = estimate_training("cnn-small", (1, 32, 32), 10, batch_size=4, train_images=40, epochs=1)
    big = estimate_training("cnn-small", (1, 32, 32), 10, batch_size=32, train_images=320, epochs=3)
    assert small["steps"] == 10 and big["steps"] == 30
    assert big["peak_bytes"] > small["peak_bytes"] > 0  # activations grow with the batch
    assert big["seconds"] == pytest.approx(big["seconds_per_step"] * 30)


def test_attack_estimate_counts_latents():
    budget = AttackBudget(steps=5, chunk_size=8)
    opts = {"candidates": 6, "search_space": 10, "final_transforms": 3, "prior": {"width": 8}}
    ppa = estimate_attack("ppa", "cnn-small", (1, 32, 32), 10, identities=3, per_identity=2, budget=budget,
                          options=opts)
    assert ppa["latents"] == 18 and ppa["batch"] == 8 and ppa["steps"] == 5
    units = 5 * 18 + 10 * 2 / 3 + 18 * 3 / 3
    assert ppa["seconds"] == pytest.approx(ppa["seconds_per_latent_step"] * units)
    gmi = estimate_attack("gmi", "cnn-small", (1, 32, 32), 10, identities=3, per_identity=2,
                          budget=AttackBudget(steps=5, restarts=2), options={"prior": {"width": 8}})
    assert gmi["latents"] == 12
    sg = estimate_attack("mirror", "cnn-small", (3, 32, 32), 10, identities=1, per_identity=1,
                         budget=AttackBudget(steps=2),
                         options={"stylegan2_random": {"resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 1,
                                                       "channel_base": 32, "channel_max": 4}})
    assert sg["peak_bytes"] > 0


def test_study_estimate_is_json(tmp_path):
    est = estimate_study(TINY)
    json.dumps(est)
    assert est["device"] == "cpu" and est["gpu_seconds"] is None
    assert est["training"]["targets"] == 4 and set(est["attacks"]) == {"ppa", "gmi"}
    assert est["attacks"]["ppa"]["runs"] == 4 and est["attacks"]["ppa"]["latents"] == 8
    # every unit counts: the judges and the GAN prior it trains too (nothing is cached here)
    assert [j["arch"] for j in est["judges"]] == ["cnn-small", "resnet18"]  # eval_arch first, then the panel
    assert not any(j["cached"] for j in est["judges"])
    assert [p["kind"] for p in est["priors"]] == ["gmi"] and est["priors"][0]["seconds"] > 0
    parts = (est["training"]["total_seconds"] + sum(a["total_seconds"] for a in est["attacks"].values())
             + sum(j["seconds"] for j in est["judges"]) + sum(p["seconds"] for p in est["priors"]))
    assert est["total_seconds"] == pytest.approx(parts)
    assert est["peak_bytes"] == max([a["peak_bytes"] for a in est["attacks"].values()] +
                                    [est["training"]["peak_bytes"]] + [j["peak_bytes"] for j in est["judges"]] +
                                    [p["peak_bytes"] for p in est["priors"]])


def test_cached_judges_and_priors_cost_nothing(tmp_path):
    from midre.plan import plan_study, run_unit, study_config

    config = study_config("pipeline", {**TINY, "cache_dir": str(tmp_path / "cache"), "seeds": 1, "attacks": ["gmi"],
                                       "eval_archs": ["cnn-small"], "eval_epochs": 1, "max_images_per_identity": 10,
                                       "attack_budgets": {"gmi": {"steps": 3, "prior_steps": 2}}})
    for unit in [u for u in plan_study(config) if u.kind in ("judge", "prior")]:
        run_unit(config, tmp_path / "out", unit)
    est = estimate_study(config)
    assert all(j["cached"] and j["seconds"] == 0 for j in est["judges"])
    assert all(p["cached"] and p["seconds"] == 0 for p in est["priors"])


def test_cli_estimate_only_does_not_run(monkeypatch, tmp_path, capsys):
    from midre.cli import main

    def boom(*args, **kwargs):
        raise AssertionError("--estimate-only must not start the study")

    monkeypatch.setattr("midre.plan.run_pipeline", boom)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({k: v for k, v in TINY.items() if k != "data"}))
    rc = main(["pipeline", "--data", "digits", "--config", str(config), "--estimate-only", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["attacks"]["gmi"]["steps"] == 3
    assert "estimate on cpu" in out.err and "total" in out.err
