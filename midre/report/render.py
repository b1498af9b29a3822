"""Rendering a :class:`~midre.report.model.Report`: one Jinja2 template for ``report.html`` and the dashboard.

``templates/_report_body.html`` is the report itself (warnings, leakage, verdicts, recommendation and
frontier, results, judges, query curves, pictures, feature space, settings); ``templates/report.html``
wraps it into a self-contained page with its pictures embedded. The service's dashboard includes the
same body in its own page (:data:`TEMPLATES` on its template path, :func:`template_globals` in its
environment), passing where its pictures are. Jinja2 is imported only when a report is rendered, so
``midre`` imports without it.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midre.report.model import Report, Stat
from midre.vocabulary import VOCABULARY

#: The folder of the report's templates.
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Columns of the results table, in the order of the paper's Table 3.
COLUMNS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval", "queries")
#: Digits shown per column (percentages 2, distances 1, query counts 0).
DIGITS = {"knn_dist": 1, "delta_eval": 1, "queries": 0}


def stat(value: Any, digits: int = 2) -> str:
    """A figure for a table cell: ``mean ± std`` over seeds, a bare number as it is, ``–`` when absent."""
    parsed = Stat.parse(value)
    return "–" if parsed is None else parsed.text(digits)


def delta(value: Any) -> str:
    """Δ for display: "–" when undefined, "OP" / "no gain" as they are, else two decimals."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if math.isfinite(value) else "–"


def column_label(name: str) -> str:
    """``Acc ↑``, ``AttAcc top-1 ↓``: the vocabulary's label and the better direction."""
    entry = VOCABULARY.get(name)
    if entry is None:
        return name
    return f"{entry.label} {'↑' if entry.higher_is_better else '↓'}" if entry.higher_is_better is not None \
        else entry.label


def defense_name(defense: Any) -> str:
    """``nodef`` -> ``NoDef``, ``midre`` -> ``MIDRE``, others as they are."""
    return {"nodef": "NoDef", "midre": "MIDRE"}.get(str(defense).lower(), str(defense))


def setting(value: Any) -> str:
    """A setting as people write it: integers without decimals, lists comma-separated, objects as JSON."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "–"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(setting(v) for v in value) or "–"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def seconds(value: Any) -> str:
    """``12.3 s`` / ``4.1 min`` / ``1.2 h``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s"


def template_globals() -> dict[str, Callable[..., str] | tuple[str, ...] | dict[str, int]]:
    """The helpers ``_report_body.html`` calls (a dashboard adds these to its environment)."""
    return {"stat": stat, "delta": delta, "column_label": column_label, "defense_name": defense_name,
            "setting": setting, "seconds": seconds, "COLUMNS": COLUMNS, "DIGITS": DIGITS}


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(template_globals())
    return env


def render_html(report: Report | dict[str, Any], images: dict[str, bytes]) -> str:
    """The self-contained ``report.html`` of ``report`` (a :class:`Report` or its JSON form), its pictures
    (PNG bytes by file name) embedded."""
    if isinstance(report, dict):
        report = Report.from_dict(report)
    embedded = {name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in images.items()}

    def image_src(file: str) -> str:
        return embedded.get(file, file)

    return _environment().get_template("report.html").render(r=report, hl=2, image_src=image_src, prefix="r")


__all__ = ["COLUMNS", "TEMPLATES", "column_label", "delta", "render_html", "setting", "stat", "template_globals"]
