"""A model's results in the formats registries read: the model card's ``model-index`` as ``huggingface_hub``
parses it, and the CycloneDX 1.6 ML-BOM (``/v1/models/{id}/bom.json``) against the schema, strictly.

The jobs are written straight into the database as a worker would leave them (a train job with its
checkpoint, an audit with its metrics and ``report.json``): no training, so the tests take seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from midre.checkpoint import save_checkpoint
from midre.models import create_model
from services.db.keys import hash_key
from services.db.models import ApiKey, Artifact, Job, Metric
from services.db.session import session_scope
from services.db.types import new_id, utcnow
from services.storage import LocalStore
from tests.service.conftest import Api

GMI_ID = "gmi@1+0a1b2c3d"
TRAIN = {"kind": "train", "dataset": "digits", "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
         "training": {"epochs": 1, "image_size": 16}}


def add_job(api: Api, key: str, spec: dict[str, Any], metrics: dict[str, float], files: dict[str, bytes],
            resolved: dict[str, Any] | None = None) -> str:
    """A succeeded job of the key's tenant with its final metrics and artifacts, as a worker leaves it."""
    store = LocalStore(api.settings.storage_dir)
    with session_scope(api.settings.db_url) as session:
        tenant = session.scalars(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key))).one()
        job = Job(id=new_id("job"), tenant_id=tenant, kind=spec["kind"], spec=spec, resolved=resolved or {},
                  status="succeeded", queue="cpu", progress=1.0, attempt=1, cancel_requested=False,
                  created_at=utcnow(), started_at=utcnow(), finished_at=utcnow())
        session.add(job)
        session.flush()
        for name, data in files.items():
            path = api.settings.home / "blob"
            path.write_bytes(data)
            blob = store.put_file(path)
            session.add(Artifact(job_id=job.id, name=name, size=blob.size, sha256=blob.sha256,
                                 content_type="application/octet-stream", created_at=utcnow()))
        session.add_all(Metric(job_id=job.id, name=n, value=v, epoch=None) for n, v in metrics.items())
        return job.id


def audit_report() -> dict[str, Any]:
    """The parts of an audit's report.json the card and the BOM read."""
    return {"kind": "attack_eval", "judges": [{"arch": "cnn-small"}, {"arch": "resnet18"}],
            "results": [{"attack": "gmi", "defense": "midre", "adaptive": False, "attack_id": GMI_ID,
                         "metrics": {}}],
            "leakage": [{"attack": "gmi", "text": "GMI recovers 40.0 % of the identities, far above chance."}],
            "warnings": [{"code": "single_seed", "message": "One seed: no spread to compare with."}]}


@pytest.fixture
def audited(api: Api, key_a: str, tmp_path: Path) -> tuple[str, str]:
    """(model, audit): a train job's checkpoint and one audit of it by GMI with a 95 % interval."""
    card = {"arch": "cnn-small", "num_classes": 10, "image_size": 16, "channels": 1,
            "class_names": [str(i) for i in range(10)], "defense": TRAIN["defense"],
            "metrics": {"test_accuracy": 0.9}, "config": {"data": {"source": "/srv/private/faces"}}}
    save_checkpoint(create_model("cnn-small", 10, image_size=16, in_channels=1), tmp_path / "ckpt", card)
    files = {n: (tmp_path / "ckpt" / n).read_bytes() for n in ("model.json", "model.safetensors")}
    model = add_job(api, key_a, TRAIN, {"acc": 90.0}, files)
    metrics = {"midre.gmi.acc": 90.0, "midre.gmi.attacc_top1": 40.0, "midre.gmi.attacc_top1_ci_low": 30.0,
               "midre.gmi.attacc_top1_ci_high": 50.0, "midre.gmi.attacc_top5": 60.0, "midre.gmi.knn_dist": 80.0}
    audit = add_job(api, key_a, {"kind": "attack_eval", "model": model, "dataset": "digits", "attacks": ["gmi"]},
                    metrics, {"report.json": json.dumps(audit_report()).encode()},
                    resolved={"config": {"seeds": [0, 1], "eval_arch": "cnn-small"}})
    return model, audit


def test_the_card_parses_with_huggingface_hub_into_eval_results(api: Api, key_a: str,
                                                                 audited: tuple[str, str]) -> None:
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index

    model, audit = audited
    text = api.client.get(f"/v1/models/{model}/README.md", headers=api.auth(key_a)).text
    card = ModelCard(text)  # raises on a model-index it cannot parse
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "attacc_top1", "attacc_top5"}
    assert card.data.model_name == model and results["accuracy"].metric_value == 90.0
    assert (results["accuracy"].task_type, results["accuracy"].dataset_split) == ("image-classification", "test")
    top1 = results["attacc_top1"]
    assert (top1.task_type, top1.task_name, top1.dataset_type, top1.dataset_name, top1.metric_value) == (
        "model-inversion", "gmi", "private", "digits (private training identities)", 40.0)
    assert top1.metric_config == GMI_ID and top1.metric_name == "AttAcc top-1 (%) under gmi"
    assert top1.metric_args == {"attack": "gmi", "attack_id": GMI_ID, "defense": "midre", "audit": audit, "seeds": 2,
                                "judges": ["cnn-small", "resnet18"], "ci_low": 30.0, "ci_high": 50.0,
                                "ci_level": 0.95}
    assert "ci_low" not in results["attacc_top5"].metric_args  # no interval measured: none claimed
    # what the Hub writes back keeps every metric, its config and its args
    written = eval_results_to_model_index(card.data.model_name, card.data.eval_results)
    metrics = [m for r in written[0]["results"] for m in r["metrics"]]
    assert {m["type"]: m.get("args") for m in metrics}["attacc_top1"] == top1.metric_args
    assert "/srv/private" not in text and f"| {GMI_ID} |" in text


def test_the_bom_validates_strictly_against_cyclonedx_1_6(api: Api, key_a: str, audited: tuple[str, str]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    model, audit = audited
    r = api.client.get(f"/v1/models/{model}/bom.json", headers=api.auth(key_a))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.cyclonedx+json"), r.text
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(r.text)
    assert error is None, error
    bom = r.json()
    assert (bom["bomFormat"], bom["specVersion"], bom["version"]) == ("CycloneDX", "1.6", 1)
    assert bom["serialNumber"].startswith("urn:uuid:") and bom["metadata"]["timestamp"]
    (tool,) = bom["metadata"]["tools"]["components"]
    assert tool["name"] == "midre" and tool["version"]
    component = bom["metadata"]["component"]
    assert (component["type"], component["bom-ref"], component["version"]) == ("machine-learning-model", model, model)
    weights = api.client.get(f"/v1/jobs/{model}/artifacts/model.safetensors", headers=api.auth(key_a)).content
    assert component["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(weights).hexdigest()}]
    params = component["modelCard"]["modelParameters"]
    assert params["approach"] == {"type": "supervised"} and params["task"] == "classification"
    assert params["architectureFamily"] == "convolutional neural network" and params["modelArchitecture"] == "cnn-small"
    assert [d["name"] for d in params["datasets"]] == ["digits"]
    performance = component["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    by_type = {m["type"]: m for m in performance}
    assert by_type["accuracy"]["value"] == "90.00"
    top1 = by_type["attacc_top1"]
    assert top1["value"] == "40.00" and top1["confidenceInterval"] == {"lowerBound": "30.00", "upperBound": "50.00"}
    assert GMI_ID in top1["slice"] and "midre (a_h=0.4)" in top1["slice"] and audit in top1["slice"]
    assert "confidenceInterval" not in by_type["attacc_top5"]
    considerations = component["modelCard"]["considerations"]
    assert "far above chance" in considerations["ethicalConsiderations"][0]["name"]
    assert considerations["technicalLimitations"] == ["One seed: no spread to compare with."]
    assert "/srv/private" not in r.text


def test_an_unaudited_model_says_so_and_another_tenant_gets_404(api: Api, key_a: str, key_b: str,
                                                                tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    save_checkpoint(create_model("cnn-small", 10, image_size=16, in_channels=1), tmp_path / "c",
                    {"arch": "cnn-small", "num_classes": 10, "image_size": 16, "channels": 1})
    model = add_job(api, key_a, TRAIN, {}, {n: (tmp_path / "c" / n).read_bytes()
                                            for n in ("model.json", "model.safetensors")})
    card = ModelCard(api.client.get(f"/v1/models/{model}/README.md", headers=api.auth(key_a)).text)
    assert not card.data.eval_results  # no Acc, no audit: nothing claimed
    bom = api.client.get(f"/v1/models/{model}/bom.json", headers=api.auth(key_a)).json()
    (risk,) = bom["metadata"]["component"]["modelCard"]["considerations"]["ethicalConsiderations"]
    assert "not audited yet" in risk["name"]
    assert bom["metadata"]["component"]["modelCard"]["quantitativeAnalysis"]["performanceMetrics"] == []
    for path in (f"/v1/models/{model}/bom.json", f"/v1/models/{model}/README.md", "/v1/models/job_nope/bom.json"):
        r = api.client.get(path, headers=api.auth(key_b))
        assert r.status_code == 404 and r.json()["status"] == 404, (path, r.text)


def test_a_pipelines_target_states_its_studys_verdict_as_a_tradeoff(api: Api, key_a: str, tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    save_checkpoint(create_model("cnn-small", 10, image_size=16, in_channels=1), tmp_path / "c",
                    {"arch": "cnn-small", "num_classes": 10, "image_size": 16, "channels": 1,
                     "defense": {"name": "midre", "a_h": 0.4}})
    files = {f"targets/{label}/seed0/{n}": (tmp_path / "c" / n).read_bytes()
             for label in ("nodef", "midre") for n in ("model.json", "model.safetensors")}
    verdicts = [{"attack": "gmi", "defense": "midre", "status": "helped", "text": "MIDRE lowered top-1 AttAcc of gmi."}]
    files["report.json"] = json.dumps({"kind": "study", "verdicts": verdicts}).encode()
    model = add_job(api, key_a, {"kind": "pipeline", "dataset": "digits"}, {"midre.acc": 88.0, "nodef.acc": 91.0},
                    files)
    r = api.client.get(f"/v1/models/{model}/bom.json", headers=api.auth(key_a))
    assert r.status_code == 200 and JsonStrictValidator(SchemaVersion.V1_6).validate_str(r.text) is None
    card = r.json()["metadata"]["component"]["modelCard"]
    assert card["considerations"]["performanceTradeoffs"] == ["MIDRE lowered top-1 AttAcc of gmi."]
    assert card["quantitativeAnalysis"]["performanceMetrics"][0]["value"] == "88.00"  # the defended target's Acc
