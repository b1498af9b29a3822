"""The report pages' data: a job's ``report.json`` read as a typed :class:`midre.report.Report`.

Nothing here recomputes or re-renders a figure: the page includes the library's own report template
(``_report_body.html`` from :mod:`midre.report.render`), the one ``report.html`` is made from, with
the pictures served as the job's artifacts. This module loads the report and lines two of them up
for the comparison page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from midre.report.model import Report
from midre.report.render import stat
from services.db.models import Artifact, Job
from services.storage import LocalStore


@dataclass
class ReportView:
    """One job's report, ready for the template."""

    job_id: str
    report: Report
    has_html: bool = False

    def image_src(self, file: str) -> str:
        """Where the page loads one of the report's pictures: the job's artifact of that name."""
        return f"/ui/jobs/{self.job_id}/artifacts/{quote(file)}"


def load_report(session: Session, store: LocalStore, job: Job) -> ReportView | None:
    """The report of ``job`` (None when it has no readable ``report.json``); only pictures the job stored."""
    artifacts = set(session.scalars(select(Artifact.name).where(Artifact.job_id == job.id)))
    if "report.json" not in artifacts:
        return None
    row = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == "report.json"))
    try:
        with store.open(row.sha256) as fh:
            data = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    report = Report.from_dict(data)
    report.plots = [p for p in report.plots if p.file in artifacts]
    return ReportView(job.id, report, "report.html" in artifacts)


def compare_rows(a: ReportView, b: ReportView) -> list[dict[str, Any]]:
    """One row per (attack, defense) of either report: Acc and AttAcc top-1 of each, and B - A."""
    ia = {(r.attack, r.defense): r.metrics for r in a.report.results}
    ib = {(r.attack, r.defense): r.metrics for r in b.report.results}
    rows = []
    for key in list(dict.fromkeys([*ia, *ib])):
        row: dict[str, Any] = {"attack": key[0], "defense": key[1]}
        for metric in ("acc", "attacc_top1"):
            va, vb = (ia.get(key) or {}).get(metric), (ib.get(key) or {}).get(metric)
            row[metric] = (stat(va), stat(vb))
            row[f"{metric}_diff"] = f"{vb.mean - va.mean:+.2f}" if va is not None and vb is not None else "–"
        rows.append(row)
    return rows
