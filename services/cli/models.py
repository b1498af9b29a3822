"""``midre datasets ...``, ``midre models ...`` and ``midre predict``: data sets in, models out, over REST."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.cli.rest import (
    api_call,
    client,
    connection_options,
    load_json_object,
    print_created,
    print_list,
    when,
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre datasets ACTION``, ``midre models ACTION`` and ``midre predict``."""
    common = connection_options()
    _register_datasets(subparsers, common)
    _register_models(subparsers, common)
    _register_predict(subparsers, common)


def _register_datasets(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    datasets = subparsers.add_parser("datasets", help="upload and list datasets over REST").add_subparsers(
        dest="datasets_command", metavar="ACTION"
    )
    p = datasets.add_parser("upload", parents=[common],
                            help="upload an ImageFolder archive (.zip/.tar[.gz]); prints the dataset id last")
    p.add_argument("file", help="archive with one folder of images per identity")
    p.add_argument("--name", help="dataset name (default: the file name)")
    p.set_defaults(func=cmd_datasets_upload)
    p = datasets.add_parser("list", parents=[common], help="list datasets, newest first")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print the datasets as JSON")
    p.set_defaults(func=cmd_datasets_list)


def _register_models(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    models = subparsers.add_parser("models", help="list, govern and export trained models over REST").add_subparsers(
        dest="models_command", metavar="ACTION"
    )
    p = models.add_parser("list", parents=[common], help="list servable models, newest first")
    p.add_argument("--json", action="store_true", help="print the models as JSON")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("policy", parents=[common],
                          help="show a model's output policy and budget, or change the fields given")
    p.add_argument("model", metavar="MODEL", help="job id of the trained model")
    p.add_argument("--policy", choices=("full", "top-k", "label-only", "rounded", "shield"),
                   help="what answers reveal (shield: the serving-time defense, docs/serving.md)")
    p.add_argument("--top-k", type=int, help="most identities a top-k / rounded / shield answer lists")
    p.add_argument("--strength", type=float, help="strength of the shield policy, in [0, 1) (default 0.8)")
    p.add_argument("--decimals", type=int, help="rounding of a rounded answer")
    p.add_argument("--budget", type=_budget, metavar="N|unlimited", default=argparse.SUPPRESS,
                   help="most images one API key may submit ('unlimited' removes the budget)")
    p.add_argument("--reset-usage", action="store_true", help="zero every key's query count")
    p.add_argument("--json", action="store_true", help="print the policy as JSON")
    p.set_defaults(func=cmd_models_policy)
    p = models.add_parser("export", parents=[common], help="download the model as ONNX or TorchScript")
    p.add_argument("model", metavar="MODEL", help="job id of the trained model")
    p.add_argument("--out", required=True, help="file to write (.onnx, or .pt/.ts for TorchScript)")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from the --out extension (.pt/.ts/.torchscript: torchscript; else onnx)")
    p.set_defaults(func=cmd_models_export)
    p = models.add_parser("upload", parents=[common], help="upload a model trained elsewhere (safetensors + "
                          "model card); prints the model id alone on the last line")
    p.add_argument("file", metavar="FILE", help="the weights: a safetensors state dict of the card's architecture")
    p.add_argument("--card", required=True, metavar="CARD.json",
                   help="JSON file (or '-', or the JSON itself): arch, num_classes or class_names, image_size, "
                        "channels, optional normalization; a midre model.json is accepted as it is")
    p.add_argument("--name", help="a name for the model (default: the file name)")
    p.add_argument("--json", action="store_true", help="print the model card as JSON")
    p.set_defaults(func=cmd_models_upload)


def _register_predict(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("predict", parents=[common],
                              help="predict identities of images with a served model (REST)")
    p.add_argument("--model", required=True, metavar="JOB_ID", help="job id of the trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, help="identities to list per image (the model's policy may cap it)")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.set_defaults(func=cmd_predict)


def _budget(text: str) -> int | None:
    """``--budget``: a count of images, or ``unlimited`` / ``none`` for no budget."""
    if text.lower() in ("unlimited", "none"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'unlimited'")
    return value


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    """Upload an archive; prints its validation summary, then its id as the last word."""
    if not os.path.isfile(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    with client(args) as api:
        dataset = api_call(lambda: api.upload_dataset(args.file, args.name))
    if dataset is None:
        return 1
    summary = dataset.get("summary") or {}
    print(json.dumps(summary, indent=2))
    print(f"uploaded dataset {dataset['name']!r} ({summary.get('identities', '?')} identities, "
          f"{summary.get('images', '?')} images): {dataset['id']}")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    """A table of datasets (id, name, source, identities, images, size, created)."""
    with client(args) as api:
        datasets = api_call(lambda: api.datasets(args.limit or None))
    headers = ["ID", "NAME", "SOURCE", "IDENTITIES", "IMAGES", "SIZE", "CREATED"]
    return print_list(datasets, args, "datasets", headers, lambda d: [
        d["id"], d["name"], d["source_type"], str((d.get("summary") or {}).get("identities", "")),
        str((d.get("summary") or {}).get("images", "")),
        "" if d.get("size_bytes") is None else f"{d['size_bytes'] / 1e6:.1f} MB", when(d["created_at"])])


def cmd_models_list(args: argparse.Namespace) -> int:
    """A table of servable models (job id, arch, classes, defense, policy, budget, Acc)."""
    with client(args) as api:
        models = api_call(api.models)

    def row(m: dict[str, Any]) -> list[str]:
        defense = (m.get("defense") or {}).get("name", "") if isinstance(m.get("defense"), dict) else ""
        acc = m.get("metrics", {}).get("acc")
        return [m["job_id"], m["kind"], m.get("arch") or "", str(m.get("num_classes") or ""), defense,
                m["policy"]["name"], "unlimited" if m.get("budget") is None else str(m["budget"]),
                "" if acc is None else f"{acc:.1f}", when(m["created_at"])]

    headers = ["MODEL", "KIND", "ARCH", "CLASSES", "DEFENSE", "POLICY", "BUDGET", "ACC %", "CREATED"]
    return print_list(models, args, "models", headers, row)


def _policy_text(view: dict[str, Any]) -> str:
    lines = [f"model {view['job_id']}: policy {view['policy']}"
             + (f", top_k {view['top_k']}" if view.get("top_k") is not None else "")
             + (f", decimals {view['decimals']}" if view.get("decimals") is not None else "")
             + (f", strength {view['strength']}" if view.get("strength") is not None else "")
             + f", budget {'unlimited' if view.get('budget') is None else view['budget']}"]
    for usage in view.get("usage") or []:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in usage.items()))
    return "\n".join(lines)


def cmd_models_policy(args: argparse.Namespace) -> int:
    """Show the policy, or ``PATCH`` only the options given (the rest keep their values)."""
    changes: dict[str, Any] = {}
    for field in ("policy", "top_k", "decimals", "strength"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    if "budget" in vars(args):  # given (SUPPRESS default): a count, or None for unlimited
        changes["budget"] = args.budget
    if args.reset_usage:
        changes["reset_usage"] = True
    with client(args) as api:
        view = api_call(lambda: api.update_policy(args.model, **changes) if changes else api.policy(args.model))
    if view is None:
        return 1
    print(json.dumps(view, indent=2) if args.json else _policy_text(view))
    return 0


def _export_format(out: str, given: str | None) -> str:
    if given:
        return given
    return "torchscript" if Path(out).suffix.lower() in (".pt", ".ts", ".torchscript", ".pth") else "onnx"


def cmd_models_export(args: argparse.Namespace) -> int:
    """Download the exported model to ``--out``; prints its path."""
    fmt = _export_format(args.out, args.format)
    Path(args.out).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    with client(args) as api:
        path = api_call(lambda: api.export(args.model, args.out, fmt))
    if path is None:
        return 1
    print(f"exported model {args.model} as {fmt} ({path.stat().st_size / 1e6:.1f} MB): {path}")
    return 0


def cmd_models_upload(args: argparse.Namespace) -> int:
    """Upload weights and their card; prints what the service accepted, then the model id alone."""
    if not os.path.isfile(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    card = load_json_object(args.card, "--card")
    with client(args) as api:
        model = api_call(lambda: api.upload_model(args.file, card, args.name))
    return print_created(model, args, lambda m: (
        f"uploaded model {m['card'].get('origin', {}).get('name', '')!r} ({m.get('arch')}, "
        f"{m.get('num_classes')} classes):", m["id"]))


def format_answer(answer: dict[str, Any]) -> str:
    """One line per image: ``input -> identity (p)`` plus the rest of the top list."""
    lines = [f"policy: {answer['policy']['name']}"]
    for pred in answer["predictions"]:
        top = pred.get("top") or []
        shown = ", ".join(f"{t['identity']} {t['probability']:.4g}" for t in top)
        lines.append(f"{pred['input']}: {pred['identity']}" + (f"  [{shown}]" if shown else ""))
    usage = answer.get("usage") or {}
    if usage.get("budget") is not None:
        lines.append(f"queries: {usage['queries']} of {usage['budget']}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the predictions; exit 1 with the problem's detail on an error answer."""
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        print(f"error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    with client(args) as api:
        answer = api_call(lambda: api.predict(args.model, args.images, top_k=args.top_k))
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2) if args.json else format_answer(answer))
    return 0
