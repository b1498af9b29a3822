"""``midre pipeline | attack | prior | evaluate``: argument parsing into the study configs."""

from __future__ import annotations

import pytest

from midre.cli import build_parser, main


def _capture(monkeypatch, name):
    seen = {}

    def fake(config, out, progress=None, should_stop=None):
        seen["config"], seen["out"] = config, out
        return {"results": [], "verdicts": []}

    monkeypatch.setattr(f"midre.plan.{name}", fake)
    return seen


def test_pipeline_flags_reach_the_config(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, "run_pipeline")
    rc = main(["pipeline", "--data", "digits", "--defenses", "nodef,midre", "--attacks", "deepinversion,gmi",
               "--seeds", "2", "--steps", "7", "--budget", '{"gmi": {"restarts": 3}}', "--quiet", "--adaptive",
               "--out", str(tmp_path)])
    assert rc == 0
    cfg = seen["config"]
    assert cfg.adaptive and cfg.adaptive_attacks() == ["deepinversion", "gmi"]
    assert cfg.image_size == 32 and cfg.seed_list == [0, 1]
    assert cfg.defenses == [{"name": "nodef"}, {"name": "midre"}]
    assert cfg.budget_for("deepinversion").steps == 7
    assert cfg.budget_for("gmi").steps == 7 and cfg.budget_for("gmi").restarts == 3


def test_attack_command_and_errors(monkeypatch, tmp_path, capsys):
    seen = _capture(monkeypatch, "run_attack_eval")
    assert main(["attack", "--target", "t", "--eval-model", "e", "--attack", "lomma", "--quiet",
                 "--out", str(tmp_path)]) == 0
    assert seen["config"].attacks == ["lomma+gmi"] and seen["config"].eval_model == "e"
    assert main(["attack", "--target", "t", "--attack", "bogus", "--out", str(tmp_path)]) == 2
    assert "known attacks" in capsys.readouterr().err
    assert main(["pipeline", "--data", "digits", "--budget", "{oops", "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize("command", ["pipeline", "attack", "prior", "evaluate"])
def test_help_is_available(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["harden", "sweep"])
def test_a_search_refuses_estimate_only_instead_of_running(command, tmp_path, capsys):
    args = [command, "--data", "digits", "--out", str(tmp_path / "out"), "--estimate-only"]
    if command == "sweep":
        args += ["--candidates", "nodef;midre:a_h=0.2..0.4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--estimate-only" in err and "midre pipeline" in err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
