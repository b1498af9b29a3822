"""The spec layer: the public job specs, the registry of job kinds, and their one conversion to ``midre``.

Imported by the gateway (check and resolve a spec before anything is queued), the worker (run the
resolved config) and the CLI alike; it imports ``midre`` only inside functions, so the gateway's
start-up does not pay for torch until the first spec is resolved.

- :mod:`~services.jobspec.specs`: the pydantic spec of each kind;
- :mod:`~services.jobspec.kinds`: the registry (:class:`JobKind`); the built-in kinds are registered here;
- :mod:`~services.jobspec.resolve`: spec -> resolved library config (once, at submit) -> bound config
  (in every unit).
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from services.jobspec.kinds import JobKind, get_kind, kind_names, kinds, names_where, register_kind
from services.jobspec.resolve import (
    GENERATOR_OPTIONS,
    SPEC_VERSION,
    Ref,
    api_field,
    audit_input,
    bind,
    check_public_data,
    grid_input,
    pipeline_input,
    references,
    resolve,
    train_input,
)
from services.jobspec.specs import (
    DIGITS,
    MAX_INT64,
    MAX_SEED,
    AttackEvalJobSpec,
    DefenseSpec,
    HardenJobSpec,
    PipelineJobSpec,
    SpecError,
    SweepJobSpec,
    TrainJobSpec,
)


def _seeds(config: dict[str, Any]) -> int:
    seeds = config.get("seeds", 1)
    return seeds if isinstance(seeds, int) else len(seeds)


def _attacks(config: dict[str, Any]) -> int:
    return max(len(config.get("attacks") or []), 1)


def study_runs(config: dict[str, Any]) -> int:
    """Seeds x candidates (a pipeline's NoDef and defense, a sweep's grid) x attacks."""
    return _seeds(config) * max(len(config.get("defenses") or [None]), 1) * _attacks(config)


def search_runs(config: dict[str, Any]) -> int:
    """A harden search's grid, plus the two a_h values its refinement may add around the best."""
    extra = 2 if config.get("refine", True) else 0
    return _seeds(config) * (max(len(config.get("defenses") or [None]), 1) + extra) * _attacks(config)


def audit_runs(config: dict[str, Any]) -> int:
    """Seeds x attacks against the one model."""
    return _seeds(config) * _attacks(config)


_DIGITS_TRAINING = {"epochs": 1, "image_size": 32, "batch_size": 128, "seed": 0}

TRAIN = register_kind(JobKind(
    "train", spec=TrainJobSpec, library=train_input, study="train", model="always", mlflow_model="root",
    example={"kind": "train", "dataset": DIGITS, "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
             "training": {"epochs": 2, "image_size": 16, "batch_size": 64, "seed": 0},
             "data": {"max_images_per_identity": 100}}))
AUDIT = register_kind(JobKind(
    "attack_eval", spec=AttackEvalJobSpec, library=audit_input, study="attack_eval", report=True, audits=True,
    runs=audit_runs))
PIPELINE = register_kind(JobKind(
    "pipeline", spec=PipelineJobSpec, library=pipeline_input, study="pipeline", report=True, mlflow_model="target",
    runs=study_runs,
    example={"kind": "pipeline", "dataset": DIGITS, "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
             "training": _DIGITS_TRAINING, "data": {"channels": 1, "max_images_per_identity": 20},
             "attacks": ["mi-face"], "seeds": 1,
             "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 3,
                            "feature_identities": 2},
             "attack_budgets": {"mi-face": {"steps": 2}}}))
SWEEP = register_kind(JobKind(
    "sweep", spec=SweepJobSpec, library=grid_input, study="sweep", report=True, runs=study_runs))
HARDEN = register_kind(JobKind(
    "harden", spec=HardenJobSpec, library=grid_input, study="harden", report=True, model="recommended",
    mlflow_model="root", runs=search_runs))
#: A model a client uploaded (``POST /v1/models``): a job that succeeded when it was stored, so uploaded and
#: trained models share one id space, serving, policies and audits.
UPLOAD = register_kind(JobKind("upload", spec=None, library=None, study=None, model="always", model_data="card"))

#: The body of ``POST /v1/jobs``: one of the submittable kinds' specs, told apart by ``kind``.
JobSpec = Annotated[Union[tuple(k.spec for k in kinds() if k.spec is not None)],  # noqa: UP007
                    Field(discriminator="kind")]

__all__ = ["AUDIT", "DIGITS", "GENERATOR_OPTIONS", "HARDEN", "MAX_INT64", "MAX_SEED", "PIPELINE", "SPEC_VERSION",
           "SWEEP", "TRAIN", "UPLOAD", "DefenseSpec", "JobKind", "JobSpec", "Ref", "SpecError", "api_field", "bind",
           "check_public_data", "get_kind", "kind_names", "kinds", "names_where", "references", "register_kind",
           "resolve"]
