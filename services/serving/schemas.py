"""Request and response shapes of the serving endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PolicyName = Literal["full", "top-k", "rounded", "label-only", "shield"]
STRENGTH = ("Strength s of the `shield` policy, in [0, 1) (default 0.8): every answer becomes (1 - s) p + s t, t a "
            "fixed template of its predicted identity; the prediction and the order of the top list never change.")


class TopEntry(BaseModel):
    """One of the most likely identities."""

    label: int
    identity: str
    probability: float


class Prediction(BaseModel):
    """The answer for one image; which fields appear depends on the model's output policy."""

    input: str = Field(description="The field (and file name) the image came in, e.g. `files[0] (a.png)`.")
    label: int = Field(description="Predicted class index.")
    identity: str = Field(description="Predicted identity (the card's class name).")
    top: list[TopEntry] | None = Field(None, description="Most likely identities (absent under `label-only`).")
    probabilities: list[float] | None = Field(None, description="Every identity's probability (`full` only).")


class PolicyApplied(BaseModel):
    """The output policy an answer was produced under."""

    name: PolicyName
    top_k: int | None = None
    decimals: int | None = None
    strength: float | None = None


class Usage(BaseModel):
    """The calling API key's queries (images) on this model; `budget` absent means unlimited."""

    queries: int
    budget: int | None = None
    remaining: int | None = None


class PredictResponse(BaseModel):
    """Predictions for the submitted images, in order."""

    model: str = Field(description="The job id of the served model.")
    policy: PolicyApplied
    predictions: list[Prediction]
    usage: Usage


class Base64Image(BaseModel):
    """One image as base64 (standard alphabet; a `data:` URL prefix is accepted)."""

    data: str
    name: str | None = None


class PredictJSON(BaseModel):
    """The JSON form of a predict request (the multipart form sends `files` parts instead)."""

    images: list[Base64Image | str] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=100_000)


#: The largest count a database BIGINT holds: budgets and top_k above it are refused (422), not a 500.
MAX_COUNT = 2**63 - 1


class PolicyUpdate(BaseModel):
    """A model's whole output policy and query budget (set by its owner); fields left out take
    their defaults, so a ``PUT`` without ``budget`` removes the budget."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName = "full"
    top_k: int | None = Field(None, ge=1, le=MAX_COUNT,
                              description="Most identities a `top-k`/`rounded`/`shield` answer lists.")
    decimals: int | None = Field(None, ge=0, le=8, description="Rounding of `rounded` (default 2).")
    strength: float | None = Field(None, ge=0, lt=1, description=STRENGTH)
    budget: int | None = Field(
        None, ge=0, le=MAX_COUNT, description="Most images one API key may submit; null: unlimited."
    )
    reset_usage: bool = Field(False, description="Zero every key's query count (a fresh budget).")


class PolicyPatch(BaseModel):
    """Some fields of a model's output policy; the fields left out keep their current values."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName | None = None
    top_k: int | None = Field(None, ge=1, le=MAX_COUNT,
                              description="Most identities a `top-k`/`rounded`/`shield` answer lists.")
    decimals: int | None = Field(None, ge=0, le=8, description="Rounding of `rounded` (default 2).")
    strength: float | None = Field(None, ge=0, lt=1, description=STRENGTH)
    budget: int | None = Field(
        None, ge=0, le=MAX_COUNT, description="Most images one API key may submit; null: unlimited."
    )
    reset_usage: bool = Field(False, description="Zero every key's query count (a fresh budget).")

    @model_validator(mode="after")
    def _policy_not_null(self) -> PolicyPatch:
        if "policy" in self.model_fields_set and self.policy is None:
            raise ValueError("policy: give a policy name or leave the field out")
        return self


class KeyUsage(BaseModel):
    """Queries one API key made on a model."""

    key_id: str
    queries: int
    rejected: int
    last_at: dt.datetime


class PolicyView(BaseModel):
    """A model's output policy, budget and per-key query accounting."""

    job_id: str
    policy: PolicyName
    top_k: int | None
    decimals: int | None
    strength: float | None = None
    budget: int | None
    cost: str | None = Field(None, description="What the policy costs the model's users (the serving-time "
                             "defense `shield`: accuracy unchanged, confidence less informative).")
    usage: list[KeyUsage]


class ServableModel(BaseModel):
    """A model the tenant can call: its card in brief and how it answers."""

    job_id: str
    kind: str
    arch: str | None
    num_classes: int | None
    class_names: list[str]
    image_size: int | None
    channels: int | None
    defense: dict[str, Any] | None
    metrics: dict[str, float] = Field(
        description="Acc (`acc`, %) and, after attack evaluation, AttAcc (%): the metric vocabulary."
    )
    policy: PolicyApplied
    budget: int | None
    created_at: dt.datetime


class ModelPage(BaseModel):
    """One page of servable models, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[ServableModel]
    next_cursor: str | None
