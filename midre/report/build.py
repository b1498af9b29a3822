"""The one report builder: a study's finished units -> :class:`~midre.report.model.Report` -> its files.

:func:`build_report` reads what the units of any study kind wrote (attack runs, targets, judges,
unit markers), aggregates the runs (:mod:`midre.report.aggregate`), adds the kind's own section (a
sweep's frontier and recommendation) and writes ``report.json``, ``report.html`` and the pictures
(:func:`write_report`). The same :class:`Report` is what the dashboard renders.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from midre.checkpoint import write_json_atomic
from midre.report.aggregate import aggregate_runs
from midre.report.identities import identities_picture, leaking_identities
from midre.report.intervals import SETTINGS
from midre.report.model import Plot, Report, plot_for
from midre.report.render import render_html, stat
from midre.report.verdicts import defense_name, leakage_statements, recommendation_caveats, report_warnings

logger = logging.getLogger(__name__)


def build_report(study: Any, config: Any, out_dir: Path, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate every finished run of ``candidates`` into ``report.json`` / ``report.html``.

    Args:
        study: the :class:`midre.units.StudyKind` of ``config``.
        config: the study's config.
        out_dir: the study's folder.
        candidates: ``[{"label", "defense", "skipped"}]``, the baseline (NoDef) first.

    Returns:
        The report's JSON form (also ``out_dir/report.json``).
    """
    from midre.attacks import AttackTarget
    from midre.context import load_judges, study_context
    from midre.outputs import collect_records
    from midre.report.review import write_review_material

    t0 = time.monotonic()
    out = Path(out_dir)
    ctx = study_context(config, out)
    seeds = config.seed_list
    write_json_atomic(out / "config.json", {**config.to_dict(), "study": study.name,
                                            "resolved_num_private": ctx.num_private})
    labels = [c["label"] for c in candidates]
    records = collect_records(out, candidates, seeds, config.attacks)
    seeds = sorted({s for c in candidates for s in c.get("seeds") or []} | set(seeds))
    targets = {(lbl, s): AttackTarget.from_checkpoint(str(config.target_dir(out, lbl, s)), device="cpu")
               for lbl in labels for s in seeds if (config.target_dir(out, lbl, s) / "model.json").is_file()
               and (config.target_dir(out, lbl, s) / "model.safetensors").is_file()}
    # candidates the harden search stopped early are in the frontier (with their reason), not in the table
    finished = [c["label"] for c in candidates if not c.get("skipped")]
    kept = [r for r in records if r["defense"] in finished]
    results, verdicts = aggregate_runs(kept, finished, config.attacks, baseline=labels[0])
    panel = load_judges(config, ctx)
    judges = [{k: v for k, v in j.items() if k != "dir"} for j in panel.describe()]
    report: dict[str, Any] = {
        "kind": study.name,
        "dataset": {**ctx.spec.to_dict(), "identities": len(ctx.splits.class_names),
                    "class_names": list(ctx.splits.class_names), "summary": ctx.splits.summary,
                    "public": ctx.public.description if ctx.public is not None else None,
                    "public_note": ctx.public_note},
        "models": {"target": target_summary(config, candidates, targets, kept),
                   "evaluation": {k: judges[0][k] for k in ("arch", "accuracy", "accuracy_split")}},
        "judges": judges,
        "defenses": [c["defense"] for c in candidates],
        "attacks": [{"name": a, "budget": config.budget_for(a).to_dict(), "options": config.options_for(a),
                     "per_identity": config.per_identity, "identities": len(ctx.ids)} for a in config.attacks],
        "seeds": seeds, "results": results, "verdicts": verdicts, "runs": records, "device": ctx.device,
    }
    report.update(_evidence(config, verdicts, candidates))
    if getattr(config, "deployment", None):
        report["deployment"] = deployment_section(config.deployment_view(), kept, results)
    grids: dict[str, Any] = {}
    features: dict[str, Any] = {}
    images: dict[str, bytes] = {}
    if kept:
        write_review_material(out, ctx.splits, list(ctx.ids), panel.judges[0])
        grids, features, report["feature_space"] = _grids_and_features(config, kept, out, targets, ctx, finished)
        report["identities"] = leaking_identities(kept, finished, list(ctx.splits.class_names))
        picture = identities_picture(report["identities"], out, finished, min(r["seed"] for r in kept),
                                     config.attacks[0], ctx.splits.train) if report["identities"] else None
        if picture is not None:
            images["identities.png"] = picture
    if study.report is not None:  # sweeps and harden: the frontier, its plots and the recommendation
        section = dict(study.report(config, candidates, records, out))
        images.update(section.pop("images", {}))
        report.update(section)
    report["timings"] = _timings(out, time.monotonic() - t0)
    return write_report(report, out, images=images, grids=grids, feature_results=features)


def deployment_section(deployment: Any, records: list[dict[str, Any]], results: list[dict[str, Any]]
                       ) -> dict[str, Any]:
    """``deployment`` of an audit of a served model: its policy and budget, and per attack the queries it
    used (most over seeds), whether the budget stopped it (on any seed) and the leakage statement."""
    attacks = []
    for row in results:
        runs = [r for r in records if r.get("attack") == row.get("attack")]
        if not runs:
            continue
        seen = [(r.get("extra") or {}).get("deployment") or {} for r in runs]
        used = max(int(s.get("queries_used", r.get("queries") or 0)) for s, r in zip(seen, runs, strict=True))
        stopped = any(bool(s.get("budget_stopped")) for s in seen)
        stat = (row.get("metrics") or {}).get("attacc_top1") or {}
        interval = (f" (95 % CI {stat['ci_low']:.1f}-{stat['ci_high']:.1f})"
                    if stat.get("ci_low") is not None and stat.get("ci_high") is not None else "")
        statement = (f"A client under policy {deployment.describe()} recovers {stat.get('mean', 0.0):.1f} %"
                     f"{interval} of the identities with {row['attack']} (AttAcc top-1), using {used:,} queries"
                     + ("; the budget stopped the attack." if stopped else "."))
        row["queries_used"] = used
        attacks.append({"attack": row["attack"], "queries_used": used, "budget_stopped": stopped,
                        "attacc_top1": stat or None, "statement": statement})
    return {**deployment.to_dict(), "attacks": attacks}


def _evidence(config: Any, verdicts: list[dict[str, Any]], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``comparisons`` (one per defense, attack and attacker with per-identity outcomes),
    ``intervals`` (how they were made) and ``adaptive`` (which attacks adapted; defenses with nothing to
    adapt to, and why)."""
    from midre.defenses import adaptive_refusal

    comparisons = [v["comparison"] for v in verdicts if v.get("comparison")]
    adaptive_attacks = config.adaptive_attacks()
    out: dict[str, Any] = {"comparisons": comparisons, "intervals": dict(SETTINGS) if comparisons else {}}
    if adaptive_attacks:
        refused = {c["label"]: why for c in candidates[1:] if (why := adaptive_refusal(c["defense"])) is not None}
        out["adaptive"] = {"attacks": adaptive_attacks,
                           "eot_samples": {a: config.eot_samples_for(a) for a in adaptive_attacks},
                           "not_applicable": refused}
    return out


def target_summary(config: Any, candidates: list[dict[str, Any]], targets: dict[tuple[str, int], Any],
                   records: list[dict[str, Any]]) -> dict[str, Any]:
    """``models.target`` of a report: the training settings of a study's targets and each one's metrics,
    or, for an audit of a given model, that model (its name, defense, measured accuracy, origin)."""
    from midre.study import AttackEvalConfig

    cards = {f"{lbl}/seed{s}": (t.card.get("metrics") or {}) for (lbl, s), t in targets.items()}
    if not isinstance(config, AttackEvalConfig):
        return {"arch": config.arch, "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                "per_run": cards}
    card = config.card()
    accs = [r["acc"] for r in records]
    metrics = {**(card.get("metrics") or {})}
    if accs:
        metrics["test_accuracy"] = accs[0] / 100.0
    return {"arch": card.get("arch"), "label": candidates[0]["label"], "defense": candidates[0]["defense"],
            "metrics": metrics, "origin": card.get("origin") or {"kind": "trained"}}


def _timings(out: Path, report_seconds: float) -> dict[str, float]:
    """Seconds per part, from the finished units' markers."""
    from midre.units import finished_units

    markers = finished_units(out)
    timings: dict[str, float] = {"evaluation_model": 0.0, "targets": 0.0, "attacks": 0.0}
    names = {"judge": "evaluation_model", "target": "targets", "attack": "attacks"}
    for data in markers.values():
        seconds = float(data.get("seconds") or 0.0)
        if data["kind"] in names:
            timings[names[data["kind"]]] += seconds
        elif data["kind"] == "prior":
            res = data.get("result") or {}
            timings[f"prior_{res.get('kind', 'gmi')}_{res.get('steps')}_steps"] = seconds
    timings["report"] = report_seconds
    timings["total"] = sum(float(d.get("seconds") or 0.0) for d in markers.values()) + report_seconds
    return timings


def _grids_and_features(config: Any, records: list[dict[str, Any]], out: Path, targets: dict[tuple[str, int], Any],
                        ctx: Any, defenses: list[str]) -> tuple[dict, dict, dict]:
    """Reconstruction grids (first seed, first image per identity) and feature-space analyses."""
    from midre.outputs import attack_dir, load_reconstructions

    grids: dict[str, Any] = {}
    features: dict[str, Any] = {}
    feature_json: dict[str, Any] = {}
    first_seed = min(r["seed"] for r in records)
    private, names_all = ctx.splits.train, list(ctx.splits.class_names)
    for attack in config.attacks:
        recon: dict[str, Any] = {}
        names: list[str] = []
        real = None
        for d in defenses:
            path = attack_dir(out, d, first_seed, attack)
            if not (path / "recon.safetensors").is_file():
                continue
            data = load_reconstructions(path)
            ids = data["labels"].unique()[:8].tolist()
            first = [int((data["labels"] == i).nonzero()[0]) for i in ids]
            recon[defense_name(d)] = (data["pixels"][first].float() / 255).numpy()
            names = [names_all[i] if i < len(names_all) else str(i) for i in ids]
            real = (private.images[[int((private.labels == i).nonzero()[0]) for i in ids]].float() / 255).numpy()
            target = targets.get((d, first_seed))
            if target is not None and config.feature_identities > 0:
                found = _feature_space(config, target, private, data, first_seed)
                if found is not None:
                    title = f"{defense_name(d)} target, {attack}"
                    features[title] = found
                    feature_json[title] = {"attack": attack, "defense": d, **found.to_dict()}
        if recon:
            grids[attack] = {"names": names, "real": real, "recon": recon}
    return grids, features, feature_json


def _feature_space(config: Any, target: Any, private: Any, data: dict[str, Any], seed: int) -> Any:
    """The feature-space analysis of one target's reconstructions (``None`` when it cannot be made)."""
    import torch

    from midre.attacks.base import PixelCodec
    from midre.evaluation import feature_space_analysis

    labels = data["labels"]
    defense = target.card.get("defense") or {}
    a_h = float(defense["a_h"]) if isinstance(defense, dict) and "a_h" in defense else 0.4
    try:
        codec = PixelCodec(target.normalization, target.image_shape[0], torch.device("cpu"))
        target.model.cpu()
        return feature_space_analysis(target.model, codec.to_input(private.images.float() / 255), private.labels,
                                      codec.to_input(data["pixels"].float() / 255), labels,
                                      identities=labels.unique()[: config.feature_identities].tolist(), a_h=a_h,
                                      normalization=target.normalization, seed=seed)
    except (ValueError, RuntimeError) as exc:  # an analysis failure must not lose the report
        logger.warning("feature-space analysis failed: %s", exc)
        return None


def _pictures(grids: dict[str, Any], features: dict[str, Any]) -> dict[str, bytes]:
    from midre.report import plots

    images = {f"grid_{attack}.png": plots.image_grid(g.get("real"), g["recon"], g["names"])
              for attack, g in grids.items()}
    for title, result in features.items():
        images[f"features_{safe_name(title)}.png"] = plots.feature_space_plot(result, title)
    return images


def safe_name(name: str) -> str:
    """A file-name-safe version of a picture's name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _summary_pictures(report: dict[str, Any]) -> dict[str, bytes]:
    """The trade-off plot and the one-picture summary, from the results rows."""
    from midre.report import plots

    def label(r: dict[str, Any]) -> str:
        return defense_name(r["defense"]) + (" (adaptive)" if r.get("adaptive") else "")

    rows = [{"attack": r["attack"], "defense": label(r), "acc": r["metrics"]["acc"],
             "attacc": r["metrics"]["attacc_top1"]} for r in report.get("results", [])
            if "acc" in r["metrics"] and "attacc_top1" in r["metrics"]]
    if not rows:
        return {}
    from midre.report.render import delta

    cells = [[r["attack"], label(r), stat(m.get("acc"), 1), stat(m.get("attacc_top1"), 1),
              stat(m.get("attacc_top5"), 1), delta(r.get("tradeoff_delta"))]
             for r in report.get("results", []) for m in (r["metrics"],)]
    return {"tradeoff.png": plots.tradeoff_plot(rows), "summary.png": plots.summary_card(report, cells, rows)}


def write_report(report: dict[str, Any], out_dir: str | Path, *, images: dict[str, bytes] | None = None,
                 grids: dict[str, Any] | None = None, feature_results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``report.html`` and the pictures of ``report`` to ``out_dir``.

    Adds ``leakage`` (:func:`~midre.report.verdicts.leakage_statements`), ``warnings``
    (:func:`~midre.report.verdicts.report_warnings`, after any the caller put in ``report``) and
    ``plots`` (one per picture, with its caption).

    Args:
        report: the report's fields (needs ``results``; see :func:`midre.report.aggregate.aggregate_runs`).
        out_dir: folder to write into.
        images: more pictures (PNG bytes by file name), e.g. frontier plots.
        grids: ``{attack: {"names": [...], "real": array|None, "recon": {defense: array}}}`` in [0, 1], drawn
            as reconstruction grids.
        feature_results: ``{title: FeatureSpaceResult}``, drawn as feature-space plots.

    Returns:
        The report's JSON form (what ``report.json`` holds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"kind": "study", **report}
    report["leakage"] = leakage_statements(report)
    if report.get("recommendation"):  # a sweep's or harden search's pick, with what limits it
        report["recommendation"] = {**report["recommendation"], "caveats": recommendation_caveats(report)}
    given = [w for w in report.get("warnings") or [] if isinstance(w, dict)]
    seen = {(w.get("code"), w.get("message")) for w in given}
    report["warnings"] = given + [w for w in report_warnings(report) if (w["code"], w["message"]) not in seen]
    pictures = {**_summary_pictures(report), **_pictures(grids or {}, feature_results or {}), **(images or {})}
    for name, png in pictures.items():
        (out / name).write_bytes(png)
    plots: list[Plot] = [plot_for(name) for name in _ordered(pictures)]
    report["plots"] = plots
    report["artifacts"] = {"json": "report.json", "html": "report.html", "plots": [p.file for p in plots]}
    typed = Report.from_dict(report)
    write_json_atomic(out / "report.json", json.loads(json.dumps(typed.to_dict(), default=_json_default)))
    (out / "report.html").write_text(render_html(typed, pictures), encoding="utf-8")
    logger.info("wrote %s and %s", out / "report.json", out / "report.html")
    return typed.to_dict()


def _ordered(pictures: dict[str, bytes]) -> list[str]:
    order = {"summary": 0, "tradeoff": 1, "frontier": 2, "grid": 3, "features": 4, "identities": 5}
    return sorted(pictures, key=lambda name: (order.get(plot_for(name).kind, 5), name))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """``report.json`` of a study whose ``report`` unit has finished."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no report.json in {out_dir}: the study's report unit has not finished")
    return json.loads(path.read_text())


__all__ = ["build_report", "read_report", "safe_name", "target_summary", "write_report"]
