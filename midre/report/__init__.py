"""The privacy-utility report: ``report.json`` (schema-versioned) + a self-contained ``report.html``.

The JSON holds everything needed to re-draw the HTML: dataset, models, defenses, attack settings,
every metric as ``{"mean", "std", "runs", "n"}`` over seeds, the per-run records, seeds and timings.
Accuracies and attack accuracies are in percent (as in the paper's tables); distances are in the
evaluation model's (KNN, delta_eval) or target's (feature space) feature units.

The HTML embeds its plots as base64 PNGs (nothing external to load) and opens with the warnings
that limit what the report can say (:func:`midre.report.verdicts.report_warnings`), one leakage
statement per attack against chance and the judges' accuracy on real images
(:func:`midre.report.verdicts.leakage_statements`), and one plain-language verdict per attack and
defense, saying honestly whether the defense lowered the attack's success beyond the seed-to-seed
spread. When the runs were judged by a panel (:class:`midre.evaluation.JudgePanel`), AttAcc is the
pooled figure (the mean of the judges') and the report adds the judges, each judge's AttAcc, their
agreement and the double-check share.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from midre.evaluation.metrics import mean_std, summarize, tradeoff_delta
from midre.report.verdicts import (
    judge_spread,
    judges_disagree,
    leakage_statements,
    report_warnings,
    summarize_judges,
)
from midre.vocabulary import VOCABULARY

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
METRICS = ("acc", "attacc_top1", "attacc_top5", "knn_dist", "delta_eval", "queries")
#: Figures of a judge panel, aggregated like :data:`METRICS` when the runs carry them: agreement and
#: double-check share in percent, pixel std in ``[0, 1]`` pixel units.
PANEL_METRICS = ("agreement", "double_check", "pixel_std")
#: Label, direction and unit of each report metric, from the one vocabulary (:mod:`midre.vocabulary`).
METRIC_INFO = {
    name: {"label": VOCABULARY[name].label, "higher_is_better": VOCABULARY[name].higher_is_better,
           "unit": VOCABULARY[name].unit}
    for name in METRICS
}


def _label(defense: str) -> str:
    return {"nodef": "NoDef", "midre": "MIDRE"}.get(defense.lower(), defense)


def verdict(attack: str, defense: str, nodef_runs: dict[str, list[float]],
            def_runs: dict[str, list[float]]) -> dict[str, Any]:
    """Plain-language verdict of one defense against one attack, compared with NoDef.

    Seeds are paired (seed i of NoDef vs seed i of the defense); the AttAcc change is the mean ±
    std of the paired differences. "Helped" requires the drop to exceed one std of that difference;
    a single run has no spread to compare with and is reported as inconclusive.
    """
    a0, a1 = nodef_runs["attacc_top1"], def_runs["attacc_top1"]
    c0, c1 = nodef_runs["acc"], def_runs["acc"]
    n = min(len(a0), len(a1))
    drop_mean, drop_std = mean_std([a0[i] - a1[i] for i in range(n)])
    cost_mean, _ = mean_std([c0[i] - c1[i] for i in range(min(len(c0), len(c1)))])
    name = _label(defense)
    cost = (f"at a cost of {cost_mean:.1f} accuracy points" if cost_mean > 0
            else f"while gaining {-cost_mean:.1f} accuracy points" if cost_mean < 0
            else "at no accuracy cost")
    runs = f" ({n} run{'s' if n != 1 else ''})"
    if n < 2:  # one seed has no spread to compare the change with: do not call it either way
        status = "inconclusive"
        text = (f"{name} changed top-1 AttAcc of {attack} by {-drop_mean:+.1f} points {cost} in a single run; "
                f"run at least 2 seeds to tell this from seed-to-seed noise.")
    elif drop_mean > drop_std and drop_mean > 0:
        status = "helped"
        text = f"{name} lowered top-1 AttAcc of {attack} by {drop_mean:.1f}±{drop_std:.1f} points {cost}{runs}."
    elif drop_mean < -drop_std and drop_mean < 0:
        status = "hurt"
        text = (f"{name} did NOT help against {attack}: top-1 AttAcc rose by {-drop_mean:.1f}±{drop_std:.1f} "
                f"points ({cost}){runs}.")
    else:
        status = "no_effect"
        text = (f"{name} did not lower AttAcc for {attack} (difference {drop_mean:+.1f} points is within one "
                f"std, {drop_std:.1f}; {cost}){runs}.")
    return {"attack": attack, "defense": defense, "status": status, "text": text,
            "attacc_drop": {"mean": drop_mean, "std": drop_std, "n": n}, "acc_cost": cost_mean}


def aggregate_runs(runs: Sequence[dict[str, Any]], defenses: Sequence[str], attacks: Sequence[str],
                   baseline: str = "nodef") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Group per-run records by (attack, defense) into mean/std rows, Δ vs the baseline and verdicts.

    Each run record has ``attack``, ``defense``, ``seed`` and the metrics of :data:`METRICS`; records
    judged by a panel also carry ``judges`` (per-judge AttAcc) and :data:`PANEL_METRICS`, which
    become ``row["judges"]`` (per-judge mean/std) and more entries of ``row["metrics"]``.
    Returns ``(results, verdicts)``.
    """
    results, verdicts = [], []
    for attack in attacks:
        per_def: dict[str, dict[str, list[float]]] = {}
        for defense in defenses:
            sel = sorted((r for r in runs if r["attack"] == attack and r["defense"] == defense),
                         key=lambda r: r["seed"])
            if not sel:
                continue
            per_def[defense] = {m: [float(r[m]) for r in sel if r.get(m) is not None]
                                for m in METRICS + PANEL_METRICS}
            per_def[defense]["seeds"] = [r["seed"] for r in sel]
            per_def[defense]["judges"] = summarize_judges(sel)
        base = per_def.get(baseline)
        rows: dict[str, dict[str, Any]] = {}
        for defense, vals in per_def.items():
            metrics = {m: summarize(vals[m]) for m in METRICS + PANEL_METRICS if vals[m]}
            row: dict[str, Any] = {"attack": attack, "defense": defense, "seeds": vals["seeds"],
                                   "metrics": metrics, "tradeoff_delta": None}
            if vals["judges"]:
                row["judges"] = vals["judges"]
            if base is not None and defense != baseline and base["acc"] and vals["acc"]:
                row["tradeoff_delta"] = tradeoff_delta(mean_std(base["acc"])[0], mean_std(base["attacc_top1"])[0],
                                                       metrics["acc"]["mean"], metrics["attacc_top1"]["mean"])
                v = verdict(attack, defense, base, vals)
                row["verdict"] = v["text"]
                verdicts.append(v)
            results.append(row)
            rows[defense] = row
        for v in verdicts:
            if v["attack"] == attack and any(judges_disagree(rows[d]) for d in (baseline, v["defense"]) if d in rows):
                v["judges_disagree"] = True
                v["text"] += " The judges disagree by more than the seed spread here: see the warnings."
                rows[v["defense"]]["verdict"] = v["text"]
    return results, verdicts


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _fmt(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if not stat:
        return "–"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def format_delta(value: Any) -> str:
    """Δ for display: "–" when undefined, "OP" / "no gain" as they are, else two decimals."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if math.isfinite(value) else "–"


def _warnings_html(report: dict[str, Any]) -> list[str]:
    esc = html.escape
    warnings = report.get("warnings") or []
    if not warnings:
        return []
    parts = ["<div class='warn'><h2>Warnings: read these before the numbers</h2><ul>"]
    for w in warnings:
        parts.append(f"<li><b>{esc(str(w.get('code', '')))}</b>: {esc(str(w.get('message', '')))}</li>")
    parts.append("</ul></div>")
    return parts


def _leakage_html(report: dict[str, Any]) -> list[str]:
    esc = html.escape
    statements = report.get("leakage") or []
    if not statements:
        return []
    parts = ["<h2>Leakage</h2>"]
    for st in statements:
        who = f"<b>{esc(_label(str(st['defense'])))}</b> · " if st.get("defense") else ""
        parts.append(f"<div class='v lk-{esc(str(st.get('level')))}'>{who}{esc(str(st.get('text')))}</div>")
    parts.append("<p class='small'>Pooled top-1 AttAcc of the baseline (or only) model against chance "
                 "(1 / identities) and against the judges' accuracy on real held-out private images, what an "
                 "attack that recovered the private images exactly would score.</p>")
    return parts


def _judges_html(report: dict[str, Any]) -> list[str]:
    """The judges table and, per attack and defense, each judge's AttAcc, agreement and double-check."""
    esc = html.escape
    judges = report.get("judges") or []
    parts: list[str] = []
    if judges:
        parts.append("<h2>Judges</h2><table><tr><th>Judge</th><th>Seed</th><th>Accuracy on private images</th>"
                     "<th>Selected epoch</th></tr>")
        for j in judges:
            acc = j.get("accuracy")
            split = "held-out" if j.get("accuracy_split", "test") == "test" else "training"
            acc_txt = f"{acc:.1f} % ({split})" if isinstance(acc, int | float) else "–"
            epoch = j.get("selected_epoch")
            epoch_txt = f"{epoch} of {j.get('epochs')}" if epoch is not None else "–"
            parts.append(f"<tr><td class='l'>{esc(str(j.get('arch')))}</td><td>{esc(str(j.get('seed', '–')))}</td>"
                         f"<td>{esc(acc_txt)}</td><td>{esc(epoch_txt)}</td></tr>")
        parts.append("</table>")
    rows = [r for r in report.get("results", []) if r.get("judges") or
            any(m in r.get("metrics", {}) for m in PANEL_METRICS)]
    if not rows:
        return parts
    names = []
    for r in rows:
        for j in r.get("judges") or []:
            name = f"{j.get('arch')} (seed {j.get('seed')})"
            if name not in names:
                names.append(name)
    parts.append("<h2>AttAcc per judge</h2><table><tr><th>Attack</th><th>Defense</th><th>Pooled top-1 ↓</th>"
                 + "".join(f"<th>{esc(n)} top-1</th>" for n in names)
                 + "<th>Judge spread</th><th>Agreement</th><th>Double-check ↓</th><th>Pixel std</th></tr>")
    runs = report.get("runs") or []
    for r in rows:
        m = r["metrics"]
        per = {f"{j.get('arch')} (seed {j.get('seed')})": j.get("attacc_top1") for j in r.get("judges") or []}
        spread = judge_spread(r, runs)
        spread_txt = f"{spread['spread']:.1f} (seed std {spread['seed_std']:.1f})" if spread else "–"
        parts.append(f"<tr><td class='l'>{esc(r['attack'])}</td><td class='l'>{esc(_label(r['defense']))}</td>"
                     f"<td>{_fmt(m.get('attacc_top1'), 1)}</td>"
                     + "".join(f"<td>{_fmt(per.get(n), 1)}</td>" for n in names)
                     + f"<td>{esc(spread_txt)}</td><td>{_fmt(m.get('agreement'), 1)}</td>"
                     f"<td>{_fmt(m.get('double_check'), 1)}</td><td>{_fmt(m.get('pixel_std'), 3)}</td></tr>")
    parts.append("</table><p class='small'>In %. Pooled: the mean of the judges' top-1 AttAcc. Agreement: share "
                 "of reconstructions on which all judges agree (all credit it, or none). Double-check: share of "
                 "reconstructions a judge credits that are also nearest to the attacked identity's private "
                 "images in another judge's features (averaged over judges; at most the pooled figure; a large "
                 "gap means credited images that do not look like the person). Pixel std near 0: flat "
                 "images.</p>")
    return parts


def render_html(report: dict[str, Any], images: dict[str, bytes],
                extra_sections: Sequence[str] | None = None) -> str:
    """The self-contained HTML page of ``report`` with the PNG ``images`` embedded (keyed by name).

    ``extra_sections`` (HTML fragments, trusted: built by the library, e.g. a sweep's frontier)
    are placed after the results table.
    """
    esc = html.escape
    ds = report.get("dataset", {})
    ev = report.get("models", {}).get("evaluation", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>MIDRE privacy-utility report</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}td.l{text-align:left}.v{padding:6px 10px;margin:4px 0;"
        "border-left:4px solid #999;background:#fafafa}.helped{border-color:#2ca02c}.hurt{border-color:#d62728}"
        ".no_effect,.inconclusive{border-color:#ff9f1c}img{max-width:100%}.small{color:#666;font-size:90%}"
        ".warn{border:2px solid #d62728;background:#fff4f4;padding:4px 12px;margin:1em 0}.warn h2{margin:.4em 0}"
        ".lk-high{border-color:#d62728}.lk-moderate{border-color:#ff9f1c}.lk-low{border-color:#2ca02c}"
        ".lk-none{border-color:#999}</style></head><body>",
        "<h1>Model inversion privacy-utility report</h1>",
        f"<p class='small'>Data set <b>{esc(str(ds.get('source', '?')))}</b> · "
        f"{esc(str(ds.get('identities', '?')))} private identities · {esc(str(ds.get('image_size', '?')))} px · "
        f"target <b>{esc(str(report.get('models', {}).get('target', {}).get('arch', '?')))}</b> · "
        f"seeds {esc(str(report.get('seeds', [])))} · schema v{report.get('schema_version')}</p>",
    ]
    parts += _warnings_html(report)
    parts += _leakage_html(report)
    if report.get("verdicts"):
        parts.append("<h2>Verdict</h2>")
    for v in report.get("verdicts", []):
        parts.append(f"<div class='v {esc(v['status'])}'>{esc(v['text'])}</div>")
    if ev and not report.get("judges"):
        acc = ev.get("accuracy")
        acc_txt = f"{acc:.1f}%" if isinstance(acc, int | float) else "?"
        parts.append(f"<p class='small'>AttAcc is judged by an independent <b>{esc(str(ev.get('arch')))}</b> "
                     f"evaluation model ({esc(str(ev.get('accuracy_split', 'test')))} accuracy "
                     f"{acc_txt}); chance level is "
                     f"{100.0 / max(1, int(ds.get('identities', 1) or 1)):.1f}% top-1.</p>")
    if "summary" in images:
        parts.append("<p class='small'>The whole report in one picture (also <code>summary.png</code>):</p>"
                     f"<img alt='summary: results table, verdicts and trade-off plot' src='{_b64(images['summary'])}'>")
    from midre.report.frontier import frontier_html

    parts += frontier_html(report)  # sweeps and harden: recommendation, frontier table and plots
    parts.append("<h2>Results (paper Table 3 layout)</h2><table><tr><th>Attack</th><th>Defense</th>"
                 "<th>Acc ↑</th><th>AttAcc top-1 ↓</th><th>AttAcc top-5 ↓</th><th>KNN dist ↑</th>"
                 "<th>δ_eval ↑</th><th>Δ ↑</th><th>Queries</th></tr>")
    for row in report.get("results", []):
        m = row["metrics"]
        parts.append(
            f"<tr><td class='l'>{esc(row['attack'])}</td><td class='l'>{esc(_label(row['defense']))}</td>"
            f"<td>{_fmt(m.get('acc'))}</td><td>{_fmt(m.get('attacc_top1'))}</td><td>{_fmt(m.get('attacc_top5'))}</td>"
            f"<td>{_fmt(m.get('knn_dist'), 1)}</td><td>{_fmt(m.get('delta_eval'), 1)}</td>"
            f"<td>{esc(format_delta(row.get('tradeoff_delta')))}</td><td>{_fmt(m.get('queries'), 0)}</td></tr>")
    parts.append("</table><p class='small'>Mean ± sample std over seeds (each seed trains its own target and "
                 "runs its own attack). Acc, AttAcc in %. Δ = (AttAcc<sub>NoDef</sub> − AttAcc<sub>def</sub>) / "
                 "(Acc<sub>NoDef</sub> − Acc<sub>def</sub>); OP: the defense loses no accuracy.</p>")
    parts += _judges_html(report)
    parts += [str(section) for section in extra_sections or ()]
    curves = [r for r in report.get("runs", []) if r.get("attacc_vs_queries")]
    if curves:
        parts.append("<h2>AttAcc vs queries (black-box / label-only attacks)</h2><table><tr><th>Attack</th>"
                     "<th>Defense</th><th>Seed</th><th>Queries → AttAcc top-1 % (top-5 %)</th></tr>")
        for r in curves:
            pts = ", ".join(f"{p['queries']:,} → {p['attacc_top1']:.1f} ({p['attacc_top5']:.1f})"
                            for p in r["attacc_vs_queries"])
            parts.append(f"<tr><td class='l'>{esc(str(r.get('attack')))}</td><td class='l'>"
                         f"{esc(_label(str(r.get('defense', ''))))}</td><td>{esc(str(r.get('seed')))}</td>"
                         f"<td class='l'>{esc(pts)}</td></tr>")
        parts.append("</table><p class='small'>The reconstructions the attack held after that many target "
                     "queries, judged by the evaluation model.</p>")
    if "tradeoff" in images:
        parts.append(f"<h2>Trade-off</h2><img alt='trade-off plot' src='{_b64(images['tradeoff'])}'>")
    grids = [k for k in images if k.startswith("grid_")]
    if grids:
        parts.append("<h2>Reconstructions next to real private samples</h2>")
        for key in grids:
            parts.append(f"<h3>{esc(key[5:])}</h3><img alt='{esc(key)}' src='{_b64(images[key])}'>")
    feats = [k for k in images if k.startswith("features_")]
    if feats:
        parts.append("<h2>Feature space (paper Sec. 3.2)</h2><p class='small'>Target-model penultimate "
                     "features of private, RE-private and reconstructed images, 2-D PCA, convex hull per "
                     "identity. The paper's claim: under MIDRE, reconstructions follow the RE-private "
                     "features rather than the private ones.</p>")
        for key in feats:
            parts.append(f"<img alt='{esc(key)}' src='{_b64(images[key])}' style='max-width:48%'>")
        fs = report.get("feature_space", {})
        if fs:
            parts.append("<table><tr><th>target</th><th>attack</th><th>|f_recon−f_priv| centroid</th>"
                         "<th>|f_recon−f_RE| centroid</th><th>f_recon→f_priv NN</th><th>f_recon→f_RE NN</th></tr>")
            for key, val in fs.items():
                d = val.get("distances", {})
                parts.append(f"<tr><td class='l'>{esc(key)}</td><td class='l'>{esc(str(val.get('attack', '')))}</td>"
                             + "".join(f"<td>{d.get(k, float('nan')):.3f}</td>" for k in
                                       ("recon_priv_centroid", "recon_re_centroid", "recon_priv_nn", "recon_re_nn"))
                             + "</tr>")
            parts.append("</table>")
    parts.append("<h2>Settings and timings</h2><pre>")
    parts.append(esc(json.dumps({k: report.get(k) for k in ("dataset", "models", "defenses", "attacks",
                                                             "timings")}, indent=2, default=str)))
    parts.append("</pre></body></html>")
    return "\n".join(parts)


def write_report(report: dict[str, Any], out_dir: str | Path, *, grids: dict[str, dict[str, Any]] | None = None,
                 feature_results: dict[str, Any] | None = None,
                 extra_sections: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``report.html`` and the PNG plots to ``out_dir``; return the report.

    Adds ``leakage`` (:func:`~midre.report.verdicts.leakage_statements`) and ``warnings``
    (:func:`~midre.report.verdicts.report_warnings`, after any the caller put in ``report``).

    Args:
        report: the report dict (needs ``results``; see :func:`aggregate_runs`).
        out_dir: folder to write into.
        grids: ``{attack: {"names": [...], "real": array|None, "recon": {defense: array}}}`` in [0, 1].
        feature_results: ``{title: FeatureSpaceResult}``.
        extra_sections: HTML fragments placed after the results table (e.g. a sweep's frontier).
    """
    from midre.report import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema_version": SCHEMA_VERSION, **report}
    report["leakage"] = leakage_statements(report)
    given = [w for w in report.get("warnings") or [] if isinstance(w, dict)]
    seen = {(w.get("code"), w.get("message")) for w in given}
    report["warnings"] = given + [w for w in report_warnings(report) if (w["code"], w["message"]) not in seen]
    images: dict[str, bytes] = {}
    rows = [{"attack": r["attack"], "defense": _label(r["defense"]), "acc": r["metrics"]["acc"],
             "attacc": r["metrics"]["attacc_top1"]} for r in report.get("results", [])
            if "acc" in r["metrics"] and "attacc_top1" in r["metrics"]]
    if rows:
        images["tradeoff"] = plots.tradeoff_plot(rows)
        cells = [[r["attack"], _label(r["defense"]), _fmt(m.get("acc"), 1), _fmt(m.get("attacc_top1"), 1),
                  _fmt(m.get("attacc_top5"), 1), format_delta(r.get("tradeoff_delta"))]
                 for r in report.get("results", []) for m in (r["metrics"],)]
        images["summary"] = plots.summary_card(report, cells, rows)
    for attack, grid in (grids or {}).items():
        images[f"grid_{attack}"] = plots.image_grid(grid.get("real"), grid["recon"], grid["names"])
    for title, result in (feature_results or {}).items():
        images[f"features_{title}"] = plots.feature_space_plot(result, title)
    files = []
    for name, png in images.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        (out / f"{safe}.png").write_bytes(png)
        files.append(f"{safe}.png")
    report["artifacts"] = {"json": "report.json", "html": "report.html", "plots": files}
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    tmp.replace(out / "report.json")
    (out / "report.html").write_text(render_html(report, images, extra_sections), encoding="utf-8")
    logger.info("wrote %s and %s", out / "report.json", out / "report.html")
    return report


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


__all__ = ["METRICS", "METRIC_INFO", "PANEL_METRICS", "SCHEMA_VERSION", "aggregate_runs", "leakage_statements",
           "render_html", "report_warnings", "verdict", "write_report"]
