"""The privacy-utility report: ``report.json`` (a typed, schema-versioned :class:`Report`) + ``report.html``.

The JSON holds everything needed to re-draw the HTML: dataset, models, defenses, attack settings,
every metric as ``{"mean", "std", "runs", "n"}`` over seeds, the per-run records, seeds and timings.
Accuracies and attack accuracies are in percent (as in the paper's tables); distances are in the
evaluation model's (KNN, delta_eval) or target's (feature space) feature units.

The report opens with the warnings that limit what it can say (:func:`report_warnings`), one leakage
statement per attack against chance and the judges' accuracy on real images
(:func:`leakage_statements`), and one plain-language verdict per attack and defense, saying honestly
whether the defense lowered the attack's success beyond the seed-to-seed spread. When a panel of
judges scored the runs (:class:`midre.evaluation.JudgePanel`), AttAcc is the pooled figure (the mean of
the judges') and the report adds the judges, each judge's AttAcc, their agreement and the
double-check share.

Modules: :mod:`~midre.report.aggregate` (runs -> rows and verdicts), :mod:`~midre.report.model` (the
typed report), :mod:`~midre.report.build` (the one builder and writer), :mod:`~midre.report.render`
(the one template, also used by the service's dashboard), :mod:`~midre.report.plots` and
:mod:`~midre.report.frontier` (pictures), :mod:`~midre.report.verdicts` (leakage and warnings).
"""

from __future__ import annotations

from midre.report.aggregate import METRIC_INFO, METRICS, PANEL_METRICS, aggregate_runs, verdict
from midre.report.build import read_report, write_report
from midre.report.model import SCHEMA_VERSION, Report
from midre.report.render import delta as format_delta
from midre.report.render import render_html
from midre.report.verdicts import leakage_statements, report_warnings

__all__ = ["METRICS", "METRIC_INFO", "PANEL_METRICS", "SCHEMA_VERSION", "Report", "aggregate_runs", "format_delta",
           "leakage_statements", "read_report", "render_html", "report_warnings", "verdict", "write_report"]
