"""The harden search against the exhaustive grid it replaces: tasks run, wall time, same recommendation?

Runs ``midre harden`` (coarse a_h grid 0.2..0.8/0.2, refined by half a step around the best, early
stops) and a sweep of every candidate the search can reach (a_h 0.1..0.9/0.1, every seed, every
attack) on the same small digits case, each in its own folder, and prints the number of tasks (units
that train a target or run an attack), the wall time of each, their ratio and both recommendations.
The judges and the GMI prior, which both need alike, are trained first into a shared cache, so the
wall times compare the targets and attacks only.

Usage:
    uv run python benchmarks/harden_search.py --out /tmp/harden_bench
    # or the two parts at once, one process each:
    uv run python benchmarks/harden_search.py --out /tmp/harden_bench --part harden &
    uv run python benchmarks/harden_search.py --out /tmp/harden_bench --part grid
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any


def _tasks(out: Path) -> int:
    return sum(1 for p in (out / "units").rglob("*.json") if json.loads(p.read_text())["kind"] in ("target", "attack"))


def _case(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": "digits", "image_size": 32, "channels": 1, "epochs": args.epochs, "seeds": args.seeds,
            "batch_size": 64, "max_images_per_identity": 60, "attacks": ["deepinversion", "gmi"],
            "per_identity": 1, "identities": 4, "eval_archs": ["resnet18", "cnn-small"], "eval_epochs": 2,
            "feature_identities": 0, "cache_dir": str(Path(args.out) / "shared-cache"),
            "attack_budgets": {"deepinversion": {"steps": args.steps},
                               "gmi": {"steps": args.steps, "restarts": 1, "prior_steps": 30}},
            "prior_options": {"width": 8, "batch_size": 16}, "max_accuracy_drop": args.budget}


def _warm(data: dict[str, Any], out: Path) -> None:
    """Train the judges and the GMI prior into the shared cache."""
    from midre.plan import plan_study, run_unit, study_config

    config = study_config("sweep", data)
    for unit in plan_study(config):
        if unit.kind in ("judge", "prior"):
            run_unit(config, out, unit)


def _run(kind: str, data: dict[str, Any], out: Path) -> tuple[dict[str, Any], float, int]:
    from midre.plan import run_study, study_config

    if out.exists():
        shutil.rmtree(out)
    t0 = time.monotonic()
    report = run_study(study_config(kind, data), out)
    return report, time.monotonic() - t0, _tasks(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/harden_bench", help="work folder")
    parser.add_argument("--seeds", type=int, default=2, help="seeds (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="target epochs (default 2)")
    parser.add_argument("--steps", type=int, default=10, help="steps of each attack (default 10)")
    parser.add_argument("--budget", type=float, default=1.0, help="max accuracy drop in points (default 1.0)")
    parser.add_argument("--part", choices=("both", "harden", "grid"), default="both",
                        help="run both (default) or one part; two processes may run the two parts at once on "
                             "the same --out, the one that finishes last prints the comparison")
    args = parser.parse_args()
    root = Path(args.out)
    case = _case(args)
    _warm({**case, "candidates": "midre"}, root / "warm")
    parts = {"harden": ("harden", "midre:a_h=0.2..0.8/0.2"), "grid": ("sweep", "midre:a_h=0.1..0.9/0.1")}
    for name in parts if args.part == "both" else [args.part]:
        kind, candidates = parts[name]
        report, seconds, tasks = _run(kind, {**case, "candidates": candidates}, root / name)
        rec = report["recommendation"]["defense"] if report["recommendation"] else "none"
        summary = {"tasks": tasks, "seconds": seconds, "recommendation": rec,
                   "note": report.get("recommendation_note")}
        (root / f"{name}.summary.json").write_text(json.dumps(summary))
        print(f"{name:>6}: {tasks:3d} tasks  {seconds:7.1f} s  recommendation {rec}")
    if all((root / f"{n}.summary.json").is_file() for n in parts):
        s, g = (json.loads((root / f"{n}.summary.json").read_text()) for n in parts)
        print(f"harden search  : {s['tasks']:3d} tasks  {s['seconds']:7.1f} s  recommendation {s['recommendation']}")
        print(f"exhaustive grid: {g['tasks']:3d} tasks  {g['seconds']:7.1f} s  recommendation {g['recommendation']}")
        print(f"ratio (tasks)  : {s['tasks'] / g['tasks']:.2f}   ratio (wall): {s['seconds'] / g['seconds']:.2f}   "
              f"same recommendation: {s['recommendation'] == g['recommendation']}")
        print("search note:", s["note"])
        print("grid note  :", g["note"])


if __name__ == "__main__":
    main()
