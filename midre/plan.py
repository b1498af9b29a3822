"""The study API: every job of the library is a study, a graph of small idempotent units any process can run.

Study kinds (registered here, once each, with :func:`midre.units.register_study`):

- ``train``: one unit, the model (:class:`midre.train.TrainConfig`);
- ``pipeline``: judges, GAN priors, one target per (defense, seed), one attack run per (target,
  attack), the report (:class:`midre.study.PipelineConfig`);
- ``attack_eval``: judges, priors, one attack run per (seed, attack) of a trained model, the report
  (:class:`midre.study.AttackEvalConfig`);
- ``sweep``: a pipeline over a grid of candidate defenses, its report with the frontier
  (:class:`midre.sweep.SweepConfig`);
- ``harden``: a staged search of the grid within an accuracy budget whose ``expand`` units add the
  next stage (:class:`midre.sweep.HardenConfig`, :mod:`midre.harden`).

Unit kinds: ``train``, ``judge/<arch>-s<seed>`` (cached in ``cache_dir``), ``prior/gmi-<hash>`` (cached),
``target/<defense>/seed<k>``, ``attack/<defense>/seed<k>/<attack>``, ``expand/...``, ``report``.
:func:`run_study` runs them one after the other in one process; a service runs every unit as its own
task on any worker, all of them sharing ``out_dir``. A unit writes only its own files (each finished
unit leaves ``out_dir/units/<key>.json``, written last by an atomic rename), reads only what its
dependencies wrote, and returns at once when it has finished before.

Example:
    >>> config = study_config("pipeline", {"data": "digits", "seeds": 2})
    >>> units = plan_study(config)
    >>> for unit in units:  # in dependency order (plan_study's order is one)
    ...     units += run_unit(config, "runs/s", unit)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midre.context import StudyContext, study_context
from midre.harden import plan_harden, run_expand
from midre.planners import candidate_units, plan_attack_eval, plan_pipeline, plan_train
from midre.progress import ProgressCallback, StopCallback
from midre.report.build import build_report, read_report
from midre.runners import run_study, run_unit
from midre.study import AttackEvalConfig, PipelineConfig
from midre.sweep import HardenConfig, SweepConfig, frontier_section
from midre.train import TrainConfig
from midre.units import StudyKind, Unit, get_study, list_studies, register_study, study_of, unit_result

register_study("train", config=TrainConfig, plan=plan_train, has_report=False)
register_study("pipeline", config=PipelineConfig, plan=plan_pipeline)
register_study("attack_eval", config=AttackEvalConfig, plan=plan_attack_eval)
register_study("sweep", config=SweepConfig, plan=plan_pipeline, report=frontier_section)
register_study("harden", config=HardenConfig, plan=plan_harden, expand=run_expand, report=frontier_section)


def study_config(kind: str, data: dict[str, Any], *, check: bool = True) -> Any:
    """The config of a study ``kind`` from a JSON-like dict (``check=False``: an already resolved one).

    Raises:
        ConfigError: an unknown kind, or naming the invalid field.
    """
    study = get_study(kind)
    data = dict(data)
    if "dataset" in data and "data" not in data:  # the REST spelling
        data["data"] = data.pop("dataset")
    return study.parse(data, check=check)


def plan_study(config: Any) -> list[Unit]:
    """The initial units of a study, deterministic for a config, in a valid sequential order."""
    return study_of(config).plan(config)


def study_kind(config: Any) -> str:
    """The registered kind of a study config (``pipeline``...)."""
    return study_of(config).name


def run_pipeline(config: PipelineConfig, out_dir: str | Path, *, progress: ProgressCallback | None = None,
                 should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Run the whole NoDef-vs-defense study here and write ``report.json`` + ``report.html`` to ``out_dir``.

    The judges, the target-independent GAN priors, one target per defense and seed, one attack run
    per target and attack (judged on AttAcc, KNN distance, delta_eval), then the report with its
    feature-space analysis and plots.

    Returns:
        The report dict (also written as ``out_dir/report.json``).
    """
    return run_study(config, out_dir, progress=progress, should_stop=should_stop)


def run_attack_eval(config: AttackEvalConfig, out_dir: str | Path, *, progress: ProgressCallback | None = None,
                    should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Attack one trained target with every configured attack and seed here; write the report.

    The private data are re-loaded from the data spec stored in the target's ``model.json`` (same
    identities, same split), the judges are loaded (``eval_model``) or trained/reused from the cache.
    """
    return run_study(config, out_dir, progress=progress, should_stop=should_stop)


__all__ = ["StudyContext", "StudyKind", "Unit", "build_report", "candidate_units", "get_study", "list_studies",
           "plan_study", "read_report", "run_attack_eval", "run_pipeline", "run_study", "run_unit", "study_config",
           "study_context", "study_kind", "unit_result"]
