"""A study as a graph of small, idempotent units that any process can run.

A study (``pipeline``, ``sweep``, ``harden``) is split into units:

- ``judge/<arch>-s<seed>``: one evaluation model (trained once, cached in ``cache_dir``);
- ``prior/gmi-<hash>``: one target-independent GAN prior (cached in ``cache_dir``);
- ``target/<defense>/seed<k>``: one target model per (defense, seed);
- ``attack/<defense>/seed<k>/<attack>``: one attack run, judged by every judge;
- ``expand/...``: a decision that returns new units (the harden search);
- ``report``: the report of everything that ran.

:func:`run_study` runs them one after the other in one process; a service can run every unit as
its own task on any worker, all of them sharing ``out_dir``. A unit writes only its own files
(each finished unit leaves ``out_dir/units/<key>.json``, written last by an atomic rename), reads
only what its dependencies wrote, and returns at once when it has finished before.

Example:
    >>> config = study_config("pipeline", {"data": "digits", "seeds": 2})
    >>> units = plan_study(config)
    >>> for unit in units:  # in dependency order (plan_study's order is one)
    ...     units += run_unit(config, "runs/s", unit)
"""

from __future__ import annotations

from typing import Any

from midre.errors import ConfigError
from midre.units import (
    StudyContext,
    Unit,
    build_report,
    candidate_units,
    plan_study,
    read_report,
    run_study,
    run_unit,
    study_context,
    study_kind,
    unit_result,
)


def study_config(kind: str, data: dict[str, Any]) -> Any:
    """The config object of a study ``kind`` (``pipeline``, ``sweep``, ``harden``) from a JSON-like dict.

    Raises:
        ConfigError: an unknown kind, or naming the invalid field.
    """
    from midre.study import PipelineConfig
    from midre.sweep import HardenConfig, SweepConfig

    classes = {"pipeline": PipelineConfig, "sweep": SweepConfig, "harden": HardenConfig}
    if kind not in classes:
        raise ConfigError("kind", f"unknown study kind {kind!r}; known: {', '.join(classes)}")
    data = dict(data)
    if "dataset" in data and "data" not in data:  # the REST spelling
        data["data"] = data.pop("dataset")
    return classes[kind].from_dict(data)


__all__ = ["StudyContext", "Unit", "build_report", "candidate_units", "plan_study", "read_report", "run_study",
           "run_unit", "study_config", "study_context", "study_kind", "unit_result"]
