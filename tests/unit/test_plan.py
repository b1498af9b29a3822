"""The study plan (midre.plan): units, idempotence, any valid order, two processes on one out_dir."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from midre.errors import ConfigError
from midre.plan import Unit, plan_study, read_report, run_study, run_unit, study_config, unit_result

TINY = {"data": "digits", "image_size": 32, "channels": 1, "epochs": 1, "seeds": 1, "batch_size": 128,
        "max_images_per_identity": 12, "defenses": ["nodef", "midre"],
        "attacks": ["deepinversion", "gmi"], "per_identity": 1, "identities": 2,
        "eval_archs": ["resnet18", "cnn-small"], "eval_epochs": 1, "feature_identities": 0,
        "attack_budgets": {"deepinversion": {"steps": 2}, "gmi": {"steps": 2, "restarts": 1, "prior_steps": 1}},
        "prior_options": {"width": 8, "batch_size": 8}}


def _valid_order(units: list[Unit]) -> bool:
    seen: set[str] = set()
    for u in units:
        if any(d not in seen for d in u.deps):
            return False
        seen.add(u.key)
    return True


def test_plan_shape_and_roundtrip():
    cfg = study_config("pipeline", {**TINY, "seeds": 2})
    units = plan_study(cfg)
    kinds = [u.kind for u in units]
    assert kinds.count("judge") == 2 and kinds.count("prior") == 1
    assert kinds.count("target") == 4 and kinds.count("attack") == 8 and kinds[-1] == "report"
    assert len({u.key for u in units}) == len(units) and _valid_order(units)
    assert [u.to_dict() for u in plan_study(cfg)] == [u.to_dict() for u in units]  # deterministic
    assert all(Unit.from_dict(json.loads(json.dumps(u.to_dict()))) == u for u in units)
    gmi = next(u for u in units if u.key == "attack/midre/seed1/gmi")
    prior = next(u.key for u in units if u.kind == "prior")
    assert prior in gmi.deps and "target/midre/seed1" in gmi.deps
    assert prior not in next(u for u in units if u.key == "attack/midre/seed1/deepinversion").deps
    report = units[-1]
    assert {u.key for u in units if u.kind == "attack"} <= set(report.deps)


def test_prior_units_follow_the_attack_registry():
    # brep-mi is registered with needs="gmi": it gets the shared prior; kedmi trains its own (target-specific)
    cfg = study_config("pipeline", {**TINY, "attacks": ["brep-mi", "kedmi"]})
    units = plan_study(cfg)
    priors = [u for u in units if u.kind == "prior"]
    assert len(priors) == 1
    assert priors[0].key in next(u for u in units if u.key == "attack/nodef/seed0/brep-mi").deps
    assert priors[0].key not in next(u for u in units if u.key == "attack/nodef/seed0/kedmi").deps


def test_study_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        study_config("bogus", {})
    with pytest.raises(ConfigError, match="eval_archs"):
        study_config("pipeline", {**TINY, "eval_archs": ["nope"]})


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    cfg = study_config("pipeline", TINY)
    return out, run_study(cfg, out)


def _figures(report: dict) -> list:
    return sorted((r["attack"], r["defense"], r["seed"], round(r["acc"], 6), round(r["attacc_top1"], 6),
                   [round(j["attacc_top1"], 6) for j in r["judges"]]) for r in report["runs"])


def test_sequential_report_has_judges(sequential):
    out, report = sequential
    assert report["kind"] == "pipeline" and [j["arch"] for j in report["judges"]] == ["resnet18", "cnn-small"]
    assert all(len(r["judges"]) == 2 and 0 <= r["agreement"] <= 100 for r in report["runs"])
    assert read_report(out)["runs"] == json.loads((out / "report.json").read_text())["runs"]
    assert (out / "targets" / "midre" / "seed0" / "model.safetensors").is_file()
    assert (out / "attacks" / "midre" / "seed0" / "gmi" / "metrics.json").is_file()


def test_run_unit_is_idempotent(sequential, monkeypatch):
    out, _ = sequential
    cfg = study_config("pipeline", TINY)

    def boom(*args, **kwargs):
        raise AssertionError("a finished unit must not run again")

    monkeypatch.setattr("midre.runners.run_attack", boom)
    monkeypatch.setattr("midre.train.train", boom)
    for unit in plan_study(cfg):
        before = unit_result(out, unit.key)
        assert run_unit(cfg, out, unit) == []
        assert unit_result(out, unit.key) == before


def test_unit_refuses_to_run_before_its_deps(tmp_path):
    cfg = study_config("pipeline", TINY)
    attack = next(u for u in plan_study(cfg) if u.kind == "attack")
    with pytest.raises(ValueError, match="dependencies not finished"):
        run_unit(cfg, tmp_path, attack)


def test_another_order_gives_the_same_report(sequential, tmp_path):
    _, report = sequential
    cfg = study_config("pipeline", TINY)
    units = plan_study(cfg)
    order: list[Unit] = []
    left = list(units)
    while left:  # always the LAST runnable unit: targets before judges, attacks in reverse
        done = {u.key for u in order}
        unit = [u for u in left if all(d in done for d in u.deps)][-1]
        order.append(unit)
        left.remove(unit)
    assert [u.key for u in order] != [u.key for u in units]
    for unit in order:
        assert run_unit(cfg, tmp_path, unit) == []
    assert _figures(read_report(tmp_path)) == _figures(report)


WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from midre.plan import Unit, run_unit, study_config, unit_result

    out, name = Path(sys.argv[1]), sys.argv[2]
    cfg = study_config("pipeline", json.loads((out / "study.json").read_text()))
    units = [Unit.from_dict(u) for u in json.loads((out / "plan.json").read_text())]
    (out / "claims").mkdir(exist_ok=True)
    mine = []
    while True:
        done = {u.key for u in units if unit_result(out, u.key) is not None}
        if len(done) == len(units):
            break
        claimed = None
        for u in units:
            if u.key in done or not all(d in done for d in u.deps):
                continue
            try:
                fd = os.open(out / "claims" / u.key.replace("/", "__"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, name.encode())
            os.close(fd)
            claimed = u
            break
        if claimed is None:
            time.sleep(0.2)
            continue
        run_unit(cfg, out, claimed)
        mine.append(claimed.key)
    (out / f"ran-{name}.json").write_text(json.dumps(mine))
""")


@pytest.mark.slow  # two study processes on one folder; idempotent units and any-order runs are tested by default
def test_two_processes_share_one_out_dir(sequential, tmp_path):
    _, report = sequential
    cfg = study_config("pipeline", TINY)
    (tmp_path / "study.json").write_text(json.dumps(TINY))
    (tmp_path / "plan.json").write_text(json.dumps([u.to_dict() for u in plan_study(cfg)]))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), name])
             for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=900) == 0
    ran = {name: json.loads((tmp_path / f"ran-{name}.json").read_text()) for name in ("a", "b")}
    keys = [u.key for u in plan_study(cfg)]
    assert sorted(ran["a"] + ran["b"]) == sorted(keys)  # every unit ran exactly once
    assert ran["a"] and ran["b"]  # both processes worked on the study
    assert _figures(read_report(tmp_path)) == _figures(report)
