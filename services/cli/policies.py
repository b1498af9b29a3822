"""``midre audit-policies ACTION``: audits that run by themselves when a model is uploaded or a new version is
registered in MLflow (REST, jobs key)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.cli.rest import api_call, client, connection_options, print_list, when


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre audit-policies create | list | delete``."""
    common = connection_options()
    group = subparsers.add_parser("audit-policies", help="audits that start by themselves when a model is uploaded "
                                  "(jobs key)").add_subparsers(dest="policies_command", metavar="ACTION")
    p = group.add_parser("create", parents=[common], help="audit every model uploaded from now on with SPEC")
    p.add_argument("--name", required=True, help="what the policy is for")
    p.add_argument("--trigger", choices=("model_upload", "mlflow_model_version"), default="model_upload",
                   help="model_upload: every model uploaded to POST /v1/models; mlflow_model_version: every new "
                        "version of --registered-model in your MLflow")
    p.add_argument("--registered-model", default=None, help="the MLflow registered model to watch")
    p.add_argument("--spec", required=True, metavar="FILE",
                   help="JSON file of an attack_eval job spec without `model` (the trigger gives it)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=cmd_create)
    p = group.add_parser("list", parents=[common], help="the tenant's policies and the audits each started")
    p.add_argument("--json", action="store_true", help="print the policies as JSON")
    p.set_defaults(func=cmd_list)
    p = group.add_parser("delete", parents=[common], help="delete a policy (its audits stay)")
    p.add_argument("policy_id", metavar="POLICY_ID")
    p.set_defaults(func=cmd_delete)


def cmd_create(args: argparse.Namespace) -> int:
    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"--spec: {exc}")
        return 2
    with client(args) as api:
        made = api_call(lambda: api.request("POST", "/v1/audit-policies",
                                            json={"name": args.name, "trigger": args.trigger, "spec": spec,
                                                  **({"registered_model": args.registered_model}
                                                     if args.registered_model else {})}))
    if made is None:
        return 1
    print(json.dumps(made, indent=2) if args.json else f"created audit policy {made['id']} ({made['trigger']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with client(args) as api:
        rows = api_call(lambda: api.request("GET", "/v1/audit-policies"))
    return print_list(rows, args, "audit policies", ["ID", "NAME", "TRIGGER", "AUDITS", "CREATED"], lambda r: [
        r["id"], r["name"], r["trigger"], str(r["audits"]), when(r["created_at"])])


def cmd_delete(args: argparse.Namespace) -> int:
    with client(args) as api:
        done = api_call(lambda: api.request("DELETE", f"/v1/audit-policies/{args.policy_id}") or True)
    if done is None:
        return 1
    print(f"deleted audit policy {args.policy_id}")
    return 0
