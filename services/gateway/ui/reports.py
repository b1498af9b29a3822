"""What the report pages show, computed from a study's ``report.json`` and its artifact list.

Nothing here recomputes a metric: the numbers are the ones the study wrote (``midre.report``); this
module only picks them out for the templates (rows of the results table, the plots that exist,
the optional sections of newer report kinds, the rows of a two-study comparison) and draws a
frontier as inline SVG when a report carries frontier points but no picture of them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from midre.report import METRIC_INFO, format_delta
from services.db.models import Artifact, Job
from services.storage import LocalStore

#: Job kinds whose outputs include a privacy-utility report.
STUDY_KINDS = ("pipeline", "attack_eval", "sweep", "harden")
#: Optional top-level sections of a report, shown when present (newer study kinds write them).
SECTIONS = (
    ("recommendation", "Recommendation"),
    ("warnings", "Warnings"),
    ("judges", "Judges"),
    ("leakage", "Leakage"),
    ("frontier", "Privacy-utility frontier"),
)
#: Columns of the results table, in the order of the paper's Table 3.
COLUMNS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval", "queries")


@dataclass
class ReportView:
    """One study's report, ready for a template."""

    job_id: str
    report: dict[str, Any]
    plots: list[tuple[str, str]] = field(default_factory=list)  # (title, artifact name)
    has_html: bool = False

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return [v for v in self.report.get("verdicts") or [] if isinstance(v, dict)]

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for r in self.report.get("results") or [] if isinstance(r, dict)]

    @property
    def leakage(self) -> list[dict[str, Any]]:
        """Per-attack leakage statements (against chance and the judges' accuracy on real images)."""
        return [item for item in self.report.get("leakage") or [] if isinstance(item, dict)]

    @property
    def judges(self) -> list[dict[str, Any]]:
        """The evaluation models that scored the reconstructions (``arch``, held-out ``accuracy``)."""
        return [j for j in self.report.get("judges") or [] if isinstance(j, dict)]

    @property
    def sections(self) -> list[tuple[str, str, Any]]:
        """``(key, title, value)`` of the optional sections this report has."""
        return [(key, title, self.report[key]) for key, title in SECTIONS if self.report.get(key) not in (None, [], {})]


def column_label(name: str) -> str:
    """``Acc ↑``, ``AttAcc top-1 ↓``...: the vocabulary's label and the better direction."""
    info = METRIC_INFO.get(name)
    if info is None:
        return name
    arrow = "↑" if info["higher_is_better"] else "↓"
    return f"{info['label']} {arrow}"


def fmt_stat(stat: Any, digits: int = 2) -> str:
    """``mean ± std`` over seeds (``mean`` alone for one run); a bare number as it is; ``–`` when absent."""
    if isinstance(stat, int | float) and not isinstance(stat, bool):
        return f"{stat:.{digits}f}" if math.isfinite(stat) else "–"
    if not isinstance(stat, dict) or not isinstance(stat.get("mean"), int | float):
        return "–"
    if (stat.get("n") or 1) > 1 and isinstance(stat.get("std"), int | float):
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def fmt_delta(value: Any) -> str:
    """Δ as the report's HTML shows it."""
    return format_delta(value)


def load_report(session: Session, store: LocalStore, job: Job) -> ReportView | None:
    """The report of ``job`` (None when it has no ``report.json``)."""
    artifacts = {a.name: a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id))}
    art = artifacts.get("report.json")
    if art is None:
        return None
    try:
        with store.open(art.sha256) as fh:
            report = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(report, dict):
        return None
    listed = (report.get("artifacts") or {}).get("plots") or sorted(n for n in artifacts if n.endswith(".png"))
    plots = []
    for name in listed:
        found = name if name in artifacts else next((n for n in artifacts if n.endswith("/" + name)), None)
        if found is not None:
            plots.append((_plot_title(name), found))
    order = {"summary": 0, "tradeoff": 1, "frontier": 2}
    plots.sort(key=lambda p: (order.get(p[1].rsplit("/", 1)[-1].removesuffix(".png"), 3), p[1]))
    return ReportView(job.id, report, plots, "report.html" in artifacts)


def _plot_title(name: str) -> str:
    stem = name.rsplit("/", 1)[-1].removesuffix(".png")
    if stem.startswith("grid_"):
        return f"Reconstructions next to private samples: {stem[5:]}"
    if stem.startswith("features_"):
        return f"Feature space: {stem[9:]}"
    return {"summary": "Summary", "tradeoff": "Privacy-utility trade-off", "frontier": "Frontier"}.get(stem, stem)


def _number(point: dict[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = point.get(name)
        if isinstance(value, dict):
            value = value.get("mean")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def frontier_svg_points(frontier: Any, width: int = 480, height: int = 300) -> dict[str, Any] | None:
    """Screen coordinates of a frontier's points (Acc on x, AttAcc on y), or None when it has none.

    Accepts a list of points or ``{"points": [...]}``; each point names its accuracy (``acc``) and its
    attack accuracy (``attacc_top1`` / ``attacc``) as numbers or ``{"mean": ...}``.
    """
    points = frontier.get("points") if isinstance(frontier, dict) else frontier
    if not isinstance(points, list):
        return None
    xy = []
    for p in points:
        if not isinstance(p, dict):
            continue
        x, y = _number(p, ("acc", "accuracy")), _number(p, ("attacc_top1", "attacc", "attack_accuracy"))
        if x is not None and y is not None:
            label = str(p.get("label") or p.get("defense") or p.get("name") or "")
            xy.append((x, y, label, bool(p.get("on_frontier", p.get("pareto", False)))))
    if not xy:
        return None
    pad = 40
    x0, x1 = min(p[0] for p in xy), max(p[0] for p in xy)
    y0, y1 = min(p[1] for p in xy), max(p[1] for p in xy)
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)
    out = [{"x": round(pad + (x - x0) * sx, 1), "y": round(height - pad - (y - y0) * sy, 1), "label": label,
            "acc": x, "attacc": y, "best": best} for x, y, label, best in xy]
    return {"width": width, "height": height, "pad": pad, "points": out,
            "x_range": (x0, x1), "y_range": (y0, y1)}


def compare_rows(a: ReportView, b: ReportView) -> list[dict[str, Any]]:
    """One row per (attack, defense) of either study: Acc and AttAcc top-1 of each and B - A."""
    def index(view: ReportView) -> dict[tuple[str, str], dict[str, Any]]:
        return {(str(r.get("attack")), str(r.get("defense"))): r.get("metrics") or {} for r in view.results}

    ia, ib = index(a), index(b)
    rows = []
    for key in list(dict.fromkeys([*ia, *ib])):
        row: dict[str, Any] = {"attack": key[0], "defense": key[1]}
        for metric in ("acc", "attacc_top1"):
            va, vb = (ia.get(key) or {}).get(metric), (ib.get(key) or {}).get(metric)
            row[metric] = (fmt_stat(va), fmt_stat(vb))
            ma = va.get("mean") if isinstance(va, dict) else None
            mb = vb.get("mean") if isinstance(vb, dict) else None
            row[f"{metric}_diff"] = f"{mb - ma:+.2f}" if isinstance(ma, int | float) and isinstance(mb, int | float) \
                else "–"
        rows.append(row)
    return rows
