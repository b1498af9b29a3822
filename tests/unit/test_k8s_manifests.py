"""The Kubernetes manifests of ``deploy/k8s/``: valid against the Kubernetes JSON schemas (strict, so an unknown
or misspelt field fails), and honest against the code: every ``MIDRE_*`` name is a real setting and its value one
the settings accept, every command is a real ``midre`` (or uvicorn) command with real flags, the API's probes hit
real routes, the migration Job migrates, GPU workers get the GPUs their settings claim, and the Secret holds
placeholders only. No cluster and no network: ``kubectl`` is used, when present, only to render the kustomization.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import re
import shutil
import subprocess
import typing
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from midre.cli import build_parser
from services.serving.config import ServingSettings
from services.settings import QueueName, Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
NAMESPACE = "midre"
IMAGE = "ghcr.io/example/midre:0.1.0"
PLACEHOLDER = "change-me"

#: Settings the fleet uses that services/settings.py may not have yet (object store, bounded cache, devices).
NEW_SETTINGS = frozenset({"MIDRE_STORAGE_URL", "MIDRE_S3_ENDPOINT_URL", "MIDRE_CACHE_MAX_BYTES",
                          "MIDRE_WORKER_DEVICES"})
#: Names the Secret must hold: where the database, the broker and the object store are, and how to sign in.
SECRET_KEYS = frozenset({"MIDRE_DATABASE_URL", "MIDRE_BROKER_URL", "MIDRE_STORAGE_URL", "MIDRE_S3_ENDPOINT_URL",
                         "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"})
#: Names that say "credential": they may come from the Secret only.
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|API_KEY")
GPU = "nvidia.com/gpu"
#: Seconds a worker's warm shutdown gets at least (docker-compose.yml's stop_grace_period).
MIN_WORKER_GRACE_S = 300


# ---------------------------------------------------------------------------------------------------- loading


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def load_documents() -> list[tuple[str, dict[str, Any]]]:
    """``(file name, object)`` of every non-empty YAML document under deploy/k8s (the kustomization aside)."""
    docs = []
    for path in manifest_files():
        with path.open() as f:
            docs.extend((path.name, doc) for doc in yaml.safe_load_all(f) if doc is not None)
    return docs


DOCS = load_documents()


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc["kind"] == kind]


def the(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return objects("Deployment") + objects("Job")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def all_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in workloads():
        for container in containers(workload):
            yield workload, container


def name_of(workload: dict[str, Any]) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}"


def workers() -> list[dict[str, Any]]:
    return [d for d in objects("Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def gpu_count(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def config_map() -> dict[str, str]:
    return the("ConfigMap", "midre-config")["data"]


def secret() -> dict[str, Any]:
    return the("Secret", "midre-secrets")


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees: the ConfigMap and Secret it reads with envFrom, then its own
    ``env`` (which wins, as in Kubernetes)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(the("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(the("Secret", source["secretRef"]["name"])["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "m": Fraction(1, 1000)}


def quantity(value: str | int) -> Fraction:
    """A Kubernetes quantity ("500m", "8Gi", 4) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match and (match[2] == "" or match[2] in _UNITS), f"not a quantity: {value!r}"
    return Fraction(match[1]) * _UNITS.get(match[2], 1)


def volumes(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def mounted_empty_dir(workload: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The emptyDir mounted at ``path`` in ``container``, or None."""
    by_name = volumes(workload)
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == path:
            return by_name[mount["name"]].get("emptyDir")
    return None


# ---------------------------------------------------------------------------------------------- the code's truth


def setting_names() -> set[str]:
    """Every environment variable the service's settings classes read (``MIDRE_*``, ``MIDRE_SERVE_*``)."""
    names = set()
    for cls in (Settings, ServingSettings):
        prefix = cls.model_config["env_prefix"]
        names.update(f"{prefix}{field}".upper() for field in cls.model_fields)
    return names


def unknown_midre_names(names: set[str]) -> set[str]:
    return {n for n in names if n.startswith("MIDRE_") and n not in setting_names() | NEW_SETTINGS}


def service_parser() -> argparse.ArgumentParser:
    """The real ``midre`` parser with the service's commands (serve, migrate, worker, admin, ...) only: what
    ``midre`` builds for a command line that names one of them (the science groups would import torch's models
    for nothing; no container runs them)."""
    parser = build_parser("migrate")
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "migrate", "worker"} <= set(sub.choices)
    return parser


def midre_subparser(argv: list[str]) -> argparse.ArgumentParser:
    """The argparse parser of the innermost sub-command ``argv`` names (``worker``, ``admin create-key``)."""
    parser = service_parser()
    words = [w for w in argv if not w.startswith("-")]
    for word in words:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or word not in sub.choices:
            break
        parser = sub.choices[word]
    return parser


def check_midre(argv: list[str]) -> argparse.Namespace:
    """Parse a ``midre ...`` service command line with the real parser; flags must be spelt out in full
    (argparse would accept an abbreviation, the parser of the next release might not)."""
    try:
        args = service_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"midre {' '.join(argv)}: not a valid command line") from exc
    assert getattr(args, "func", None), f"midre {' '.join(argv)}: names no command"
    flags = {s for a in midre_subparser(argv)._actions for s in a.option_strings}
    for word in argv:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in flags, f"midre {' '.join(argv)}: {word} is not a flag of the command"
    return args


def check_uvicorn(argv: list[str]) -> dict[str, Any]:
    """Parse a ``uvicorn ...`` command line with uvicorn's own click command; the app it names must exist."""
    command = importlib.import_module("uvicorn.main").main
    try:
        params = command.make_context("uvicorn", list(argv)).params
    except click.ClickException as exc:
        raise AssertionError(f"uvicorn {' '.join(argv)}: {exc.format_message()}") from exc
    module, _, attr = params["app"].partition(":")
    assert hasattr(importlib.import_module(module), attr), f"uvicorn: no {attr!r} in {module}"
    return params


def check_command(argv: list[str]) -> argparse.Namespace | dict[str, Any]:
    program, rest = argv[0], argv[1:]
    if program == "midre":
        return check_midre(rest)
    if program == "uvicorn":
        return check_uvicorn(rest)
    raise AssertionError(f"{argv}: neither midre nor uvicorn")


def app_routes(tmp_path: Path) -> set[str]:
    """Every path the API answers: its OpenAPI document's paths (the routers' operations; FastAPI keeps included
    routers as nested objects, so ``app.routes`` alone misses them) and the app's own top-level routes. Built as
    services/gateway/openapi.py builds it: no database, no broker."""
    from services.gateway.app import create_app

    app = create_app(Settings(home=tmp_path / "midre", auto_migrate=False))
    top_level = {route.path for route in app.routes if isinstance(getattr(route, "path", None), str)}
    return set(app.openapi()["paths"]) | top_level


def commands_of(container: dict[str, Any]) -> list[list[str]]:
    """The container's command and the commands of its exec probes."""
    found = [container["command"] + container.get("args", [])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "exec" in container.get(probe, {}):
            found.append(container[probe]["exec"]["command"])
    return found


# ------------------------------------------------------------------------------------------------ the schemas


def test_the_folder_holds_the_expected_objects() -> None:
    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in DOCS)
    assert kinds == sorted([
        "Namespace/midre", "ConfigMap/midre-config", "Secret/midre-secrets", "Job/midre-migrate",
        "Deployment/midre-api", "Service/midre-api", "Deployment/midre-worker-cpu",
        "Deployment/midre-worker-gpu-a100", "Deployment/midre-worker-gpu-8x",
    ])


#: The Kubernetes minor versions the manifests are checked against: the four newest the validator ships (upstream
#: supports the three newest releases; one more for clusters that upgrade late).
SUPPORTED = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))[-4:]


@pytest.mark.parametrize(("file", "doc"), DOCS, ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCS])
def test_every_object_is_valid_on_the_supported_kubernetes_versions(file: str, doc: dict[str, Any]) -> None:
    errors = []
    for version in SUPPORTED:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # its str() dumps the whole schema: say only what broke
            where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
            errors.append(f"{file} on Kubernetes {version}, at {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def _typo_in_pod_spec(doc: dict[str, Any]) -> None:
    spec = pod_spec(doc)
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")


def _typo_in_container(doc: dict[str, Any]) -> None:
    pod_spec(doc)["containers"][0]["imagePullPolcy"] = "Always"


def _wrong_type(doc: dict[str, Any]) -> None:
    doc["spec"]["replicas"] = "two"


def _missing_required(doc: dict[str, Any]) -> None:
    del doc["spec"]["selector"]


@pytest.mark.parametrize("break_it", [_typo_in_pod_spec, _typo_in_container, _wrong_type, _missing_required])
def test_strict_validation_refuses_a_broken_copy(break_it: Any) -> None:
    good = the("Deployment", "midre-worker-gpu-a100")
    kubernetes_validate.validate(good, all_versions()[-1], strict=True)
    broken = copy.deepcopy(good)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, all_versions()[-1], strict=True)


def test_objects_live_in_the_midre_namespace() -> None:
    assert the("Namespace", NAMESPACE)
    for _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in manifest_files()} - {SECRET_TEMPLATE.name}
    image, tag = IMAGE.rsplit(":", 1)
    assert {"name": image, "newTag": tag} in kustomization["images"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (renders the kustomization)")
def test_kubectl_renders_the_kustomization() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    rendered = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(out) if d)
    expected = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in DOCS if d["kind"] != "Secret")
    assert rendered == expected


# ----------------------------------------------------------------------------------------- settings and secrets


def test_the_secret_template_holds_placeholders_only() -> None:
    template = secret()
    assert template["type"] == "Opaque"
    assert "data" not in template, "use stringData: readable placeholders, no base64"
    values = template["stringData"]
    assert set(values) >= SECRET_KEYS
    for key, value in values.items():
        assert isinstance(value, str) and PLACEHOLDER in value, f"{key}: not a {PLACEHOLDER} placeholder"


def test_no_credential_outside_the_secret() -> None:
    secret_keys = set(secret()["stringData"])
    plain = dict(config_map())
    for workload, container in all_containers():
        assert {s.get("secretRef", {}).get("name") for s in container["envFrom"]} >= {"midre-secrets"}
        for item in container.get("env", []):
            assert "value" in item, f"{name_of(workload)}: {item['name']} must be a literal (settings are envFrom)"
            plain[f"{name_of(workload)} {item['name']}"] = item["value"]
    for key in plain:
        name = key.split()[-1]
        assert name not in secret_keys, f"{key} belongs in the Secret"
        assert not SECRETISH.search(name), f"{key} looks like a credential: put it in the Secret"


def test_every_midre_name_is_a_real_setting() -> None:
    names = set(config_map()) | set(secret()["stringData"])
    for _, container in all_containers():
        names |= {item["name"] for item in container.get("env", [])}
    assert "MIDRE_DATABASE_URL" in setting_names()  # the settings were read
    assert unknown_midre_names(names) == set()


def test_a_made_up_setting_name_is_caught() -> None:
    assert unknown_midre_names({"MIDRE_DATABASE_URI", "MIDRE_HOME", "MIDRE_STORAGE_URL", "PATH"}) == {
        "MIDRE_DATABASE_URI"}


@pytest.mark.parametrize(("workload", "container"), list(all_containers()),
                         ids=[f"{name_of(w)}:{c['name']}" for w, c in all_containers()])
def test_the_settings_accept_every_value(workload: dict[str, Any], container: dict[str, Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MIDRE_"):
            monkeypatch.delenv(name)
    env = container_env(container)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on a value of the wrong type or out of range
    ServingSettings()
    assert settings.auto_migrate is False, "only the migration Job migrates"
    assert settings.broker_url and settings.database_url, "a fleet needs a real broker and database"
    assert env.get("MIDRE_STORAGE_URL"), "pods share files through the object store only"
    for name in ("MIDRE_CACHE_MAX_BYTES", "MIDRE_WORKER_DEVICES"):
        if name in env:
            assert int(env[name]) >= 1, name


# ------------------------------------------------------------------------------------------------- commands


def test_every_command_is_a_real_command() -> None:
    for workload, container in all_containers():
        for argv in commands_of(container):
            try:
                check_command(argv)
            except AssertionError as exc:
                raise AssertionError(f"{name_of(workload)}: {exc}") from exc


@pytest.mark.parametrize("argv", [
    ["midre", "wroker", "--queues", "gpu"],            # no such command
    ["midre", "worker", "--queue", "gpu"],             # abbreviated flag
    ["midre", "worker", "--queues", "gpu", "--gpus", "1"],  # no such flag
    ["midre", "migrate", "--revison", "head"],
    ["uvicorn", "services.gateway.app:app", "--hots", "0.0.0.0"],
    ["uvicorn", "services.gateway.app:application"],  # no such app
])
def test_a_wrong_command_is_caught(argv: list[str]) -> None:
    with pytest.raises(AssertionError):
        check_command(argv)


def test_the_migration_job_migrates_once() -> None:
    job = the("Job", "midre-migrate")
    (container,) = containers(job)
    assert container["command"] == ["midre", "migrate"]
    assert check_midre(container["command"][1:]).revision == "head"
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert 0 < job["spec"]["backoffLimit"] <= 10
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    migrators = [name_of(w) for w, c in all_containers() if c["command"][:2] == ["midre", "migrate"]]
    assert migrators == ["Job/midre-migrate"]


def test_the_api_serves_its_port_and_its_probes_hit_real_routes(tmp_path: Path) -> None:
    api = the("Deployment", "midre-api")
    (container,) = containers(api)
    params = check_command(container["command"])
    assert isinstance(params, dict) and params["app"] == "services.gateway.app:app"
    assert params["host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": params["port"]}
    routes = app_routes(tmp_path)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            assert get["path"] in routes, f"{probe}: no route {get['path']}"
            assert get["port"] in ports or get["port"] in ports.values()
    service = the("Service", "midre-api")
    assert service["spec"]["type"] == "ClusterIP"
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_app_routes_know_the_health_routes_and_nothing_made_up(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert {"/healthz", "/readyz"} <= routes
    assert "/livez" not in routes


# --------------------------------------------------------------------------------------------------- the pods


def test_every_pod_is_locked_down_and_reads_its_settings_from_the_config() -> None:
    for workload, container in all_containers():
        where = name_of(workload)
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        # The image's USER is a name (midre); runAsNonRoot needs a numeric user to check.
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod.get("automountServiceAccountToken") is False, where
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert container["image"] == IMAGE, where
        refs = [s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]]
        assert refs == ["midre-config", "midre-secrets"], where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
        for kind, amount in container["resources"]["requests"].items():
            assert quantity(amount) <= quantity(container["resources"]["limits"].get(kind, amount)), where
        home = container_env(container)["MIDRE_HOME"]
        for path in (home, "/tmp"):
            volume = mounted_empty_dir(workload, container, path)
            assert volume is not None and "sizeLimit" in volume, f"{where}: no bounded emptyDir at {path}"


def test_the_local_disk_is_a_bounded_cache() -> None:
    for workload, container in all_containers():
        where = name_of(workload)
        env = container_env(container)
        home = mounted_empty_dir(workload, container, env["MIDRE_HOME"])
        assert home is not None
        if "MIDRE_CACHE_MAX_BYTES" in env:
            assert int(env["MIDRE_CACHE_MAX_BYTES"]) < quantity(home["sizeLimit"]), f"{where}: cache past its disk"
        on_disk = [v["emptyDir"] for v in volumes(workload).values()
                   if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"]
        needed = sum(quantity(v["sizeLimit"]) for v in on_disk)
        assert quantity(container["resources"]["requests"]["ephemeral-storage"]) >= needed, where
        in_memory = [v["emptyDir"] for v in volumes(workload).values()
                     if "emptyDir" in v and v["emptyDir"].get("medium") == "Memory"]
        shm = sum(quantity(v["sizeLimit"]) for v in in_memory)
        assert shm < quantity(container["resources"]["limits"]["memory"]), f"{where}: /dev/shm counts as memory"


def test_selectors_pick_their_own_pods_only() -> None:
    deployments = objects("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        for other in deployments:
            if other is not deployment:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selector.items() <= labels.items(), f"{name_of(deployment)} selects {name_of(other)}"


def test_workers_consume_real_queues_with_their_devices() -> None:
    queues = set(typing.get_args(QueueName))
    classes = {}
    for worker in workers():
        where = name_of(worker)
        (container,) = containers(worker)
        args = check_midre(container["command"][1:])
        assert container["command"][:2] == ["midre", "worker"] and not args.ping, where
        consumed = {q.strip() for q in args.queues.split(",")}
        assert consumed and consumed <= queues, f"{where}: queues {consumed}"
        assert args.hostname, f"{where}: needs --hostname for its ping probe"
        for probe in ("startupProbe", "livenessProbe"):
            ping = check_midre(container[probe]["exec"]["command"][1:])
            assert ping.ping and ping.hostname == args.hostname, f"{where}: {probe} pings another node"
            assert container[probe]["timeoutSeconds"] > ping.ping_timeout, f"{where}: {probe} times out first"
        assert pod_spec(worker)["terminationGracePeriodSeconds"] >= MIN_WORKER_GRACE_S, where
        assert mounted_empty_dir(worker, container, "/dev/shm") == volumes(worker)["dshm"]["emptyDir"]
        assert volumes(worker)["dshm"]["emptyDir"]["medium"] == "Memory", where
        env = container_env(container)
        threads = int(env["MIDRE_WORKER_THREADS"])
        assert 1 <= threads <= quantity(container["resources"]["limits"]["cpu"]), f"{where}: threads past its CPUs"
        gpus = gpu_count(container)
        classes[worker["spec"]["template"]["metadata"]["labels"]["midre/device-class"]] = gpus
        if gpus == 0:
            assert "gpu" not in consumed, f"{where}: consumes the gpu queue without a GPU"
            assert GPU not in container["resources"]["requests"], where
            if "MIDRE_WORKER_DEVICES" in env:  # on a CPU machine the devices are cores
                assert int(env["MIDRE_WORKER_DEVICES"]) <= quantity(container["resources"]["limits"]["cpu"]), where
            continue
        assert "gpu" in consumed, f"{where}: a GPU worker that does not consume the gpu queue"
        assert int(container["resources"]["requests"].get(GPU, gpus)) == gpus, where
        if "MIDRE_WORKER_DEVICES" in env:
            assert int(env["MIDRE_WORKER_DEVICES"]) == gpus, f"{where}: MIDRE_WORKER_DEVICES is not its GPU count"
        pod = pod_spec(worker)
        assert any(t["key"] == GPU and t["operator"] == "Exists" for t in pod["tolerations"]), where
        assert "nvidia.com/gpu.product" in pod["nodeSelector"], where
    assert classes == {"cpu": 0, "gpu-a100": 1, "gpu-8x": 8}


# ---------------------------------------------------------------------------------------------- compose too


def test_docker_compose_still_parses_and_runs_api_migrate_and_workers() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "migrate"} <= set(services)
    assert any(name.startswith("worker") for name in services)
    assert services["migrate"]["command"] == ["midre", "migrate"]
    for name, service in services.items():
        if name == "api" or name.startswith(("migrate", "worker")):
            check_command(service["command"])
