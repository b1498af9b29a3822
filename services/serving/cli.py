"""``midre predict --model JOB_ID IMAGE...``: predict over REST with :class:`services.client.Client`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``predict`` to the ``midre`` parser."""
    p = subparsers.add_parser("predict", help="predict identities of images with a served model (REST)")
    p.add_argument("--model", required=True, metavar="JOB_ID", help="job id of the trained model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, help="identities to list per image (the model's policy may cap it)")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.add_argument("--url", default=os.environ.get("MIDRE_URL", "http://127.0.0.1:8000"),
                   help="service URL (default $MIDRE_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("MIDRE_API_KEY"), help="API key (default $MIDRE_API_KEY)")
    p.set_defaults(func=cmd_predict)


def make_client(args: argparse.Namespace) -> Any:
    """The REST client (a seam for tests)."""
    import logging

    from services.client import Client

    logging.getLogger("httpx").setLevel(logging.WARNING)
    return Client(args.url, args.api_key)


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
    from services.cli import _api_call

    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        print(f"error: no such file: {missing[0]}", file=sys.stderr)
        return 2
    with make_client(args) as client:
        answer = _api_call(lambda: client.predict(args.model, args.images, top_k=args.top_k))
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2) if args.json else format_answer(answer))
    return 0
