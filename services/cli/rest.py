"""What every REST client command shares: the ``--url`` / ``--api-key`` options, the client, one-line
error reports, JSON arguments and plain-text tables.

Nothing here imports more than the standard library at load time; :class:`services.client.Client`
(httpx) is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def connection_options() -> argparse.ArgumentParser:
    """A parent parser with ``--url`` and ``--api-key`` (defaults from ``$MIDRE_URL`` / ``$MIDRE_API_KEY``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("MIDRE_URL", "http://127.0.0.1:8000"),
                        help="service URL (default $MIDRE_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=os.environ.get("MIDRE_API_KEY"),
                        help="API key (default $MIDRE_API_KEY)")
    return common


def quiet_http_logs() -> None:
    """One log line per poll would drown the progress bar; keep httpx's to warnings."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def client(args: argparse.Namespace) -> Any:
    """The REST client for ``args.url`` and ``args.api_key`` (use it as a context manager)."""
    from services.client import Client

    quiet_http_logs()
    return Client(args.url, args.api_key)


def problem_line(exc: Any) -> str:
    """One line for an error answer: status, title, stable code, detail, and the field errors the detail left out.

    The gateway's validation detail already lists the first field errors ("spec.x: bad"), so they are
    added only when the detail does not contain them: each message is printed once.
    """
    problem = exc.problem
    title = problem.get("title") or "error"
    code = problem.get("code")
    detail = problem.get("detail") or ""
    text = f"{exc.status} {title}" + (f" ({code})" if code else "")
    if detail and detail != title:
        text += f": {detail}"
    extra = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors", [])
             if f"{e.get('field')}: {e.get('message')}" not in detail]
    return text + ("; " + "; ".join(extra) if extra else "")


def api_call(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; an error answer or an unreachable service becomes one line on stderr and ``None``.

    Callers turn ``None`` into exit status 1. No traceback: the user can act on the line (start the
    service, fix the URL or key, fix the field).
    """
    from services.client import ApiError, ServiceUnreachable

    try:
        return fn()
    except ApiError as exc:
        print(f"error: {problem_line(exc)}", file=sys.stderr)
    except ServiceUnreachable as exc:
        print(f"error: {exc}; start it with `midre serve` (or set --url / MIDRE_URL)", file=sys.stderr)
    return None


def load_json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from a file path, ``-`` (stdin) or the JSON itself; ValueError names ``what``."""
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip().startswith("{"):
        raw = text
    else:
        raw = Path(text).read_text()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{what}: must be a JSON object")
    return value


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns, two spaces apart (no third-party table library in the CLI)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def when(stamp: str | None) -> str:
    """``2026-11-30T11:07:00.123+00:00`` -> ``2026-11-30 11:07:00`` (UTC, seconds)."""
    return (stamp or "").replace("T", " ")[:19]


def print_list(items: list[dict[str, Any]] | None, args: argparse.Namespace, what: str,
               headers: list[str], row: Callable[[dict[str, Any]], list[str]]) -> int:
    """The shared tail of the ``list`` commands: exit 1 after an error already printed, JSON with
    ``--json``, a line when there is nothing, else a table of ``row(item)``."""
    if items is None:
        return 1
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(f"no {what}")
    else:
        print(table([row(item) for item in items], headers))
    return 0


def print_created(item: dict[str, Any] | None, args: argparse.Namespace,
                  describe: Callable[[dict[str, Any]], tuple[str, str]]) -> int:
    """The shared tail of the commands that create something: exit 1 after an error already printed;
    the whole answer as JSON with ``--json``; else ``describe(item)``'s line for a person, then its
    second part alone on the last line (the id or the secret a script reads with ``tail -n 1``)."""
    if item is None:
        return 1
    if getattr(args, "json", False):
        print(json.dumps(item, indent=2))
        return 0
    line, last = describe(item)
    print(line)
    print(last)
    return 0
