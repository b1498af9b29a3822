"""The REST commands of ``midre`` against the embedded service, as a user types them.

One ``midre serve`` (SQLite + file broker + one worker) and one short digits training job are
shared by the module; every command runs as its own ``python -m midre.cli`` process, so exit codes,
stdout and stderr are what a shell sees. Error manners are checked too: one line, no traceback,
non-zero exit, whether the service is down or answers 4xx. The service may call loopback addresses
(webhooks, MLflow), so their commands are checked without a public receiver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service._support import (
    REPO,
    TRAIN_SPEC,
    ApiProcess,
    face_folder_members,
    free_port,
    make_zip,
    png_bytes,
)
from tests.service.conftest import make_settings
from tests.service.test_embedded import midre


@dataclass
class Service:
    url: str
    env: dict[str, str]
    key: str
    job_id: str
    log_path: Path
    create_key_output: str

    def cli(self, *args: str, timeout: float = 120, key: str | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``midre ARGS --url URL --api-key KEY`` (the module's admin key unless ``key``), fed ``stdin``."""
        command = [sys.executable, "-m", "midre.cli", *args, "--url", self.url, "--api-key", key or self.key]
        return subprocess.run(command, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              input=stdin)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``midre serve`` with a key and one succeeded one-epoch training job."""
    tmp = tmp_path_factory.mktemp("cli")
    settings = make_settings(tmp / "home", webhooks_allow_private=True, mlflow_allow_private=True)
    api = ApiProcess(settings, tmp / "serve.log", worker=True)
    env, url, log_path = api.env, api.url, api.log_path
    try:
        api.wait_ready()
        created = midre(env, "admin", "create-key", "--tenant", "cli")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1].split()[-1]
        spec = TRAIN_SPEC | {"training": {**TRAIN_SPEC["training"], "epochs": 1}}
        submitted = midre(env, "jobs", "submit", json.dumps(spec), "--url", url, "--api-key", key)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]  # the id alone: JOB=$(midre jobs submit ... | tail -n 1)
        assert job_id.startswith("job_") and job_id.split() == [job_id], submitted.stdout
        waited = midre(env, "jobs", "wait", job_id, "--timeout", "240", "--url", url, "--api-key", key)
        assert waited.returncode == 0, (waited.stderr, log_path.read_text()[-3000:])
        yield Service(url, env, key, job_id, log_path, created.stdout + created.stderr)
    finally:
        api.stop(30.0)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command, checked to be a single line without a traceback."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_jobs_list_and_filters(service: Service) -> None:
    table = service.cli("jobs", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.strip().splitlines()
    assert header.split()[:3] == ["ID", "KIND", "STATUS"]
    assert any(row.split()[0] == service.job_id and "succeeded" in row for row in rows)

    as_json = service.cli("jobs", "list", "--status", "succeeded", "--kind", "train", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [j["id"] for j in json.loads(as_json.stdout)] == [service.job_id]
    none = service.cli("jobs", "list", "--status", "queued")
    assert none.returncode == 0 and none.stdout.strip() == "no jobs"


def test_jobs_events(service: Service) -> None:
    events = service.cli("jobs", "events", service.job_id)
    assert events.returncode == 0, events.stderr
    lines = events.stdout.strip().splitlines()
    assert lines and all(line.split()[2].startswith("#") for line in lines)  # date time #id type ...
    assert "succeeded" in events.stdout
    # --follow on a finished job prints the rest and returns; --after skips what was seen
    first_id = json.loads(service.cli("jobs", "events", service.job_id, "--json").stdout.splitlines()[0])["id"]
    followed = service.cli("jobs", "events", service.job_id, "--follow", "--after", str(first_id), timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert len(followed.stdout.strip().splitlines()) == len(lines) - 1


def test_datasets_upload_and_list(service: Service, tmp_path: Path) -> None:
    archive = tmp_path / "faces.zip"
    archive.write_bytes(make_zip(face_folder_members(identities=3, per_identity=4)))
    uploaded = service.cli("datasets", "upload", str(archive), "--name", "faces-cli")
    assert uploaded.returncode == 0, uploaded.stderr
    dataset_id = uploaded.stdout.strip().splitlines()[-1].split()[-1]
    assert "3 identities" in uploaded.stdout and "12 images" in uploaded.stdout

    listed = service.cli("datasets", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(dataset_id))
    assert "faces-cli" in row and "upload" in row
    as_json = json.loads(service.cli("datasets", "list", "--json").stdout)
    assert dataset_id in [d["id"] for d in as_json]

    missing = service.cli("datasets", "upload", str(tmp_path / "nope.zip"), "--name", "x")
    assert "no such file" in one_line_error(missing)


def test_models_list_policy_export(service: Service, tmp_path: Path) -> None:
    listed = service.cli("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith(service.job_id) for line in listed.stdout.splitlines())

    shown = service.cli("models", "policy", service.job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["policy"] == "full"

    changed = service.cli("models", "policy", service.job_id, "--policy", "top-k", "--top-k", "2", "--budget", "50",
                          "--json")
    assert changed.returncode == 0, changed.stderr
    view = json.loads(changed.stdout)
    assert (view["policy"], view["top_k"], view["budget"]) == ("top-k", 2, 50)
    # PATCH: only the budget changes, the policy stays top-k
    unlimited = service.cli("models", "policy", service.job_id, "--budget", "unlimited", "--json")
    assert unlimited.returncode == 0, unlimited.stderr
    view = json.loads(unlimited.stdout)
    assert (view["policy"], view["top_k"], view["budget"]) == ("top-k", 2, None)
    text = service.cli("models", "policy", service.job_id)
    assert text.returncode == 0 and "policy top-k" in text.stdout and "budget unlimited" in text.stdout

    out = tmp_path / "model.pt"
    exported = service.cli("models", "export", service.job_id, "--out", str(out), timeout=240)
    assert exported.returncode == 0, exported.stderr
    assert "torchscript" in exported.stdout and out.stat().st_size > 1000
    assert out.read_bytes()[:2] == b"PK"  # a TorchScript archive is a zip file


def test_error_answers_print_once(service: Service) -> None:
    not_found = one_line_error(service.cli("jobs", "status", "job_doesnotexist"))
    assert not_found.startswith("error: 404") and "job_doesnotexist" in not_found

    bad = service.cli("jobs", "submit", json.dumps(TRAIN_SPEC | {"arch": "nope"}))
    line = one_line_error(bad)
    assert line.startswith("error: 422") and "arch" in line
    assert line.count("nope") <= 1 and line.count("arch:") <= 1, line

    unauthorized = midre(service.env, "models", "list", "--url", service.url, "--api-key", "mk_x_y")
    assert one_line_error(unauthorized).startswith("error: 401")


def test_unreachable_service_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")}
    for args in (("jobs", "list"), ("datasets", "list"), ("models", "list"), ("jobs", "events", "job_x")):
        line = one_line_error(midre(env, *args, "--url", url, "--api-key", "mk_x_y", timeout=60))
        assert line == f"error: cannot reach the MIDRE service at {url}: connection refused; start it with " \
                       "`midre serve` (or set --url / MIDRE_URL)", line


def test_no_alembic_chatter(service: Service) -> None:
    """``midre serve`` and ``midre admin create-key`` migrate quietly unless ``-v``."""
    assert "alembic" not in service.create_key_output.lower()
    assert "alembic" not in service.log_path.read_text().lower()


def test_models_upload(service: Service, tmp_path: Path) -> None:
    """A checkpoint downloaded from the service goes back in as a model trained elsewhere."""
    fetched = service.cli("jobs", "download", service.job_id, "--dest", str(tmp_path), "--name", "model.safetensors",
                          "--name", "model.json")
    assert fetched.returncode == 0, fetched.stderr
    uploaded = service.cli("models", "upload", str(tmp_path / "model.safetensors"), "--card",
                           str(tmp_path / "model.json"), "--name", "round-trip", timeout=240)
    assert uploaded.returncode == 0, uploaded.stderr
    *_, line, model_id = uploaded.stdout.strip().splitlines()
    assert model_id.startswith("job_") and model_id.split() == [model_id] and model_id != service.job_id
    assert "round-trip" in line and "cnn-small" in line
    listed = json.loads(service.cli("models", "list", "--json").stdout)
    assert {m["job_id"]: m["kind"] for m in listed}[model_id] == "upload"

    bad = service.cli("models", "upload", str(tmp_path / "model.safetensors"), "--card", '{"arch": "nope"}')
    assert one_line_error(bad).startswith("error: 422")
    missing = service.cli("models", "upload", str(tmp_path / "nope.safetensors"), "--card", "{}")
    assert "no such file" in one_line_error(missing)


def test_keys_create_list_revoke(service: Service, tmp_path: Path) -> None:
    created = service.cli("keys", "create", "--name", "consumer", "--scope", "predict", "--model", service.job_id)
    assert created.returncode == 0, created.stderr
    *_, line, secret = created.stdout.strip().splitlines()
    assert secret.startswith("mk_") and "predict" in line and service.job_id in line
    listed = json.loads(service.cli("keys", "list", "--json").stdout)
    (mine,) = [k for k in listed if k["name"] == "consumer"]
    assert mine["scopes"] == ["predict"] and mine["models"] == [service.job_id] and mine["revoked_at"] is None
    table = service.cli("keys", "list").stdout
    assert any(row.split()[0] == mine["id"] for row in table.splitlines()[1:])

    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(3, size=16))
    predicted = service.cli("predict", "--model", service.job_id, str(image), key=secret)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith("policy: ")
    assert one_line_error(service.cli("jobs", "list", key=secret)).startswith("error: 403")

    revoked = service.cli("keys", "revoke", mine["id"])
    assert revoked.returncode == 0 and revoked.stdout.strip() == f"revoked key {mine['id']}", revoked.stderr
    assert one_line_error(service.cli("models", "list", key=secret)).startswith("error: 401")
    assert json.loads(service.cli("keys", "list", "--json").stdout)[0]["revoked_at"] is not None
    assert one_line_error(service.cli("keys", "create", "--name", "x", "--scope", "admin", key=secret))


def test_webhooks_create_list_delete(service: Service) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    created = service.cli("webhooks", "create", url, "--event", "job.succeeded", "--event", "job.failed")
    assert created.returncode == 0, created.stderr
    *_, line, secret = created.stdout.strip().splitlines()
    assert secret.startswith("whsec_") and url in line
    hook_id = line.split()[2]
    (listed,) = json.loads(service.cli("webhooks", "list", "--json").stdout)
    assert (listed["id"], listed["url"], listed["events"]) == (hook_id, url, ["job.succeeded", "job.failed"])
    assert "secret" not in listed

    bad = service.cli("webhooks", "create", url, "--event", "job.exploded")
    assert one_line_error(bad).startswith("error: 422") and "events[0]" in bad.stderr
    deleted = service.cli("webhooks", "delete", hook_id)
    assert deleted.returncode == 0, deleted.stderr
    assert service.cli("webhooks", "list").stdout.strip() == "no webhooks"
    assert one_line_error(service.cli("webhooks", "delete", hook_id)).startswith("error: 404")


def test_integrations_mlflow_set_show_delete(service: Service) -> None:
    assert one_line_error(service.cli("integrations", "mlflow", "show")).startswith("error: 404")
    tracking = f"http://127.0.0.1:{free_port()}"
    stored = service.cli("integrations", "mlflow", "set", "--tracking-uri", tracking, "--experiment", "midre-cli",
                         "--registered-model", "faces", "--token", "-", "--json", stdin="s3cret-token\n")
    assert stored.returncode == 0, stored.stderr
    view = json.loads(stored.stdout)
    assert (view["tracking_uri"], view["experiment"], view["registered_model"], view["auth"]) == (
        tracking, "midre-cli", "faces", "token")
    assert "s3cret-token" not in stored.stdout
    shown = service.cli("integrations", "mlflow", "show")
    assert shown.returncode == 0 and tracking in shown.stdout and "credentials token" in shown.stdout

    basic = service.cli("integrations", "mlflow", "set", "--tracking-uri", tracking, "--experiment", "e",
                        "--username", "me", "--password", "pw")
    assert basic.returncode == 0 and "credentials basic" in basic.stdout, basic.stderr
    both = service.cli("integrations", "mlflow", "set", "--tracking-uri", tracking, "--experiment", "e",
                       "--token", "t", "--username", "me", "--password", "pw")
    assert one_line_error(both).startswith("error: 422")

    deleted = service.cli("integrations", "mlflow", "delete")
    assert deleted.returncode == 0, deleted.stderr
    assert one_line_error(service.cli("integrations", "mlflow", "show")).startswith("error: 404")


def test_rest_commands_run_without_torch(service: Service, tmp_path: Path) -> None:
    """The client commands, run for real against the service, never import torch or torchvision (the
    service does the work); ``admin create-key`` (the database, no service) neither."""
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(5, size=16))
    env = service.env | {"PYTHONPROFILEIMPORTTIME": "1"}
    connect = ["--url", service.url, "--api-key", service.key]
    commands = [["jobs", "list", *connect], ["jobs", "status", service.job_id, *connect], ["models", "list", *connect],
                ["datasets", "list", *connect], ["keys", "list", *connect], ["webhooks", "list", *connect],
                ["predict", "--model", service.job_id, str(image), *connect], ["admin", "create-key", "--tenant", "t2"]]
    for args in commands:
        result = midre(env, *args)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "services.cli.rest" in imported, args  # importtime lists the modules the command loaded
        assert not [name for name in imported if name.split(".")[0] in ("torch", "torchvision")], args


def test_the_demo_table_shows_each_figure_with_its_interval() -> None:
    from services.cli.demo import metric_lines

    lines = metric_lines({"nodef.gmi.acc": 90.0, "nodef.gmi.acc_ci_low": 85.0, "nodef.gmi.acc_ci_high": 95.0,
                          "midre.gmi.attacc_top1": 20.0, "midre.gmi.acc": 88.0, "midre.gmi.tradeoff_delta": 1.5})
    assert lines[0].split() == ["gmi", "vs", "nodef", "Acc", "90.00%", "[85.00,", "95.00]", "AttAcc", "top-1", "nan%"]
    assert "Acc  88.00%  AttAcc top-1  20.00%  Δ 1.50" in lines[1]  # no interval stored: none printed


def test_audit_policies_create_list_delete(service: Service, tmp_path: Path) -> None:
    spec = tmp_path / "audit.json"
    spec.write_text(json.dumps({"dataset": "digits", "attacks": ["mi-face"], "seeds": 1}))
    created = service.cli("audit-policies", "create", "--name", "every upload", "--spec", str(spec))
    assert created.returncode == 0, created.stderr
    policy_id = created.stdout.split()[3]
    (listed,) = json.loads(service.cli("audit-policies", "list", "--json").stdout)
    assert (listed["id"], listed["trigger"], listed["audits"]) == (policy_id, "model_upload", 0)
    spec.write_text(json.dumps({"attacks": ["mi-face"], "model": "job_x"}))
    bad = service.cli("audit-policies", "create", "--name", "x", "--spec", str(spec))
    assert one_line_error(bad).startswith("error: 422") and "spec.model" in bad.stderr
    assert service.cli("audit-policies", "delete", policy_id).returncode == 0
    assert service.cli("audit-policies", "list").stdout.strip() == "no audit policies"
