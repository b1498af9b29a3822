"""The public, versioned job specs and their one conversion to ``midre``'s configs.

Imported by the gateway (check and resolve a spec before anything is queued), the worker (run the
resolved config) and the CLI alike; it imports ``midre`` only inside functions, so the gateway's
start-up does not pay for torch until the first spec is resolved.

A spec never names a server path or server-side object: a client names ids of things its tenant
owns (``dataset``, ``model_job``, a defense's ``pretrained_job``). :func:`resolve` turns a spec into
the library config it runs, every default filled in, with those ids kept as references
(``dataset:<id>``, ``job:<id>``); the job row stores that and ``GET /v1/jobs/{id}`` shows it; the
worker's :func:`bind` swaps the references for its own folders and builds exactly that config.

Errors: pydantic refuses unknown keys at every depth of the spec and out-of-range values; the
library's configs raise :class:`midre.errors.ConfigError` with the field path they know, which
:func:`api_field` maps to the spec's path. No message text is ever parsed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Version of the resolved document stored on each job (``resolved.version``).
SPEC_VERSION = 1
DIGITS = "digits"
#: Seeds are stored and compared as 64-bit integers; 2**32 - 1 is plenty and fits every backend.
MAX_SEED = 2**32 - 1
#: Largest count that fits a signed 64-bit integer (database BIGINT).
MAX_INT64 = 2**63 - 1

Device = Literal["auto", "cpu", "cuda"]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class SpecError(ValueError):
    """A spec field that cannot run; ``field`` is its dotted path in the API's spec."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DefenseSpec(BaseModel):
    """A training-time defense and its parameters, e.g. ``{"name": "midre", "a_h": 0.4}``.

    The parameters are those of the defense in ``midre.defenses`` (see docs/defenses.md); an unknown
    one is refused before queueing, naming it (``defense.a_hh``). A parameter that would name a file
    on the server (tl-dmi's ``pretrained``) is not accepted: give ``<param>_job``, the id of a
    succeeded train job of yours whose model takes its place (``{"name": "tl-dmi",
    "pretrained_job": "job_..."}``). Composed defenses give each part's parameters under its name:
    ``{"name": "midre+nls", "midre": {"a_h": 0.8}, "nls": {"alpha": -0.05}}``.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field("midre", min_length=1, max_length=64, description="`nodef` trains without defense.")


class TrainingParams(_Strict):
    """Training hyper-parameters of a ``train`` job; unset ones take the library's defaults."""

    epochs: int = Field(2, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0, le=1)
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    schedule: Literal["none", "multistep", "cosine"] | None = None
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(
        None, max_length=10, description="Learning-rate drops (x0.1) at these fractions of the epochs."
    )
    augment: list[Literal["hflip", "shift"]] | None = Field(None, max_length=2)
    seed: Seed | None = None
    image_size: int | None = Field(None, ge=8, le=1024, description="Square input side in pixels.")
    amp: bool | None = Field(None, description="bfloat16 autocast on CUDA (ignored on CPU).")
    eval_every: int | None = Field(None, ge=1, le=10_000)


class PipelineTrainingParams(_Strict):
    """Target training of a ``pipeline`` study (the same for NoDef and the defense)."""

    epochs: int = Field(2, ge=1, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=65_536)
    lr: float | None = Field(None, gt=0, le=10)
    augment: list[Literal["hflip", "shift"]] | None = Field(None, max_length=2)
    seed: Seed | None = Field(None, description="One seed (same as `seeds: [seed]`).")
    image_size: int | None = Field(None, ge=8, le=1024, description="Square input side in pixels.")


class DataOptions(_Strict):
    """How the dataset is split and preprocessed (``midre.data.DatasetSpec`` fields)."""

    channels: Literal[1, 3] | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: Seed | None = None
    num_private: int | None = Field(None, ge=2, le=1_000_000, description="First K identities are private.")
    max_images_per_identity: int | None = Field(None, ge=2, le=1_000_000)


class EvaluationParams(_Strict):
    """How reconstructions are judged (``midre.study``): the evaluation model and the sample."""

    arch: str | None = Field(None, max_length=100, description="Evaluation model architecture (default resnet18).")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Evaluation model epochs.")
    all_images: bool | None = Field(None, description="Train the evaluation model on all private images.")
    per_identity: int | None = Field(None, ge=1, le=1000, description="Reconstructions per identity.")
    identities: int | None = Field(None, ge=1, le=1_000_000, description="Identities attacked (default all).")
    feature_identities: int | None = Field(None, ge=0, le=100, description="Identities in the feature plots.")
    archs: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None, min_length=1, max_length=8,
        description="Architectures of the judges (independent evaluation models; default the library's panel).",
    )


class BudgetSpec(_Strict):
    """Overrides of one attack's budget (``midre.attacks.AttackBudget`` fields)."""

    steps: int | None = Field(None, ge=0, le=1_000_000)
    restarts: int | None = Field(None, ge=1, le=1000)
    lr: float | None = Field(None, gt=0, le=1000)
    chunk_size: int | None = Field(None, ge=1, le=1_000_000)
    prior_steps: int | None = Field(None, ge=0, le=10_000_000)
    surrogate_epochs: int | None = Field(None, ge=0, le=100_000)
    queries: int | None = Field(None, ge=1, le=MAX_INT64)


class _StudyFields(_Strict):
    """Fields shared by attack_eval and pipeline jobs (``midre.study``)."""

    attacks: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list, max_length=20,
        description="Attack names, e.g. `mi-face`, `deepinversion`, `gmi` (default: the library's).",
    )
    seeds: Annotated[int, Field(ge=1, le=100)] | Annotated[list[Seed], Field(min_length=1, max_length=100)] | None = (
        Field(None, description="Repetitions (a count or explicit seeds).")
    )
    evaluation: EvaluationParams = Field(default_factory=EvaluationParams)
    attack_budgets: dict[str, BudgetSpec] | None = Field(None, description="Per-attack budget overrides.")
    attack_options: dict[str, dict[str, Any]] | None = Field(
        None, description="Per-attack options (checked against each attack's options before queueing)."
    )
    prior_options: dict[str, Any] | None = Field(None, description="GAN prior options (`width`, `resolution`...).")
    device: Device = "auto"


class TrainJobSpec(_Strict):
    """Train a (hardened) classifier on a dataset."""

    kind: Literal["train"]
    dataset: Id = Field(description="`digits` or the id of one of your datasets.")
    arch: str = Field(min_length=1, max_length=100, description="A name from `midre.models`.")
    init_from: Id | None = Field(
        None, description="Id of one of your models (uploaded or trained) to start from: harden it."
    )
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    training: TrainingParams = Field(default_factory=TrainingParams)
    data: DataOptions = Field(default_factory=DataOptions)
    device: Device = "auto"


class AttackEvalJobSpec(_StudyFields):
    """Attack a model of yours (trained by the service or uploaded) and write the privacy report."""

    kind: Literal["attack_eval"]
    model: Id | None = Field(None, description="Id of one of your models: uploaded, or a succeeded train job.")
    model_job: Id | None = Field(None, description="The same as `model` (kept for older clients).")
    dataset: Id | None = Field(
        None,
        description="The private data the model was trained on (`digits` or a dataset id). Needed for an "
        "uploaded model; a model trained by the service knows its own.",
    )
    data: DataOptions = Field(default_factory=DataOptions, description="Split of `dataset` (with `dataset` only).")

    @model_validator(mode="after")
    def _one_model(self) -> AttackEvalJobSpec:
        if (self.model is None) == (self.model_job is None):
            raise ValueError("give the model to attack as `model` (or its older name `model_job`), once")
        if self.dataset is None and self.data.model_fields_set:
            raise ValueError("`data` options need `dataset`")
        return self

    @property
    def model_id(self) -> str:
        """The model under attack."""
        return self.model or self.model_job or ""


class PipelineJobSpec(_StudyFields):
    """The whole study: train NoDef and the defense, attack both, write the privacy-utility report."""

    kind: Literal["pipeline"]
    dataset: Id = Field(description="`digits` or the id of one of your datasets.")
    arch: str = Field(min_length=1, max_length=100)
    init_from: Id | None = Field(
        None, description="Id of one of your models to start every target from (NoDef included)."
    )
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    training: PipelineTrainingParams = Field(default_factory=PipelineTrainingParams)
    data: DataOptions = Field(default_factory=DataOptions)
    public_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of identities used as public data when the attacks need it."
    )


#: A candidate defense of a sweep or harden study: the grammar's text (``"midre:a_h=0.2..0.8/0.2"``,
#: ``"nls"``, ``"midre+nls"``; several joined by ``;``) or a defense object.
Candidate = Annotated[str, Field(min_length=1, max_length=1000)] | DefenseSpec


class _GridFields(_StudyFields):
    """Fields of the studies over a grid of candidate defenses (sweep, harden)."""

    @field_validator("candidates", mode="before", check_fields=False)
    @classmethod
    def _one_string(cls, value: Any) -> Any:
        return _candidate_list(value)

    dataset: Id = Field(description="`digits` or the id of one of your datasets.")
    arch: str = Field(min_length=1, max_length=100)
    init_from: Id | None = Field(
        None, description="Id of one of your models to start every target from (NoDef included)."
    )
    training: PipelineTrainingParams = Field(default_factory=PipelineTrainingParams)
    data: DataOptions = Field(default_factory=DataOptions)
    public_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of identities used as public data when the attacks need it."
    )


def _candidate_list(value: Any) -> Any:
    """A grid given as one string (``"nodef; midre:a_h=0.2..0.8"``) is a list of one string."""
    return [value] if isinstance(value, str) else value


class SweepJobSpec(_GridFields):
    """A pipeline over a grid of candidate defenses: the privacy-utility frontier (every candidate's Acc
    and AttAcc per attack, ± over seeds, the Pareto-optimal ones, a frontier plot per attack)."""

    kind: Literal["sweep"]
    candidates: list[Candidate] | None = Field(
        None, min_length=1, max_length=50,
        description="The grid, e.g. `nodef; midre:a_h=0.1..0.8; nls; bido; midre+nls` (a string, or a list of such "
        "strings and defense objects); NoDef is always the baseline. Default: the library's grid.",
    )
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="Also recommend the strongest candidate within this accuracy drop (points)."
    )


class HardenJobSpec(_GridFields):
    """Harden to a budget: search the candidates (a coarse grid, refined around the best a_h, clearly
    dominated ones stopped early) for the one that lowers leakage most within `max_accuracy_drop`;
    the recommendation's checkpoint becomes this job's model."""

    kind: Literal["harden"]
    max_accuracy_drop: float = Field(1.0, ge=0, le=100, description="Utility budget: most accuracy points lost.")
    candidates: list[Candidate] | None = Field(
        None, min_length=1, max_length=50,
        description="The coarse grid, a string or a list as in a sweep (default `midre:a_h=0.2..0.8/0.2`).",
    )
    refine: bool | None = Field(None, description="Refine a_h around the best MIDRE candidate (default true).")
    finalists: int | None = Field(None, ge=1, le=20, description="Candidates that run every seed after screening.")


#: Kinds that are studies over a grid of candidates (their config comes from ``midre.plan.study_config``).
GRID_KINDS = ("sweep", "harden")

JobSpec = Annotated[
    TrainJobSpec | AttackEvalJobSpec | PipelineJobSpec | SweepJobSpec | HardenJobSpec, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Ref:
    """An id a spec names: ``what`` is ``dataset`` or ``job``; ``field`` its place in the spec."""

    field: str
    what: Literal["dataset", "job"]
    id: str

    @property
    def token(self) -> str:
        """How the resolved config holds it until the worker binds it: ``dataset:<id>`` / ``job:<id>``."""
        return f"{self.what}:{self.id}"


def _defense_parts(defense: dict[str, Any], field: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(name, field path, params)`` of each part of a (possibly composed) defense spec."""
    name = str(defense.get("name", ""))
    if "+" in name:
        for part in name.split("+"):
            params = defense.get(part)
            if isinstance(params, dict):
                yield part, f"{field}.{part}", params
    else:
        yield name, field, defense


def _defense_refs(defense: dict[str, Any], field: str) -> list[Ref]:
    """Check a defense spec for file parameters; its ``<param>_job`` ids as references."""
    from midre.defenses import defense_path_params

    refs = []
    for name, where, params in _defense_parts(defense, field):
        for param in defense_path_params(name):
            if param in params:
                raise SpecError(
                    f"{where}.{param}",
                    f"names a file on the server and cannot be set in a job spec; give `{param}_job`: the id "
                    "of your succeeded train job whose model to use",
                )
            job = params.get(f"{param}_job")
            if job is not None:
                if not isinstance(job, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", job):
                    raise SpecError(f"{where}.{param}_job", "must be a job id")
                refs.append(Ref(f"{where}.{param}_job", "job", job))
    return refs


def references(spec: dict[str, Any]) -> list[Ref]:
    """Every id the spec names, for the gateway to check that the tenant owns it."""
    refs = []
    if spec.get("dataset") not in (None, DIGITS):
        refs.append(Ref("dataset", "dataset", spec["dataset"]))
    for field in ("model", "model_job", "init_from"):
        if spec.get(field):
            refs.append(Ref(field, "job", spec[field]))
    if spec.get("defense"):
        refs.extend(_defense_refs(spec["defense"], "defense"))
    candidates = spec.get("candidates")
    for i, candidate in enumerate(candidates if isinstance(candidates, list) else []):
        if isinstance(candidate, dict):
            refs.extend(_defense_refs(candidate, f"candidates[{i}]"))
    return refs


def _library_defense(defense: dict[str, Any]) -> dict[str, Any]:
    """The defense dict for ``midre``: ``<param>_job`` ids become ``job:<id>`` tokens."""
    from midre.defenses import defense_path_params

    out = copy.deepcopy(defense)
    for name, _, params in _defense_parts(out, "defense"):
        for param in defense_path_params(name):
            job = params.pop(f"{param}_job", None)
            if job is not None:
                params[param] = f"job:{job}"
    return out


# --------------------------------------------------------------------------- spec -> library dict

_DATA_KEYS = ("channels", "test_fraction", "split_seed", "num_private", "max_images_per_identity")
_PIPELINE_TRAINING_KEYS = ("image_size", "epochs", "batch_size", "lr", "augment")
#: API ``evaluation`` keys -> study config fields.
_EVALUATION_KEYS = {
    "arch": "eval_arch",
    "epochs": "eval_epochs",
    "all_images": "eval_all_images",
    "per_identity": "per_identity",
    "identities": "identities",
    "feature_identities": "feature_identities",
    "archs": "eval_archs",
}
_STUDY_PASS = ("attacks", "seeds", "attack_options", "prior_options", "device", "public_fraction")


def _present(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if v is not None}


def _dataset_token(spec: dict[str, Any]) -> str:
    return DIGITS if spec["dataset"] == DIGITS else f"dataset:{spec['dataset']}"


#: DatasetSpec fields an attack evaluation takes from the target's card, not from a data spec.
_CARD_DATA_FIELDS = ("image_size", "channels", "normalize")


def library_dict(spec: dict[str, Any], inherited_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The input of the library config a spec runs (``TrainConfig`` / ``PipelineConfig`` /
    ``AttackEvalConfig`` fields), with ids as ``dataset:<id>`` / ``job:<id>`` tokens."""
    kind = spec["kind"]
    if kind == "train":
        training = _present(spec.get("training"))
        data = {**_present(spec.get("data")), "source": _dataset_token(spec)}
        if "image_size" in training:
            data["image_size"] = training.pop("image_size")
        return {"data": data, "arch": spec["arch"], "defense": _library_defense(spec.get("defense") or {}),
                "device": spec.get("device", "auto"), **_init_from(spec), **training}
    out: dict[str, Any] = {k: spec[k] for k in _STUDY_PASS if spec.get(k) not in (None, [], {})}
    for key, value in _present(spec.get("evaluation")).items():
        out[_EVALUATION_KEYS[key]] = value
    budgets = {attack: _present(b) for attack, b in (spec.get("attack_budgets") or {}).items()}
    if budgets:
        out["attack_budgets"] = budgets
    if kind == "attack_eval":
        out["target"] = f"job:{spec.get('model') or spec['model_job']}"
        if spec.get("dataset"):
            out["data"] = {**_present(spec.get("data")), "source": _dataset_token(spec)}
        elif inherited_data:  # the data the model was trained on, as its own train job resolved it
            out["data"] = {k: v for k, v in inherited_data.items() if k not in _CARD_DATA_FIELDS}
        return out
    out["data"] = _dataset_token(spec)
    out["arch"] = spec["arch"]
    if kind in GRID_KINDS:
        for key in ("max_accuracy_drop", "refine", "finalists"):
            if spec.get(key) is not None:
                out[key] = spec[key]
        candidates = spec.get("candidates")
        if candidates is not None:
            out["candidates"] = [_library_defense(c) if isinstance(c, dict) else c for c in candidates]
    else:
        defense = _library_defense(spec.get("defense") or {"name": "midre"})
        out["defenses"] = [defense] if defense.get("name") == "nodef" else [{"name": "nodef"}, defense]
    out.update(_present(spec.get("data")))
    training = _present(spec.get("training"))
    seed = training.pop("seed", None)
    if seed is not None and "seeds" not in out:
        out["seeds"] = [seed]
    out.update({k: v for k, v in training.items() if k in _PIPELINE_TRAINING_KEYS})
    out.update(_init_from(spec))
    return out


def _init_from(spec: dict[str, Any]) -> dict[str, Any]:
    """``weights_path`` (bound to the model's folder by the worker) and ``init_from`` (its id, kept)."""
    model = spec.get("init_from")
    return {"weights_path": f"job:{model}", "init_from": f"job:{model}"} if model else {}


# --------------------------------------------------------------------------- library field -> API field

_STUDY_TO_API = {
    "data": "dataset",
    "target": "model",
    "weights_path": "init_from",
    **{k: f"data.{k}" for k in _DATA_KEYS},
    **{k: f"training.{k}" for k in _PIPELINE_TRAINING_KEYS},
    **{v: f"evaluation.{k}" for k, v in _EVALUATION_KEYS.items()},
}


def api_field(kind: str, field: str, spec: dict[str, Any] | None = None) -> str:
    """Where a library config field (as a :class:`~midre.errors.ConfigError` names it) sits in the spec."""
    head = re.split(r"[.\[]", field, maxsplit=1)[0]
    rest = field[len(head):]
    if kind == "train":
        if head == "data":
            sub = rest.removeprefix(".")
            if sub == "source":
                return "dataset"
            return "training.image_size" if sub == "image_size" else field or "data"
        if head in ("defense", "arch", "device", ""):
            return field or "spec"
        if head == "weights_path":
            return "init_from"
        return f"training.{field}"
    if kind == "attack_eval" and head == "data":
        return "dataset" if rest == ".source" else field
    if head == "defenses" and kind in GRID_KINDS:
        return "candidates"  # a grid study's defenses are its parsed candidates
    if head == "defenses":
        # The study's defense list is [nodef, <the spec's defense>] (or just [nodef]).
        return "defense" + re.sub(r"^\[\d+\]", "", rest)
    if head == "seeds" and spec is not None and spec.get("seeds") is None:
        return "training.seed"
    return _STUDY_TO_API.get(head, head or "spec") + rest


# --------------------------------------------------------------------------- resolve and bind


def _config_class(kind: str) -> Any:
    if kind == "train":
        from midre.train import TrainConfig

        return TrainConfig
    from midre import study

    return study.PipelineConfig if kind == "pipeline" else study.AttackEvalConfig


def _build(kind: str, data: dict[str, Any], spec: dict[str, Any] | None = None) -> Any:
    from midre.errors import ConfigError

    try:
        if kind in GRID_KINDS:
            try:
                from midre.plan import study_config
            except ImportError:
                raise SpecError("kind", f"this service's midre has no {kind} studies") from None
            return study_config(kind, data)
        return _config_class(kind).from_dict(data)
    except ConfigError as exc:
        raise SpecError(api_field(kind, exc.field, spec), exc.message) from None


def _ref_paths(config: dict[str, Any], tokens: set[str]) -> dict[str, str]:
    """Paths in a resolved config that hold one of the spec's own reference ``tokens`` -> the token.

    Only tokens made from ids the gateway checked count: the same text given as any other value
    stays plain text and is never bound to a folder."""
    out: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, str) and value in tokens:
            out[path] = value

    # Only where a reference may stand: the data source, the target, the starting weights, a defense's
    # file parameters (``init_from`` holds the same token as a label and is never bound).
    for key in ("data", "target", "weights_path", "defense", "defenses"):
        if key in config:
            walk(config[key], key)
    return out


#: Attack options that name a generator file or size a random one: library and CLI only. A request never
#: reaches a server path, and a random generator's size is not bounded by anything a tenant pays for.
GENERATOR_OPTIONS = ("stylegan2", "stylegan2_random")


def _refuse_generator_files(spec: dict[str, Any]) -> None:
    for attack, options in (spec.get("attack_options") or {}).items():
        for name in GENERATOR_OPTIONS:
            if isinstance(options, dict) and name in options:
                raise SpecError(f"attack_options.{attack}.{name}",
                                "the service takes no generator files or random generators: the high-resolution "
                                "attacks use the GAN prior it trains on the public identities (StyleGAN2 weights "
                                "work with the library and `midre pipeline`)")


def resolve(spec: dict[str, Any], inherited_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a spec against the library and return what the worker will run.

    Args:
        spec: a validated API spec (``JobSpec`` model dumped to JSON), ids already checked for ownership.
        inherited_data: for an ``attack_eval`` without ``dataset``, the resolved data spec of the train
            job that made the model (its source a ``dataset:<id>`` token or ``digits``), so the worker
            binds the data by id instead of reading a server path back from the model's card.

    Returns:
        ``{"version", "kind", "config", "refs"}``: ``config`` is the library config's ``to_dict()``
        with every default filled in, ids kept as tokens; ``refs`` maps each token's path in
        ``config`` to the token.

    Raises:
        SpecError: naming the spec's field at fault.
    """
    kind = spec["kind"]
    _refuse_generator_files(spec)
    tokens = {ref.token for ref in references(spec)}  # file parameters of defenses are refused here
    inherited = inherited_data if kind == "attack_eval" and not spec.get("dataset") else None
    if inherited and str(inherited.get("source", "")).startswith("dataset:"):
        tokens.add(inherited["source"])
    config = _build(kind, library_dict(spec, inherited), spec).to_dict()
    if kind != "train":
        config.pop("cache_dir", None)
    return {"version": SPEC_VERSION, "kind": kind, "config": config, "refs": _ref_paths(config, tokens)}


def _set_path(doc: Any, path: str, value: Any) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for part in parts[:-1]:
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    last = parts[-1]
    if last.startswith("["):
        doc[int(last[1:-1])] = value
    else:
        doc[last] = value


def bind(resolved: dict[str, Any], lookup: Callable[[str], str], cache_dir: str | None = None) -> Any:
    """The library config of a resolved job, with each reference replaced by ``lookup(token)``
    (the worker's folder for that dataset or job) and the study cache at ``cache_dir``."""
    if resolved.get("version") != SPEC_VERSION:
        raise SpecError("resolved", f"version {resolved.get('version')!r} is not {SPEC_VERSION}")
    kind = resolved["kind"]
    config = copy.deepcopy(resolved["config"])
    for path, token in resolved.get("refs", {}).items():
        _set_path(config, path, lookup(token))
    if kind != "train":
        config["cache_dir"] = cache_dir
    return _build(kind, config)


def check_public_data(spec: dict[str, Any], model_resolved: dict[str, Any] | None) -> None:
    """Refuse an attack_eval whose attacks need public identities that the target's data lacks.

    ``model_resolved`` is the resolved config of the train job that made the target.
    """
    from midre.attacks import needs_public_data, resolve_attack_name

    if spec["kind"] != "attack_eval":
        return
    if spec.get("dataset"):  # the spec says which data the model was trained on, and how it is split
        data = spec.get("data") or {}
    elif model_resolved is not None:
        data = (model_resolved.get("config") or {}).get("data") or {}
    else:
        return
    if data.get("num_private") is not None:
        return
    attacks = spec.get("attacks") or _config_class("attack_eval").__dataclass_fields__["attacks"].default_factory()
    for i, attack in enumerate(attacks):
        try:
            needed = needs_public_data(resolve_attack_name(attack))
        except ValueError as exc:
            raise SpecError(f"attacks[{i}]", str(exc)) from None
        if needed:
            raise SpecError(
                f"attacks[{i}]" if spec.get("attacks") else "attacks",
                f"{resolve_attack_name(attack)} needs public identities (a GAN prior), and model "
                f"{spec.get('model') or spec.get('model_job')} was trained on every identity of its data set: "
                "set `data.num_private` (for a model you trained here: when training it), or choose attacks "
                "that need no public data (mi-face, deepinversion)",
            )
