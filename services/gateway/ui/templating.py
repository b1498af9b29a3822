"""The Jinja2 environment of the dashboard: templates and static files shipped in this package."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi.templating import Jinja2Templates

from midre.report.render import TEMPLATES as REPORT_TEMPLATES
from midre.report.render import template_globals
from services.db.types import utcnow

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def age(moment: dt.datetime | None) -> str:
    """``12 s`` / ``5 min`` / ``3 h`` / ``2 d`` since ``moment``."""
    if moment is None:
        return "–"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    seconds = max(0, int((utcnow() - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def when(moment: dt.datetime | None) -> str:
    """``2026-11-30 14:08:18 UTC``."""
    if moment is None:
        return "–"
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def size(value: int | None) -> str:
    """Bytes for people: ``1.2 MB``."""
    if value is None:
        return "–"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{value} B"


def pretty(value: Any) -> str:
    """Indented JSON (escaped by the template like any text)."""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def number(value: Any, digits: int = 2) -> str:
    """A metric for a table cell."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else str(value)
    return f"{value:.{digits}f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # the dashboard's pages, then the library's report template (the one report.html is made from)
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(TEMPLATES)),
                                    jinja2.FileSystemLoader(str(REPORT_TEMPLATES))]),
        autoescape=True,  # every value is HTML-escaped unless a template says otherwise (none does)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=age, when=when, size=size, pretty=pretty, number=number)
    env.globals.update(template_globals())
    return env


templates = Jinja2Templates(env=_environment())
