"""The registry of job kinds: each kind registered once, and everything in the service reads it.

A :class:`JobKind` says what the gateway, the worker, quotas, error messages, the dashboard, MLflow and
webhooks need to know about a kind: its public spec class, how a spec becomes the input of the library
study it runs (:mod:`midre.plan`), whether it yields a servable model, whether it has a report, whether
it audits a model, which model card MLflow registers, what one job costs in training and attack runs,
and an example spec for people. The built-in kinds are registered in :mod:`services.jobspec`.

Adding a kind: its spec class (:mod:`services.jobspec.specs`), its registration, its library study
(``register_study`` in :mod:`midre.plan`) and its CLI command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

#: ``library(spec, inherited_data) -> dict``: a validated spec (JSON) -> the library config's input,
#: ids as ``dataset:<id>`` / ``job:<id>`` tokens; ``inherited_data`` is the data spec of the model an
#: audit attacks, as its own job resolved it.
LibraryInput = Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]


def no_runs(config: dict[str, Any]) -> int:
    """A kind that trains no candidates and runs no attacks."""
    return 0


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    Attributes:
        name: the kind's name, as in a spec's ``kind``.
        spec: its public spec class (``None``: made by the service, not submitted, e.g. an uploaded model).
        library: its resolver (see :data:`LibraryInput`); ``None`` for a kind that runs nothing.
        study: the library study kind it runs (``None``: it runs nothing).
        model: whether a succeeded job is a model: ``never``, ``always``, or ``recommended`` (when its
            report recommended a checkpoint, stored as the job's own ``model.json``).
        report: whether a succeeded job has ``report.json``.
        audits: whether it attacks a model named in its spec (``model``): its results belong to that
            model's card and it sends ``model.evaluated``.
        mlflow_model: the card MLflow registers after a hand-off: ``root`` (the job's own
            ``model.json``), ``target`` (a study's defended target) or ``none``.
        model_data: where the data a model of this kind was trained on is recorded: ``resolved`` (its
            resolved config's ``data``) or ``card`` (the uploaded card's ``config.data``).
        runs: training and attack runs one job of this kind costs (``MIDRE_MAX_STUDY_RUNS``), from its
            resolved config.
        example: a spec to start from in the dashboard.
    """

    name: str
    spec: type[BaseModel] | None
    library: LibraryInput | None
    study: str | None
    model: Literal["never", "always", "recommended"] = "never"
    report: bool = False
    audits: bool = False
    mlflow_model: Literal["none", "root", "target"] = "none"
    model_data: Literal["resolved", "card"] = "resolved"
    runs: Callable[[dict[str, Any]], int] = no_runs
    example: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def submittable(self) -> bool:
        return self.spec is not None

    @property
    def mlflow(self) -> bool:
        """Whether a succeeded job is handed to MLflow (a kind that runs something)."""
        return self.study is not None


_KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    """Register ``kind`` (once per name)."""
    known = _KINDS.get(kind.name)
    if known is not None and known != kind:
        raise ValueError(f"job kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    """The registered kind ``name`` (``KeyError`` naming the known ones otherwise)."""
    if name not in _KINDS:
        raise KeyError(f"unknown job kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


def kinds() -> list[JobKind]:
    """Every registered kind, in registration order."""
    return list(_KINDS.values())


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def names_where(test: Callable[[JobKind], bool]) -> tuple[str, ...]:
    """Names of the kinds ``test`` accepts (for a database filter: ``Job.kind.in_(...)``)."""
    return tuple(k.name for k in _KINDS.values() if test(k))


__all__ = ["JobKind", "LibraryInput", "get_kind", "kind_names", "kinds", "names_where", "no_runs", "register_kind"]
