"""A spec's one conversion to the library config it runs, and the worker's binding of that config.

:func:`resolve` runs once, when a job is submitted: it checks the spec against the library (the
library's configs raise :class:`midre.errors.ConfigError` with the field path they know, which
:func:`api_field` maps to the spec's path; no message text is ever parsed) and returns the library
config with every default filled in, the ids the spec names kept as references (``dataset:<id>``,
``job:<id>``). The job row stores that; ``GET /v1/jobs/{id}`` shows it; every unit of the job reads
it through :func:`bind`, which swaps the references for the worker's own folders and builds the
config as it is (no second validation).

It imports ``midre`` only inside functions, so the gateway's start-up does not pay for torch until
the first spec is resolved.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from services.jobspec.kinds import JobKind, get_kind
from services.jobspec.specs import DIGITS, SpecError

#: Version of the resolved document stored on each job (``resolved.version``). A study config written with
#: its data spec's fields flat beside ``data`` reads the same (``midre.study.fold_data_fields``).
SPEC_VERSION = 1


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
    if isinstance(spec.get("deployment"), dict) and spec["deployment"].get("model") and not (
            spec.get("model") or spec.get("model_job")):
        refs.append(Ref("deployment.model", "job", spec["deployment"]["model"]))
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



# --------------------------------------------------------------------------- spec -> library input

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
_STUDY_PASS = ("attacks", "seeds", "attack_options", "prior_options", "device", "public_fraction", "adaptive")
_STUDY_TRAINING_KEYS = ("epochs", "batch_size", "lr", "augment")
#: DatasetSpec fields an attack evaluation takes from the target's card, not from a data spec.
_CARD_DATA_FIELDS = ("image_size", "channels", "normalize")


def _present(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if v is not None}


def _data(spec: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """The data spec of a job that trains: the dataset as a token, its split, ``training.image_size``."""
    token = DIGITS if spec["dataset"] == DIGITS else f"dataset:{spec['dataset']}"
    data = {**_present(spec.get("data")), "source": token}
    if "image_size" in training:
        data["image_size"] = training.pop("image_size")
    return data


def _init_from(spec: dict[str, Any]) -> dict[str, Any]:
    """``weights_path`` (bound to the model's folder by the worker) and ``init_from`` (its id, kept)."""
    model = spec.get("init_from")
    return {"weights_path": f"job:{model}", "init_from": f"job:{model}"} if model else {}


def train_input(spec: dict[str, Any], inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """``TrainConfig`` fields of a training spec."""
    training = _present(spec.get("training"))
    data = _data(spec, training)
    return {"data": data, "arch": spec["arch"], "defense": _library_defense(spec.get("defense") or {}),
            "device": spec.get("device", "auto"), **_init_from(spec), **training}


def _attack_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The fields every study that attacks shares (attacks, seeds, judges, budgets, options)."""
    out: dict[str, Any] = {k: spec[k] for k in _STUDY_PASS if spec.get(k) not in (None, [], {})}
    for key, value in _present(spec.get("evaluation")).items():
        out[_EVALUATION_KEYS[key]] = value
    budgets = {attack: _present(b) for attack, b in (spec.get("attack_budgets") or {}).items()}
    if budgets:
        out["attack_budgets"] = budgets
    return out


#: What a REST audit runs when its spec does not say: two seeds (the least that has a spread) and judges
#: trained for 10 epochs, so the first audit of a small model takes minutes on 2 CPU cores (the judges are
#: cached per tenant and data set, so later audits take less; see docs/service.md).
AUDIT_DEFAULTS = {"seeds": 2, "eval_epochs": 10}


def audit_input(spec: dict[str, Any], inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """``AttackEvalConfig`` fields of an audit of a model: the data named in the spec, or the data the
    model's own job trained it on (``inherited``); :data:`AUDIT_DEFAULTS` where the spec is silent."""
    out = {**AUDIT_DEFAULTS, **_attack_settings(spec)}
    out["target"] = f"job:{spec.get('model') or spec.get('model_job') or spec['deployment']['model']}"
    if spec.get("dataset"):
        out["data"] = _data(spec, {})
    elif inherited:
        out["data"] = {k: v for k, v in inherited.items() if k not in _CARD_DATA_FIELDS}
    return out


def _trained_study_input(spec: dict[str, Any]) -> dict[str, Any]:
    out = _attack_settings(spec)
    training = _present(spec.get("training"))
    out["data"] = _data(spec, training)
    out["arch"] = spec["arch"]
    seed = training.pop("seed", None)
    if seed is not None and "seeds" not in out:
        out["seeds"] = [seed]
    out.update({k: v for k, v in training.items() if k in _STUDY_TRAINING_KEYS})
    out.update(_init_from(spec))
    return out


def pipeline_input(spec: dict[str, Any], inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """``PipelineConfig`` fields: NoDef and the spec's defense."""
    out = _trained_study_input(spec)
    defense = _library_defense(spec.get("defense") or {"name": "midre"})
    out["defenses"] = [defense] if defense.get("name") == "nodef" else [{"name": "nodef"}, defense]
    return out


def grid_input(spec: dict[str, Any], inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fields of a study over a grid of candidate defenses (a sweep, a harden search)."""
    out = _trained_study_input(spec)
    for key in ("max_accuracy_drop", "refine", "finalists", "max_seeds"):
        if spec.get(key) is not None:
            out[key] = spec[key]
    candidates = spec.get("candidates")
    if candidates is not None:
        out["candidates"] = [_library_defense(c) if isinstance(c, dict) else c for c in candidates]
    return out


# --------------------------------------------------------------------------- library field -> API field

_STUDY_TO_API = {
    "target": "model",
    "weights_path": "init_from",
    **{k: f"training.{k}" for k in _STUDY_TRAINING_KEYS},
    **{v: f"evaluation.{k}" for k, v in _EVALUATION_KEYS.items()},
}


def api_field(kind: JobKind, field: str, spec: dict[str, Any] | None = None) -> str:
    """Where a library config field (as a :class:`~midre.errors.ConfigError` names it) sits in the spec."""
    spec = spec or {}
    head = re.split(r"[.\[]", field, maxsplit=1)[0]
    rest = field[len(head):]
    if head == "data":
        sub = rest.removeprefix(".")
        if sub == "source":
            return "dataset"
        return "training.image_size" if sub == "image_size" and "training" in spec else field
    if not kind.report:  # a training job: its hyper-parameters sit under `training`
        if head in ("defense", "arch", "device", ""):
            return field or "spec"
        return "init_from" if head == "weights_path" else f"training.{field}"
    if head == "defenses":  # a grid's defenses are its parsed candidates; a pipeline's are [nodef, defense]
        return "candidates" if "candidates" in spec else "defense" + re.sub(r"^\[\d+\]", "", rest)
    if head == "seeds" and spec.get("seeds") is None and "training" in spec:
        return "training.seed"
    return _STUDY_TO_API.get(head, head or "spec") + rest


# --------------------------------------------------------------------------- resolve and bind


def _build(kind: JobKind, data: dict[str, Any], spec: dict[str, Any] | None = None, *, check: bool = True) -> Any:
    from midre.errors import ConfigError
    from midre.plan import study_config

    try:
        return study_config(kind.study or "", data, check=check)
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


def resolve(spec: dict[str, Any], inherited_data: dict[str, Any] | None = None,
            deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a spec against the library and return what the worker will run.

    Args:
        spec: a validated API spec (``JobSpec`` model dumped to JSON), ids already checked for ownership.
        inherited_data: for an audit without ``dataset``, the resolved data spec of the job that made the
            model (its source a ``dataset:<id>`` token or ``digits``), so the worker binds the data by id
            instead of reading a server path back from the model's card.
        deployment: for an audit of a served model (``deployment`` in the spec), how it is served now
            (:class:`midre.deployment.Deployment` fields: its policy and a client's query budget).

    Returns:
        ``{"version", "kind", "config", "refs"}``: ``config`` is the library config's ``to_dict()``
        with every default filled in, ids kept as tokens; ``refs`` maps each token's path in
        ``config`` to the token.

    Raises:
        SpecError: naming the spec's field at fault.
    """
    kind = get_kind(spec["kind"])
    if kind.library is None:
        raise SpecError("kind", f"{kind.name} jobs are not submitted")
    _refuse_generator_files(spec)
    tokens = {ref.token for ref in references(spec)}  # file parameters of defenses are refused here
    inherited = inherited_data if kind.audits and not spec.get("dataset") else None
    if inherited and str(inherited.get("source", "")).startswith("dataset:"):
        tokens.add(inherited["source"])
    fields = kind.library(spec, inherited)
    if deployment is not None:
        fields["deployment"] = deployment
    config = _build(kind, fields, spec).to_dict()
    if kind.report:
        config.pop("cache_dir", None)
        config.pop("inception_weights", None)
    return {"version": SPEC_VERSION, "kind": kind.name, "config": config, "refs": _ref_paths(config, tokens)}


def _set_path(doc: Any, path: str, value: Any) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for part in parts[:-1]:
        doc = doc[int(part[1:-1])] if part.startswith("[") else doc[part]
    last = parts[-1]
    if last.startswith("["):
        doc[int(last[1:-1])] = value
    else:
        doc[last] = value


def bind(resolved: dict[str, Any], lookup: Callable[[str], str], cache_dir: str | None = None,
         inception_weights: Any = None) -> Any:
    """The library config of a resolved job, with each reference replaced by ``lookup(token)`` (the
    worker's folder for that dataset or job), the study cache at ``cache_dir`` and the operator's
    Inception-v3 weights (``MIDRE_INCEPTION_WEIGHTS``); built as it was resolved, without checking it again."""
    if resolved.get("version") != SPEC_VERSION:
        raise SpecError("resolved", f"version {resolved.get('version')!r} is not {SPEC_VERSION}: resubmit the job")
    kind = get_kind(resolved["kind"])
    config = copy.deepcopy(resolved["config"])
    for path, token in resolved.get("refs", {}).items():
        _set_path(config, path, lookup(token))
    if kind.report:
        config["cache_dir"] = cache_dir
        config["inception_weights"] = str(inception_weights) if inception_weights else None
    return _build(kind, config, check=False)


def check_public_data(spec: dict[str, Any], model_data: dict[str, Any] | None) -> None:
    """Refuse an audit whose attacks need public identities that the model's data lacks.

    ``model_data`` is the data spec the model was trained on, as far as the service knows it.
    """
    from midre.attacks import needs_public_data, resolve_attack_name
    from midre.study import AttackSettings

    if not get_kind(spec["kind"]).audits:
        return
    if spec.get("dataset"):  # the spec says which data the model was trained on, and how it is split
        data = spec.get("data") or {}
    elif model_data is not None:
        data = model_data
    else:
        return
    if data.get("num_private") is not None:
        return
    attacks = spec.get("attacks") or AttackSettings.__dataclass_fields__["attacks"].default_factory()
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


__all__ = ["GENERATOR_OPTIONS", "SPEC_VERSION", "Ref", "api_field", "audit_input", "bind", "check_public_data",
           "grid_input", "pipeline_input", "references", "resolve", "train_input"]
