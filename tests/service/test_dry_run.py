"""``POST /v1/jobs?dry_run=true`` and ``midre jobs submit --dry-run``: the spec checked as a submission is,
what it would run (its resolved config) and cost (every judge, prior, target and attack run), and nothing
stored or queued."""

from __future__ import annotations

from typing import Any

from tests.service.conftest import Api
from tests.service.test_jobspec import PIPELINE, STUDY, job_count
from tests.service.test_scopes import model_id  # noqa: F401  (fixture: a trained model of tenant-a)


def messages(api: Api) -> int:
    return len(list((api.settings.broker_dir / "queue").glob("*.msg")))


def dry_run(api: Api, key: str, spec: dict[str, Any]) -> Any:
    return api.client.post("/v1/jobs", params={"dry_run": "true"}, json=spec, headers=api.auth(key))


def test_a_dry_run_answers_what_would_run_and_cost_and_stores_nothing(api: Api, key_a: str, model_id: str) -> None:
    jobs, queued = job_count(api), messages(api)
    r = dry_run(api, key_a, {**PIPELINE, "attacks": ["mi-face", "gmi"], "data": {"channels": 1, "num_private": 7,
                                                                                  "max_images_per_identity": 12}})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["dry_run"] is True and answer["kind"] == "pipeline"
    assert answer["resolved"]["config"]["data"]["image_size"] == 32
    estimate = answer["estimate"]
    assert [j["arch"] for j in estimate["judges"]] == ["cnn-small", "resnet18"]  # the default panel
    assert not any(j["cached"] for j in estimate["judges"])
    assert [p["kind"] for p in estimate["priors"]] == ["gmi"] and estimate["priors"][0]["seconds"] > 0
    assert estimate["training"]["targets"] == 2 and set(estimate["attacks"]) == {"mi-face", "gmi"}
    parts = (sum(j["seconds"] for j in estimate["judges"]) + sum(p["seconds"] for p in estimate["priors"])
             + estimate["training"]["total_seconds"] + sum(a["total_seconds"] for a in estimate["attacks"].values()))
    assert abs(estimate["total_seconds"] - parts) < 1e-6
    # an audit of a trained model: its card is read, its data named by id; no training of targets
    audit = dry_run(api, key_a, {"kind": "attack_eval", "model": model_id, **STUDY})
    assert audit.status_code == 200, audit.text
    assert audit.json()["estimate"]["training"] is None and "mi-face" in audit.json()["estimate"]["attacks"]
    assert str(api.settings.home) not in audit.text
    # a refused spec is refused exactly as a submission is
    bad = dry_run(api, key_a, {**PIPELINE, "attacks": ["nope"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "attacks[0]"
    assert (job_count(api), messages(api)) == (jobs, queued)


def test_the_cli_dry_run_prints_the_total_and_stores_nothing(api: Api, key_a: str, capsys: Any,
                                                             monkeypatch: Any) -> None:
    import json

    from services.cli import jobs as cli_jobs

    class Args:
        spec = json.dumps(PIPELINE)
        idempotency_key = None
        dry_run = True
        url = "http://testserver"
        api_key = key_a

    monkeypatch.setattr(cli_jobs, "client", lambda args: _Client(api, key_a))
    before = job_count(api)
    assert cli_jobs.cmd_jobs_submit(Args()) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("dry run: a pipeline job of about ") and last.endswith("; nothing stored")
    assert job_count(api) == before


class _Client:
    """The REST client over the in-process app (the CLI's own client class, its transport swapped)."""

    def __init__(self, api: Api, key: str) -> None:
        from services.client import Client

        self.inner = Client("http://testserver", key)
        self.inner.http.close()
        self.inner.http = api.client  # the TestClient speaks httpx to the in-process app
        self.inner.http.headers.update(api.auth(key))

    def __enter__(self) -> Any:
        return self.inner

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_adaptive_attacker_over_rest(api: Api, key_a: str) -> None:
    spec = {**PIPELINE, "attacks": ["mi-face"], "attack_options": {"mi-face": {"adaptive": True, "eot_samples": 2}},
            "data": {"channels": 1, "num_private": 7, "max_images_per_identity": 12}}
    r = dry_run(api, key_a, spec)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["resolved"]["config"]["attack_options"]["mi-face"]["adaptive"] is True
    adaptive = answer["estimate"]["attacks"]["mi-face@adaptive"]
    assert adaptive["eot_samples"] == 2 and adaptive["seconds"] > answer["estimate"]["attacks"]["mi-face"]["seconds"]
    # an attack that only queries the model cannot adapt; a study without a transform to adapt to neither
    bad = dry_run(api, key_a, {**spec, "attacks": ["rlb-mi"], "attack_options": {"rlb-mi": {"adaptive": True}}})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "attack_options.rlb-mi.adaptive"
    bad = dry_run(api, key_a, {**spec, "defense": {"name": "nls"}, "adaptive": True, "attack_options": None})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "adaptive", bad.text
