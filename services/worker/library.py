"""The one place that knows how an API job spec maps onto ``midre``'s configs.

The gateway calls :func:`validate_spec` so a bad spec is a 422 naming the field before anything is
queued; the worker calls :func:`train_config` / :func:`study_config` to build the same configs.
``midre`` is imported lazily: the API process never needs torch for a request that fails early.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

DIGITS = "digits"

# "field: message" or "defense.a_h: message" -> the field path the library named.
_FIELD_RE = re.compile(r"^\s*([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*)\s*:")


class SpecError(ValueError):
    """A spec field the library rejected; ``field`` is the dotted path in the API's spec."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def has_study() -> bool:
    """True once ``midre.study`` (attack evaluation + pipeline) is installed."""
    return importlib.util.find_spec("midre.study") is not None


def field_of(exc: Exception, default: str, prefix: str = "") -> str:
    """The field an error from ``midre`` names (``DatasetError.field`` or a ``"field: ..."`` message)."""
    named = getattr(exc, "field", None)
    if not named:
        match = _FIELD_RE.match(str(exc))
        named = match.group(1) if match else None
    if not named:
        return default
    return f"{prefix}{named}" if prefix and not named.startswith(prefix) else named


# TrainConfig field -> where it sits in the API spec (for error messages).
_TRAIN_FIELD_MAP = {"arch": "arch", "defense": "defense", "device": "device", "data": "data"}


def _api_field(lib_field: str) -> str:
    """Translate a TrainConfig field path into the API spec's path."""
    head, _, rest = lib_field.partition(".")
    if head == "data":
        if rest in ("source",):
            return "dataset"
        if rest == "image_size":
            return "training.image_size"
        return lib_field
    if head == "defense" or head.startswith("defense["):
        return lib_field
    return _TRAIN_FIELD_MAP.get(head, f"training.{lib_field}")


def data_dict(spec: dict[str, Any], source: str) -> dict[str, Any]:
    """``midre.data.DatasetSpec`` fields for a job spec whose dataset lives at ``source``."""
    data = {k: v for k, v in (spec.get("data") or {}).items() if v is not None}
    data["source"] = source
    image_size = (spec.get("training") or {}).get("image_size")
    if image_size is not None:
        data["image_size"] = image_size
    return data


def train_dict(spec: dict[str, Any], source: str, device: str | None = None) -> dict[str, Any]:
    """``midre.train.TrainConfig.from_dict`` input for a ``train`` (or ``pipeline``) job spec."""
    training = {k: v for k, v in (spec.get("training") or {}).items() if v is not None and k != "image_size"}
    out: dict[str, Any] = {
        "data": data_dict(spec, source),
        "arch": spec["arch"],
        "defense": dict(spec.get("defense") or {"name": "midre"}),
        **training,
    }
    dev = device or spec.get("device") or "auto"
    out["device"] = dev
    return out


def train_config(spec: dict[str, Any], source: str, device: str | None = None) -> Any:
    """The ``TrainConfig`` of a train job; raises :class:`SpecError` naming the API field."""
    from midre.train import TrainConfig

    try:
        return TrainConfig.from_dict(train_dict(spec, source, device))
    except ValueError as exc:
        raise SpecError(_api_field(field_of(exc, "spec")), _strip_field(str(exc))) from exc


def study_dict(spec: dict[str, Any], source: str | None, model_dir: str | None = None) -> dict[str, Any]:
    """``midre.study`` config input for an ``attack_eval`` or ``pipeline`` job spec."""
    out = {k: v for k, v in spec.items() if k not in ("kind", "dataset", "model_job")}
    if spec["kind"] == "pipeline":
        out.pop("training", None)
        out.pop("data", None)
        out["train"] = {k: v for k, v in train_dict(spec, source or DIGITS).items() if k != "defense"}
        out["defense"] = dict(spec.get("defense") or {"name": "midre"})
    else:
        out["model_dir"] = model_dir
    return out


def study_config(spec: dict[str, Any], source: str | None, model_dir: str | None = None) -> Any:
    """The ``midre.study`` config of an attack_eval / pipeline job; raises :class:`SpecError`."""
    from midre import study

    cls = study.PipelineConfig if spec["kind"] == "pipeline" else study.AttackEvalConfig
    try:
        return cls.from_dict(study_dict(spec, source, model_dir))
    except ValueError as exc:
        raise SpecError(field_of(exc, "spec"), _strip_field(str(exc))) from exc


def _strip_field(message: str) -> str:
    match = _FIELD_RE.match(message)
    return message[match.end():].strip() if match else message


def known_archs() -> list[str]:
    """Architecture names the library knows."""
    from midre.models import list_models

    return list(list_models())


def validate_spec(spec: dict[str, Any], source: str | None) -> None:
    """Check a job spec against the library without running anything.

    Args:
        spec: the API spec (already shape-validated by pydantic), as a dict.
        source: where its dataset lives (``digits``, a folder), or None for attack_eval.

    Raises:
        SpecError: naming the API field at fault (``arch``, ``defense.a_h``, ``training.epochs``...).
    """
    if spec["kind"] in ("train", "pipeline"):
        arch = spec["arch"]
        archs = known_archs()
        if arch not in archs:
            raise SpecError("arch", f"unknown architecture {arch!r}; known: {', '.join(archs)}")
        from midre.defenses import build_defense

        try:
            build_defense(dict(spec.get("defense") or {}))
        except ValueError as exc:
            raise SpecError(field_of(exc, "defense", "defense."), _strip_field(str(exc))) from exc
        # Build the config on CPU: the API host needs no GPU to validate a GPU job.
        train_config(spec, source or DIGITS, device="cpu")
    if spec["kind"] in ("attack_eval", "pipeline"):
        if not has_study():
            raise SpecError("kind", f"{spec['kind']} jobs need midre.study, which is not installed")
        study_config(spec, source, model_dir="/nonexistent" if spec["kind"] == "attack_eval" else None)
