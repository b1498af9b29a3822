"""What every unit of one study shares: its private (and public) data, its device, its cache.

Loaded once per process and study (:func:`study_context`), so the units of a study that one worker
runs one after the other load the data once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midre.device import resolve_device
from midre.errors import ConfigError


@dataclass
class StudyContext:
    """What every unit of one study needs: the data, where to cache, which identities to attack."""

    spec: Any
    splits: Any
    public: Any
    num_private: int | None
    public_note: str | None
    device: str
    cache_dir: str
    ids: list[int]


_CONTEXTS: dict[tuple[str, str], StudyContext] = {}


def study_context(config: Any, out_dir: str | Path) -> StudyContext:
    """Load the private (and public) data of a study; cached per (config, out_dir) in this process."""
    from midre.data import load_dataset

    out = Path(out_dir)
    cache_key = (json.dumps(config.to_dict(), sort_keys=True, default=str), str(out.resolve()))
    if cache_key in _CONTEXTS:
        return _CONTEXTS[cache_key]
    num_private, public_note = _private_identities(config)
    spec = config.dataset_spec(num_private)
    splits = load_dataset(spec)
    config.check_data(splits)
    num_ids = len(splits.class_names)
    ctx = StudyContext(spec=spec, splits=splits, public=_public_images(config, spec, splits), num_private=num_private,
                       public_note=public_note, device=str(resolve_device(config.device)),
                       cache_dir=str(Path(config.cache_dir) if config.cache_dir else out / "cache"),
                       ids=list(range(min(num_ids, config.identities or num_ids))))
    _CONTEXTS.clear()  # one study at a time per process is the common case; keep memory bounded
    _CONTEXTS[cache_key] = ctx
    return ctx


def _needs_public(config: Any) -> bool:
    from midre.attacks import needs_public_data

    return any(needs_public_data(a) for a in config.attacks)


def _private_identities(config: Any) -> tuple[int | None, str | None]:
    """``(num_private, note)``: a study that may split its data makes the last identities public when
    its attacks need public images and none were given."""
    if not (config.splits_public and _needs_public(config) and config.public_data is None):
        return None, None
    spec = config.dataset_spec()
    if spec.num_private is not None:
        return None, None
    total = _count_identities(spec)
    num_private = max(2, total - max(1, math.ceil(config.public_fraction * total)))
    return num_private, (f"no public data given: identities {num_private + 1}..{total} (sorted by name) are public, "
                         f"the first {num_private} private")


def _public_images(config: Any, spec: Any, splits: Any) -> Any:
    from midre.priors import PublicData

    if not _needs_public(config):
        return None
    if config.public_data:
        return load_public(config.public_data, spec)
    if splits.public is not None:
        return PublicData.from_images(splits.public.images, f"{spec.source}: {len(splits.public_class_names)} "
                                      "non-private identities")
    raise ConfigError("public_data", "the attacks need public images and the private data set has no public "
                                     "identities: give a public data set, or split the private one (num_private)")


def load_public(path: str, like: Any) -> Any:
    """Load a separate public data set at the private data's size/channels (all of its images)."""
    from midre.data import load_dataset
    from midre.priors import PublicData

    spec = dataclasses.replace(like, source=path, num_private=None, test_fraction=0.0,
                               max_images_per_identity=None)
    images = load_dataset(spec).train.images
    return PublicData.from_images(images, f"{path} ({images.shape[0]} images, all identities)")


def load_judges(config: Any, ctx: Any) -> Any:
    """The study's :class:`midre.evaluation.judges.JudgePanel`: the given evaluation model, or every
    judge its own unit trained."""
    from midre.evaluation.eval_model import load_evaluation_model
    from midre.evaluation.judges import JudgePanel

    if getattr(config, "eval_model", None):
        judge = load_evaluation_model(config.eval_model, device=ctx.device)
        if judge.class_names and list(judge.class_names) != list(ctx.splits.class_names):
            raise ValueError("eval_model: its identities differ from the target's")
        return JudgePanel([judge])
    return JudgePanel.load(ctx.spec, ctx.cache_dir, config.judge_configs(), device=ctx.device)


def _count_identities(spec: Any) -> int:
    from midre.data import load_dataset

    return len(load_dataset(dataclasses.replace(spec, num_private=None)).class_names)


__all__ = ["StudyContext", "load_judges", "load_public", "study_context"]
