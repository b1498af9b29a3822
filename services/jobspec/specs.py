"""The public job specs: what a client may send to ``POST /v1/jobs``, one pydantic class per kind.

A spec never names a server path or server-side object: a client names ids of things its tenant
owns (``dataset``, ``model``, ``init_from``, a defense's ``pretrained_job``). Pydantic refuses unknown
keys at every depth of a spec and out-of-range values; the library's own checks come when the spec
is resolved (:mod:`services.jobspec.resolve`). Each kind is registered once, with its spec class, in
:mod:`services.jobspec.kinds`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    devices: int | None = Field(
        None, ge=1, le=64,
        description="Train with DistributedDataParallel over this many processes (NCCL on GPUs, gloo on CPU), "
        "`batch_size` being the global batch; each process erases with its own random stream. The unit runs on "
        "a worker with that many devices free (`MIDRE_WORKER_DEVICES`). Default 1.",
    )


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
        None, description="Per-attack options (checked against each attack's options before queueing); "
                          "`adaptive: true` (and `eot_samples`, default 4) runs the attack adaptively as well."
    )
    prior_options: dict[str, Any] | None = Field(None, description="GAN prior options (`width`, `resolution`...).")
    adaptive: bool | None = Field(
        None, description="Also run every white-box attack adaptively (it optimises through the defense's "
                          "training-time transform); one attack only: `attack_options.<attack>.adaptive`.",
    )
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


class DeploymentTarget(BaseModel):
    """Audit a model as it is served: through its output policy, within one client's query budget."""

    model_config = ConfigDict(extra="forbid")

    model: Id = Field(description="Id of one of your served models (what `GET /v1/models` lists).")
    budget: int | None = Field(None, ge=1, le=2**63 - 1, description="Queries the attacker may make, as one "
                               "predict key (default: the model's budget per key; none: unlimited).")


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
    deployment: DeploymentTarget | None = Field(
        None, description="Attack the model as it is served: the black-box and label-only attacks query it "
        "through its current output policy and a client's query budget; white-box attacks are refused. "
        "`model` may then be left out.")

    @model_validator(mode="after")
    def _one_model(self) -> AttackEvalJobSpec:
        given = [m for m in (self.model, self.model_job) if m is not None]
        if self.deployment is not None and not given:
            self.model = self.deployment.model  # the served model is the audited one
            given = [self.model]
        elif self.deployment is not None and self.deployment.model != given[0]:
            raise ValueError("deployment.model: the audited model is `model`; leave one of them out")
        if len(given) != 1:
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
    max_seeds: int | None = Field(
        None, ge=1, le=50, description="Seeds a finalist may reach when its comparison with NoDef is undecided "
                                       "(one more at a time; default 5).",
    )
