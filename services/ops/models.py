"""Models: which checkpoint of a job is its model.

A job's model is its root ``model.json`` + ``model.safetensors`` (a train job, an uploaded model, a
harden job's recommendation); a pipeline's card is its defended target's.
"""

from __future__ import annotations

from services.db.models import Artifact

#: Card names tried first; :func:`card_name` knows pipelines too.
CARD_NAMES = ("model.json",)


def card_name(names: list[str]) -> str | None:
    """The checkpoint a model card describes: a train job's ``model.json``; for a pipeline, the
    defended target of its first seed (``targets/<defense>/seed<k>/model.json``, NoDef last)."""
    if "model.json" in names:
        return "model.json"
    targets = [n for n in names if n.startswith("targets/") and n.endswith("/model.json")]

    def rank(name: str) -> tuple[bool, int, str]:
        parts = name.split("/")
        seed = parts[2].removeprefix("seed") if len(parts) > 3 else ""
        return (parts[1] == "nodef", int(seed) if seed.isdigit() else 0, name)

    if targets:
        return sorted(targets, key=rank)[0]
    return next((n for n in sorted(names) if n.endswith("model.json")), None)


def checkpoint_artifacts(artifacts: dict[str, Artifact]) -> tuple[Artifact, Artifact] | None:
    """The (card, weights) artifacts of the model a job produced, or None."""
    names = [n for n in CARD_NAMES if n in artifacts] + sorted(n for n in artifacts if n.endswith("model.json"))
    for name in names:
        weights = artifacts.get(name.removesuffix("model.json") + "model.safetensors")
        if weights is not None:
            return artifacts[name], weights
    return None


__all__ = ["CARD_NAMES", "card_name", "checkpoint_artifacts"]
