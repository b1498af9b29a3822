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


#: Study config fields that name server-side paths: set by the worker, never by a client.
SERVER_ONLY_FIELDS = ("cache_dir", "public_data", "eval_model", "target", "defenses")
#: API ``data`` options and ``training`` keys that are flat ``PipelineConfig`` fields.
_DATA_KEYS = ("channels", "test_fraction", "split_seed", "num_private", "max_images_per_identity")
_TRAINING_KEYS = ("image_size", "epochs", "batch_size", "lr", "augment")
#: API ``evaluation`` keys -> study config fields.
_EVALUATION_KEYS = {
    "arch": "eval_arch",
    "epochs": "eval_epochs",
    "all_images": "eval_all_images",
    "per_identity": "per_identity",
    "identities": "identities",
    "feature_identities": "feature_identities",
}
_STUDY_TO_API = {
    "data": "dataset",
    "defenses": "defense",
    **{k: f"data.{k}" for k in _DATA_KEYS},
    **{k: f"training.{k}" for k in _TRAINING_KEYS},
    **{v: f"evaluation.{k}" for k, v in _EVALUATION_KEYS.items()},
}
_STUDY_FIELD_RE = re.compile(r"(?:PipelineConfig|AttackEvalConfig)(?:\.(\w+)|: unknown field '(\w+)')")


def study_dict(
    spec: dict[str, Any], source: str | None, model_dir: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """``midre.study`` config input (``PipelineConfig`` / ``AttackEvalConfig`` fields) for a job spec.

    The API spec nests what the library keeps flat: ``training.*`` -> ``epochs``, ``batch_size``...;
    ``data.*`` -> ``DatasetSpec`` fields; ``evaluation.*`` -> ``eval_arch``, ``per_identity``...;
    ``defense`` -> ``defenses = [nodef, defense]`` (the NoDef-vs-defense study). Other keys (``seeds``,
    ``attack_budgets``, ``attack_options``, ``prior_options``, ``public_fraction``) pass through.
    """
    for name in SERVER_ONLY_FIELDS:
        if name in spec:
            raise SpecError(name, "is set by the service and cannot be given in a job spec")
    reserved = {"kind", "dataset", "model_job", "arch", "defense", "training", "data", "evaluation", "attacks"}
    out: dict[str, Any] = {k: v for k, v in spec.items() if k not in reserved and v is not None}
    if spec.get("attacks"):
        out["attacks"] = spec["attacks"]
    for key, value in (spec.get("evaluation") or {}).items():
        if key not in _EVALUATION_KEYS:
            raise SpecError(f"evaluation.{key}", f"unknown; known: {', '.join(_EVALUATION_KEYS)}")
        if value is not None:
            out[_EVALUATION_KEYS[key]] = value
    if spec["kind"] == "pipeline":
        out["data"] = source or DIGITS
        out["arch"] = spec["arch"]
        defense = dict(spec.get("defense") or {"name": "midre"})
        out["defenses"] = [defense] if defense.get("name") == "nodef" else [{"name": "nodef"}, defense]
        for key, value in (spec.get("data") or {}).items():
            if value is not None:
                out[key] = value
        training = dict(spec.get("training") or {})
        seed = training.pop("seed", None)
        if seed is not None and "seeds" not in out:
            out["seeds"] = [seed]
        for key, value in training.items():
            if value is not None:
                out[key] = value
    else:
        out["target"] = model_dir or "model"
    if cache_dir is not None:
        out["cache_dir"] = cache_dir
    return out


def _study_field(exc: Exception, spec: dict[str, Any]) -> str:
    match = _STUDY_FIELD_RE.search(str(exc))
    name = (match.group(1) or match.group(2)) if match else None
    if not name:
        return "spec"
    if name not in _STUDY_TO_API and name in (spec.get("training") or {}):
        return f"training.{name}"
    return _STUDY_TO_API.get(name, name)


def study_config(
    spec: dict[str, Any], source: str | None, model_dir: str | None = None, cache_dir: str | None = None
) -> Any:
    """The ``midre.study`` config of an attack_eval / pipeline job; raises :class:`SpecError`."""
    from midre import study

    cls = study.PipelineConfig if spec["kind"] == "pipeline" else study.AttackEvalConfig
    data = study_dict(spec, source, model_dir, cache_dir)
    try:
        return cls.from_dict(data)
    except ValueError as exc:
        raise SpecError(_study_field(exc, spec), str(exc)) from exc


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
        if spec["kind"] == "train":
            # Build the config on CPU: the API host needs no GPU to validate a GPU job.
            train_config(spec, source or DIGITS, device="cpu")
    if spec["kind"] in ("attack_eval", "pipeline"):
        eval_arch = (spec.get("evaluation") or {}).get("arch")
        if eval_arch is not None and eval_arch not in known_archs():
            raise SpecError("evaluation.arch", f"unknown architecture {eval_arch!r}; known: {', '.join(known_archs())}")
        if not has_study():
            raise SpecError("kind", f"{spec['kind']} jobs need midre.study, which is not installed")
        study_config(spec, source, model_dir="model")
