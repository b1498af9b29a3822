"""The study engine's core: units, the registry of study kinds, and each unit's finished-marker.

Every piece of work the library does for a job is a *study* of some kind (``train``, ``pipeline``,
``attack_eval``, ``sweep``, ``harden``): a graph of small, idempotent :class:`Unit` s. A study kind is
registered once (:func:`register_study`) with its config class, its planner (config -> the first
units), and optionally its ``expand`` step (a unit that adds units: the harden search) and its report
section (the frontier of a sweep). The built-in kinds are registered by :mod:`midre.plan`, the API.

A unit writes only its own files in the study's folder ``out_dir`` and, last, its marker
``out_dir/units/<key>.json`` (an atomic rename): a unit with a marker has finished and is never run
again, so units of one study can run in any processes that share ``out_dir``, in any order their
dependencies allow. The unit bodies and the sequential driver live in :mod:`midre.runners`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midre.checkpoint import write_json_atomic
from midre.errors import ConfigError

#: Relative cost of each unit kind (a study's progress = finished weight / total weight).
WEIGHTS = {"train": 2.0, "judge": 1.0, "prior": 0.5, "target": 2.0, "attack": 1.5, "expand": 0.05, "report": 0.3}


@dataclass(frozen=True)
class Unit:
    """One task of a study.

    Attributes:
        key: unique in the study and folder-safe (``target/midre-a_h0.4/seed1``).
        kind: ``train``, ``judge``, ``prior``, ``target``, ``attack``, ``expand`` or ``report``.
        deps: keys of the units that must have finished before this one runs.
        weight: relative cost estimate.
        params: JSON-able inputs beyond the study config.
    """

    key: str
    kind: str
    deps: tuple[str, ...] = ()
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "deps": list(self.deps), "weight": self.weight,
                "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Unit:
        return cls(key=data["key"], kind=data["kind"], deps=tuple(data.get("deps") or ()),
                   weight=float(data.get("weight", 1.0)), params=dict(data.get("params") or {}))

    def __hash__(self) -> int:
        return hash(self.key)


def make_unit(key: str, kind: str, deps: tuple[str, ...] | list[str] = (), **params: Any) -> Unit:
    """A unit with its kind's default weight."""
    return Unit(key=key, kind=kind, deps=tuple(deps), weight=WEIGHTS.get(kind, 1.0), params=params)


# --------------------------------------------------------------------------- the registry of study kinds

#: ``plan(config) -> units``: the first units of a study, deterministic for a config, in a valid order.
Planner = Callable[[Any], list[Unit]]
#: ``expand(config, out_dir, unit) -> (result, new units)``: run one ``expand`` unit of a search.
Expander = Callable[[Any, Path, Unit], tuple[dict[str, Any], list[Unit]]]
#: ``section(config, candidates, records, out_dir) -> report fields``: what a kind adds to its report.
ReportSection = Callable[[Any, list[dict[str, Any]], list[dict[str, Any]], Path], dict[str, Any]]


@dataclass(frozen=True)
class StudyKind:
    """A registered kind of study: what its config is, how it is planned, expanded and reported.

    Attributes:
        name: the kind's name (``pipeline``).
        config: its config class; ``config.from_dict(data, check=...)`` builds one and ``to_dict()``
            gives it back.
        plan: the planner.
        expand: runs the kind's ``expand`` units (``None``: the kind plans everything up front).
        report: the kind's own report fields (``None``: the common report only; ``report=False`` on
            :func:`register_study` for a kind without a report, e.g. ``train``).
        has_report: whether a finished study of this kind has ``report.json``.
    """

    name: str
    config: type
    plan: Planner
    expand: Expander | None = None
    report: ReportSection | None = None
    has_report: bool = True

    def parse(self, data: dict[str, Any], *, check: bool = True) -> Any:
        """The kind's config from JSON-like ``data``; ``check=False`` trusts an already resolved one.

        Raises:
            ConfigError: naming the field at fault (only when ``check``).
        """
        return self.config.from_dict(data, check=check)


_STUDIES: dict[str, StudyKind] = {}


def register_study(name: str, *, config: type, plan: Planner, expand: Expander | None = None,
                   report: ReportSection | None = None, has_report: bool = True) -> StudyKind:
    """Register a study kind (once per name; registering the same config again is a no-op)."""
    kind = StudyKind(name=name, config=config, plan=plan, expand=expand, report=report, has_report=has_report)
    known = _STUDIES.get(name)
    if known is not None and known != kind:
        raise ValueError(f"study kind {name!r} is registered already")
    _STUDIES[name] = kind
    return kind


def get_study(name: str) -> StudyKind:
    """The registered study kind ``name``.

    Raises:
        ConfigError: ``kind``: an unknown name (the message lists the known ones).
    """
    if name not in _STUDIES:
        raise ConfigError("kind", f"unknown study kind {name!r}; known: {', '.join(sorted(_STUDIES))}")
    return _STUDIES[name]


def study_of(config: Any) -> StudyKind:
    """The study kind whose config class ``config`` is an instance of (exactly, not a subclass)."""
    for kind in _STUDIES.values():
        if type(config) is kind.config:
            return kind
    raise ConfigError("kind", f"no study kind is registered for {type(config).__name__} (import midre.plan)")


def list_studies() -> list[str]:
    """Names of the registered study kinds."""
    return sorted(_STUDIES)


# --------------------------------------------------------------------------- markers of finished units


def unit_marker(out_dir: str | Path, key: str) -> Path:
    """Where a finished unit's marker lives."""
    return Path(out_dir) / "units" / f"{key}.json"


def unit_result(out_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The stored result of a finished unit (``None`` when it has not finished)."""
    path = unit_marker(out_dir, key)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_marker(out_dir: Path, unit: Unit, seconds: float, result: dict[str, Any], new_units: list[Unit]) -> None:
    """Mark ``unit`` finished (written last, atomically)."""
    path = unit_marker(out_dir, unit.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": unit.key, "kind": unit.kind, "seconds": seconds, "result": result,
                             "new_units": [u.to_dict() for u in new_units]})


def finished_units(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every finished unit's marker, by key."""
    found: dict[str, dict[str, Any]] = {}
    root = Path(out_dir) / "units"
    if root.is_dir():
        for path in root.rglob("*.json"):
            data = json.loads(path.read_text())
            found[data["key"]] = data
    return found


def order_units(units: list[Unit], done: set[str]) -> Unit | None:
    """The first unit (in list order) not done whose dependencies are all done."""
    for unit in units:
        if unit.key not in done and all(d in done for d in unit.deps):
            return unit
    return None


__all__ = ["WEIGHTS", "StudyKind", "Unit", "finished_units", "get_study", "list_studies", "make_unit", "order_units",
           "register_study", "study_of", "unit_marker", "unit_result", "write_marker"]
