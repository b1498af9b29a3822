"""PNG plots of the privacy-utility report (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import io
import textwrap
from typing import Any

import numpy as np

GROUP_STYLE = {
    "private": {"marker": "*", "label": "f_priv (private)", "color": "#1f77b4"},
    "re_private": {"marker": "v", "label": "f_RE (RE-private)", "color": "#2ca02c"},
    "recon": {"marker": "x", "label": "f_recon (reconstructed)", "color": "#d62728"},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def tradeoff_plot(rows: list[dict[str, Any]]) -> bytes:
    """Acc (x) vs top-1 AttAcc (y) with std error bars, one marker per (attack, defense).

    ``rows``: dicts with ``attack``, ``defense``, ``acc`` and ``attacc`` (each ``{"mean","std"}``,
    in percent). Down-right is better: more utility, less leakage.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    _tradeoff_axes(plt, ax, rows)
    return _png(fig)


def _bar(stat: dict[str, Any]) -> Any:
    """An error bar: the 95 % interval where the figure has one, else ± its std over seeds."""
    if "ci_low" in stat and "ci_high" in stat:
        return [[stat["mean"] - stat["ci_low"]], [stat["ci_high"] - stat["mean"]]]
    return stat["std"]


def _tradeoff_axes(plt: Any, ax: Any, rows: list[dict[str, Any]]) -> None:
    attacks = sorted({r["attack"] for r in rows})
    defenses = sorted({r["defense"] for r in rows})
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r in rows:
        ci = attacks.index(r["attack"]) % len(colors)
        mi = defenses.index(r["defense"]) % len(markers)
        ax.errorbar(r["acc"]["mean"], r["attacc"]["mean"], xerr=_bar(r["acc"]), yerr=_bar(r["attacc"]),
                    fmt=markers[mi], color=colors[ci], capsize=3, markersize=8)
    for a in attacks:  # connect NoDef -> defense per attack
        pts = [(r["acc"]["mean"], r["attacc"]["mean"]) for r in rows if r["attack"] == a]
        if len(pts) > 1:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "-", color=colors[attacks.index(a) % len(colors)], alpha=0.4)
    ax.xaxis.set_major_locator(plt.MaxNLocator(5))
    lo, hi = ax.get_xlim()
    if hi > 100:  # an error bar past 100 % is a std, not an accuracy: do not draw ticks there
        ax.set_xlim(lo, max(100.0, lo + 0.5))
    handles = [plt.Line2D([], [], color=colors[i % len(colors)], marker="o", ls="", label=a)
               for i, a in enumerate(attacks)]
    handles += [plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], ls="", label=d)
                for i, d in enumerate(defenses)]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # error bars fill the axes
    ax.set_xlabel("Acc (%) on held-out private images  (utility, higher is better)")
    ax.set_ylabel("top-1 AttAcc (%)  (leakage, lower is better)")
    intervals = all("ci_low" in r[k] for r in rows for k in ("acc", "attacc"))
    ax.set_title("Privacy-utility trade-off (mean, 95 % interval)" if intervals
                 else "Privacy-utility trade-off (mean ± std over seeds)")
    ax.grid(alpha=0.3)


def summary_card(report: dict[str, Any], cells: list[list[str]], rows: list[dict[str, Any]]) -> bytes:
    """One picture of the whole report: the results table, the warnings, leakage statements and verdicts,
    and the trade-off plot.

    Made for places that show an image but not HTML (a README, a ticket, a chat): it holds the
    numbers a reader needs to see at a glance whether the defense helped. ``cells``: the table's
    rows, already formatted (attack, defense, Acc, top-1, top-5, Δ); ``rows``: as for
    :func:`tradeoff_plot`.
    """
    plt = _pyplot()
    ds = report.get("dataset", {})
    texts = ([f"warning ({w.get('code')}): {w.get('message')}" for w in report.get("warnings") or []]
             + [f"leakage {s['text']}" for s in report.get("leakage") or []]
             + [v["text"] for v in report.get("verdicts", [])])
    lines = [textwrap.fill("• " + text, 100, subsequent_indent="  ") for text in texts]
    n_lines = sum(line.count("\n") + 1 for line in lines)
    fig = plt.figure(figsize=(12.0, 3.2 + 0.32 * len(cells) + 0.16 * n_lines))
    grid = fig.add_gridspec(2, 2, width_ratios=[1.35, 1.0], height_ratios=[1.0, max(0.45, 0.06 * n_lines)])
    ax_t, ax_p, ax_v = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[:, 1]), fig.add_subplot(grid[1, 0])
    ax_t.axis("off")
    if cells:
        table = ax_t.table(cellText=cells, colLabels=["attack", "defense", "Acc %", "AttAcc top-1 %",
                                                      "AttAcc top-5 %", "Δ"], loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        table.auto_set_column_width(list(range(6)))
        table.scale(1.0, 1.35)
    n_ids = int(ds.get("identities", 0) or 0)
    ax_t.set_title(f"{_source_name(ds.get('source'))}: {n_ids} private identities, {ds.get('image_size', '?')} px, "
                   f"seeds {report.get('seeds', [])}" + (f" (chance {100 / n_ids:.1f}% top-1)" if n_ids else ""),
                   fontsize=10)
    ax_v.axis("off")
    ax_v.text(0.0, 1.0, "\n".join(lines) or "no defense compared with NoDef", va="top", ha="left", fontsize=8.5,
              transform=ax_v.transAxes)
    _tradeoff_axes(plt, ax_p, rows)
    fig.tight_layout()
    return _png(fig)


def _source_name(source: Any) -> str:
    text = str(source or "?").rstrip("/")
    return text.rsplit("/", 1)[-1]


def image_grid(real: np.ndarray | None, recon: dict[str, np.ndarray], names: list[str]) -> bytes:
    """One column per identity: real private sample on top, then one row per defense's reconstruction.

    ``real``: ``[K, C, H, W]`` in [0, 1] (or None); ``recon``: ``{defense: [K, C, H, W]}``.
    """
    plt = _pyplot()
    rows = ([("private (real)", real)] if real is not None else []) + list(recon.items())
    k = len(names)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.1 * k + 1.2, 1.2 * len(rows) + 0.3), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if imgs is not None and c < len(imgs):
                img = np.transpose(imgs[c], (1, 2, 0))
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(str(names[c])[:10], fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _png(fig)


def feature_space_plot(result: Any, title: str) -> bytes:
    """Paper Fig. 3 style: projected f_priv / f_RE / f_recon with convex hulls per identity."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    line_styles = ["-", "--", ":", "-."]
    for g, style in GROUP_STYLE.items():
        pts, labels = result.points[g], result.labels[g]
        ax.scatter(pts[:, 0], pts[:, 1], marker=style["marker"], color=style["color"], s=36, alpha=0.8,
                   label=style["label"])
        for j, ident in enumerate(result.identities):
            hull = result.hulls[g].get(int(ident))
            if hull is not None and len(hull) >= 3:
                closed = np.vstack([hull, hull[:1]])
                ax.fill(closed[:, 0], closed[:, 1], color=style["color"], alpha=0.08)
                ax.plot(closed[:, 0], closed[:, 1], line_styles[j % 4], color=style["color"], lw=1)
            sel = pts[labels == ident]
            if len(sel) and g == "private":
                ax.annotate(f"id {ident}", sel.mean(0), fontsize=7)
    d = result.distances
    ax.set_title(f"{title}\n|recon-priv| {d['recon_priv_centroid']:.2f}  |recon-RE| {d['recon_re_centroid']:.2f}"
                 f"  (PCA {100 * result.explained_variance:.0f}% var)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)
