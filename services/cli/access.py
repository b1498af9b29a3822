"""``midre keys ...``, ``midre webhooks ...``, ``midre integrations mlflow ...``: who may call the service
and where it reports, over REST (every one needs an ``admin`` key).

Secrets the service shows once (a new key, a webhook's signing secret) are printed alone on the last
line, so a script keeps them with ``tail -n 1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.cli.rest import api_call, client, connection_options, print_created, print_list, when

#: Scopes a key can carry (services.ops.keys.Scope).
SCOPES = ("admin", "jobs", "predict", "review")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre keys ACTION``, ``midre webhooks ACTION`` and ``midre integrations mlflow ACTION``."""
    common = connection_options()
    _register_keys(subparsers, common)
    _register_webhooks(subparsers, common)
    _register_integrations(subparsers, common)


def _register_keys(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser("keys", help="mint, list and revoke API keys over REST (admin key)").add_subparsers(
        dest="keys_command", metavar="ACTION"
    )
    p = keys.add_parser("create", parents=[common],
                        help="mint a scoped key; prints the secret alone on the last line (shown once)")
    p.add_argument("--name", required=True, help="what the key is for, e.g. the consumer's name")
    p.add_argument("--scope", dest="scopes", action="append", choices=SCOPES, required=True,
                   help="admin, jobs or predict (repeatable), or review alone (a person reviewing reconstructions)")
    p.add_argument("--model", dest="models", action="append", metavar="MODEL",
                   help="a model a predict-only key may use (repeatable; default: every model of the tenant)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (the secret included)")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser("list", parents=[common], help="list the tenant's keys (never their secrets)")
    p.add_argument("--json", action="store_true", help="print the keys as JSON")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key")
    p.add_argument("key_id", metavar="KEY_ID", help="the key's public id (the ID column of `midre keys list`)")
    p.set_defaults(func=cmd_keys_revoke)


def _register_webhooks(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    hooks = subparsers.add_parser("webhooks", help="register, list and delete signed webhooks over REST "
                                  "(admin key)").add_subparsers(dest="webhooks_command", metavar="ACTION")
    p = hooks.add_parser("create", parents=[common],
                         help="register a URL; prints its signing secret alone on the last line (shown once)")
    # dest "target": "url" is the service's own --url
    p.add_argument("target", metavar="URL", help="http(s) URL that receives a POST per event")
    p.add_argument("--event", dest="events", action="append", required=True, metavar="TYPE",
                   help="event type to receive (repeatable): job.succeeded, job.failed, job.cancelled, "
                        "model.evaluated, audit.completed, audit.regressed")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (the secret included)")
    p.set_defaults(func=cmd_webhooks_create)
    p = hooks.add_parser("list", parents=[common], help="list the tenant's webhooks (never their secrets)")
    p.add_argument("--json", action="store_true", help="print the webhooks as JSON")
    p.set_defaults(func=cmd_webhooks_list)
    p = hooks.add_parser("delete", parents=[common], help="delete a webhook and its pending deliveries")
    p.add_argument("webhook_id", metavar="WEBHOOK_ID")
    p.set_defaults(func=cmd_webhooks_delete)


def _register_integrations(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    integrations = subparsers.add_parser("integrations", help="hand results to other systems over REST "
                                         "(admin key)").add_subparsers(dest="integration", metavar="INTEGRATION")
    mlflow = integrations.add_parser("mlflow", help="the tenant's MLflow tracking server").add_subparsers(
        dest="mlflow_command", metavar="ACTION"
    )
    p = mlflow.add_parser("set", parents=[common], help="log the tenant's succeeded jobs to this MLflow server "
                          "(replaces the configuration, credentials included)")
    p.add_argument("--tracking-uri", required=True, help="http(s) URL of the MLflow tracking server")
    p.add_argument("--experiment", required=True, help="experiment name (created on the first hand-off)")
    p.add_argument("--registered-model", help="registered model that gets a version per model-producing job")
    p.add_argument("--token", help="bearer token ('-': read it from stdin, keeping it out of the shell history)")
    p.add_argument("--username", help="HTTP basic auth user, with --password")
    p.add_argument("--password", help="HTTP basic auth password ('-': read it from stdin)")
    p.add_argument("--json", action="store_true", help="print the configuration as JSON")
    p.set_defaults(func=cmd_mlflow_set)
    p = mlflow.add_parser("show", parents=[common], help="print the configuration (never the credentials)")
    p.add_argument("--json", action="store_true", help="print the configuration as JSON")
    p.set_defaults(func=cmd_mlflow_show)
    p = mlflow.add_parser("delete", parents=[common], help="stop the MLflow hand-off and forget its credentials")
    p.set_defaults(func=cmd_mlflow_delete)


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Mint a key; prints its id and scopes, then the secret alone on the last line."""
    with client(args) as api:
        key = api_call(lambda: api.create_key(args.name, args.scopes, args.models))
    return print_created(key, args, lambda k: (
        f"created key {k['id']} ({', '.join(k['scopes'])}"
        + (f"; models {', '.join(k['models'])}" if k.get("models") else "")
        + "); the secret below is shown only once:", k["key"]))


def cmd_keys_list(args: argparse.Namespace) -> int:
    """A table of keys (id, name, scopes, models, created, revoked), newest first."""
    with client(args) as api:
        keys = api_call(api.keys)
    return print_list(keys, args, "keys", ["ID", "NAME", "SCOPES", "MODELS", "CREATED", "REVOKED"], lambda k: [
        k["id"], k.get("name") or "", ",".join(k["scopes"]), ",".join(k.get("models") or []) or "all",
        when(k["created_at"]), when(k.get("revoked_at"))])


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key (its usage records stay)."""
    with client(args) as api:
        done = api_call(lambda: api.revoke_key(args.key_id) or True)
    if done is None:
        return 1
    print(f"revoked key {args.key_id}")
    return 0


def cmd_webhooks_create(args: argparse.Namespace) -> int:
    """Register a webhook; prints its id and events, then the signing secret alone on the last line."""
    with client(args) as api:
        hook = api_call(lambda: api.create_webhook(args.target, args.events))
    return print_created(hook, args, lambda h: (
        f"created webhook {h['id']} for {', '.join(h['events'])} -> {h['url']}; its signing secret below is "
        "shown only once:", h["secret"]))


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    """A table of webhooks (id, URL, events, created), newest first."""
    with client(args) as api:
        hooks = api_call(api.webhooks)
    return print_list(hooks, args, "webhooks", ["ID", "URL", "EVENTS", "CREATED"], lambda h: [
        h["id"], h["url"], ",".join(h["events"]), when(h["created_at"])])


def cmd_webhooks_delete(args: argparse.Namespace) -> int:
    """Delete a webhook."""
    with client(args) as api:
        done = api_call(lambda: api.delete_webhook(args.webhook_id) or True)
    if done is None:
        return 1
    print(f"deleted webhook {args.webhook_id}")
    return 0


def _secret(value: str | None) -> str | None:
    """A credential option: ``-`` reads it from the first line of stdin."""
    return sys.stdin.readline().rstrip("\r\n") if value == "-" else value


def _mlflow_text(view: dict[str, Any]) -> str:
    model = f", registered model {view['registered_model']!r} (alias {view['alias']!r})" \
        if view.get("registered_model") else ""
    return (f"mlflow: {view['tracking_uri']}, experiment {view['experiment']!r}{model}, "
            f"credentials {view['auth']}, updated {when(view['updated_at'])}")


def cmd_mlflow_set(args: argparse.Namespace) -> int:
    """Set (replace) the tenant's MLflow server; prints the stored configuration."""
    fields = {"tracking_uri": args.tracking_uri, "experiment": args.experiment,
              "registered_model": args.registered_model, "token": _secret(args.token),
              "username": args.username, "password": _secret(args.password)}
    with client(args) as api:
        view = api_call(lambda: api.set_mlflow(**fields))
    if view is None:
        return 1
    print(json.dumps(view, indent=2) if args.json else _mlflow_text(view))
    return 0


def cmd_mlflow_show(args: argparse.Namespace) -> int:
    """Print the tenant's MLflow configuration (exit 1 with a 404 line when none is set)."""
    with client(args) as api:
        view = api_call(api.mlflow)
    if view is None:
        return 1
    print(json.dumps(view, indent=2) if args.json else _mlflow_text(view))
    return 0


def cmd_mlflow_delete(args: argparse.Namespace) -> int:
    """Delete the tenant's MLflow configuration."""
    with client(args) as api:
        done = api_call(lambda: api.delete_mlflow() or True)
    if done is None:
        return 1
    print("deleted the MLflow integration")
    return 0
