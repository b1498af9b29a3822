"""The privacy-utility frontier of a sweep or harden study: one plot per attack and the HTML section.

Each plot puts every candidate at (test accuracy, top-1 AttAcc) with ± std over seeds; the
Pareto-optimal candidates (for that attack) are joined by a line, NoDef is a black square, the
recommendation a red star, the accuracy budget a dashed line, and candidates the search stopped
early are hollow grey markers.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from midre.report.plots import _png, _pyplot


def frontier_plot(frontier: list[dict[str, Any]], attack: str, *, recommended: str | None = None,
                  max_accuracy_drop: float | None = None) -> bytes:
    """PNG: accuracy (x) vs top-1 AttAcc of ``attack`` (y) for every candidate; down-right is better.

    ``recommended`` (a candidate label) is drawn as a star; ``max_accuracy_drop`` as a dashed line at
    NoDef's accuracy minus the budget.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    pareto = []
    base = frontier[0] if frontier and frontier[0].get("acc") else None
    if base is not None and max_accuracy_drop is not None:
        ax.axvline(base["acc"]["mean"] - max_accuracy_drop, color="#2ca02c", linestyle="--", alpha=0.6,
                   label=f"accuracy budget ({max_accuracy_drop:g} point{'' if max_accuracy_drop == 1 else 's'})")
    for e in frontier:
        if not e.get("acc") or attack not in e.get("attacc", {}):
            continue
        x, y = e["acc"]["mean"], e["attacc"][attack]["mean"]
        xe, ye = e["acc"].get("std", 0.0), e["attacc"][attack].get("std", 0.0)
        if e.get("skipped"):
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", mfc="none", color="#999999", capsize=2, markersize=6)
        elif e["spec"]["name"] == "nodef":
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="s", color="black", capsize=3, markersize=8, label="NoDef")
        else:
            on = e.get("pareto_by_attack", {}).get(attack, False)
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color="#1f77b4" if on else "#ff7f0e", capsize=3,
                        markersize=7)
        if e["defense"] == recommended:
            ax.plot(x, y, "*", color="#d62728", markersize=16, label="recommended", zorder=5)
        if e.get("pareto_by_attack", {}).get(attack):
            pareto.append((x, y))
        ax.annotate(e["defense"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if len(pareto) > 1:
        xs, ys = zip(*sorted(pareto), strict=True)
        ax.plot(xs, ys, "-", color="#1f77b4", alpha=0.5, label="Pareto frontier")
    ax.set_xlabel("test accuracy (%) →")
    ax.set_ylabel(f"{attack} top-1 AttAcc (%) ↓")
    ax.set_title(f"Privacy-utility frontier: {attack}")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _stat(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}" if stat.get("n", 1) > 1 else f"{stat['mean']:.1f}"


def frontier_html(report: dict[str, Any]) -> list[str]:
    """HTML parts of the recommendation, the frontier table and the frontier plots (empty without a frontier)."""
    frontier = report.get("frontier")
    if not frontier:
        return []
    esc = html.escape
    attacks = [a["name"] if isinstance(a, dict) else str(a) for a in report.get("attacks", [])]
    parts = ["<h2>Recommendation</h2>"]
    rec = report.get("recommendation")
    note = report.get("recommendation_note")
    if rec:
        parts.append(f"<div class='v helped'><b>Ship {esc(str(rec['defense']))}</b>: {esc(rec['reason'])}</div>")
        if rec.get("checkpoint"):
            parts.append(f"<p class='small'>Hardened checkpoint: <code>{esc(str(rec['checkpoint']))}/</code> "
                         "(model.safetensors + model.json).</p>")
    elif note:
        parts.append(f"<div class='v no_effect'>{esc(note)}</div>")
    else:
        parts.append("<p class='small'>A sweep without an accuracy budget recommends nothing.</p>")
    parts.append("<h2>Privacy-utility frontier</h2><table><tr><th>Candidate</th><th>Acc ↑</th><th>Acc drop</th>"
                 + "".join(f"<th>{esc(a)} AttAcc ↓</th>" for a in attacks)
                 + "<th>Pareto</th><th>Note</th></tr>")
    for e in frontier:
        drop = e.get("acc_drop")
        parts.append(
            f"<tr><td class='l'>{esc(str(e['defense']))}</td><td>{_stat(e.get('acc'))}</td>"
            f"<td>{'–' if drop is None else f'{drop:+.1f}'}</td>"
            + "".join(f"<td>{_stat(e.get('attacc', {}).get(a))}</td>" for a in attacks)
            + f"<td>{'yes' if e.get('pareto') else ''}</td><td class='l'>{esc(str(e.get('skipped') or ''))}</td></tr>")
    parts.append("</table><p class='small'>Mean ± std over seeds; Acc drop in points from NoDef (positive: lower "
                 "accuracy). Pareto: no other candidate has at least its accuracy and at most its AttAcc on every "
                 "attack. Candidates with a note were stopped early by the search.</p>")
    for attack in attacks:
        png = frontier_plot(frontier, attack, recommended=rec["defense"] if rec else None,
                            max_accuracy_drop=report.get("max_accuracy_drop"))
        parts.append(f"<img alt='frontier {esc(attack)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'>")
    return parts


__all__ = ["frontier_html", "frontier_plot"]
