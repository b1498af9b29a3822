"""The configs of privacy-utility studies: the whole pipeline and the attack evaluation of one model.

Both run as graphs of units (:mod:`midre.plan`: ``run_pipeline``, ``run_attack_eval``): every finished
piece is a file in ``out_dir`` (targets via the trainer's own resume, one ``metrics.json`` +
``recon.safetensors`` per attack run, GMI priors and the judges in the cache), so running again with
the same ``out_dir`` skips what is done, and a service can run the units on several workers at once.

Layout of ``out_dir``::

    config.json                       the resolved configuration
    units/<unit key>.json             one per finished unit of the study graph (midre.plan)
    targets/<defense>/seed<k>/        model.safetensors + model.json (midre.train; pipelines only)
    attacks/<defense>/seed<k>/<attack>/metrics.json, recon.safetensors, cache/ (target-specific priors,
                                      surrogates)
    cache/ (default cache_dir)        evaluation/<key>/ (the judges), priors/<key>/ (GMI priors)
    report.json, report.html, *.png
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from midre.attacks import AttackBudget, list_attacks, needs_public_data, parse_options, resolve_attack_name
from midre.attacks.adaptive import EOT_SAMPLES
from midre.data import DatasetError, DatasetSpec
from midre.defenses import build_defense
from midre.errors import ConfigError
from midre.evaluation import EvalModelConfig
from midre.models import check_input_size, list_models
from midre.priors.prior import check_prior_options

# CPU-scale attack budgets (measured on 2 cores; see docs/attacks.md). Any field can be overridden
# per attack through ``attack_budgets``.
DEFAULT_ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "mi-face": {"steps": 300},
    "deepinversion": {"steps": 200},
    "gmi": {"steps": 150, "restarts": 2, "prior_steps": 400},
    "kedmi": {"steps": 150, "prior_steps": 400},
    "lomma+gmi": {"steps": 150, "restarts": 2, "prior_steps": 400, "surrogate_epochs": 20},
    "lomma+kedmi": {"steps": 150, "prior_steps": 400, "surrogate_epochs": 20},
    "plg-mi": {"steps": 150, "prior_steps": 400},
    # query-only attacks: ``steps`` episodes / walk iterations unless ``queries`` (a total over all
    # identities) is given, which then decides alone (rlb-mi: 2 queries per identity per episode,
    # brep-mi: 33 per walk per iteration + the initial-point search)
    "rlb-mi": {"steps": 500, "prior_steps": 400},
    "brep-mi": {"steps": 100, "prior_steps": 400},
    # high-resolution attacks on the study's GMI prior: CPU-scale steps, 200 latents per batch (their
    # candidates, search space and final selection keep the authors' values, see docs/attacks.md)
    "ppa": {"steps": 20, "prior_steps": 400, "chunk_size": 200},
    "if-gmi": {"steps": 10, "prior_steps": 400, "chunk_size": 200},
    "mirror": {"steps": 50, "prior_steps": 400, "chunk_size": 200},
}
DEFAULT_PRIOR_OPTIONS: dict[str, Any] = {"width": 16, "batch_size": 32, "resolution": 32}
#: DatasetSpec fields a study config may also take flat, beside ``data`` given as a source
#: (``{"data": "digits", "image_size": 32}``): the shorthand of the CLI and of older configs.
#: The smallest images a study trains and attacks.
MIN_STUDY_IMAGE_SIZE = 8
DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DatasetSpec) if f.name != "source")


def _check_fields(cls: type, data: dict[str, Any]) -> None:
    if not isinstance(data, dict):
        raise ConfigError("", f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown field of {cls.__name__}; known fields: {', '.join(sorted(known))}")


def _positive_int(obj: Any, name: str, minimum: int = 1) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")


def _check_seeds(seeds: Any) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int | list):
        raise ConfigError("seeds", f"must be a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError("seeds", f"must be >= 1, got {seeds}")
    if isinstance(seeds, list) and (not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                         for s in seeds)):
        raise ConfigError("seeds", f"must be a non-empty list of ints, got {seeds!r}")


def dataset_spec_from(value: Any, field_name: str = "data") -> DatasetSpec:
    """A :class:`DatasetSpec` from a spec, a dict of its fields or a bare source string.

    Raises:
        ConfigError: ``data.<field>`` naming the field at fault.
    """
    if isinstance(value, DatasetSpec):
        return value
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, dict):
        raise ConfigError(field_name, f"must be 'digits', a path or an object of DatasetSpec fields, got {value!r}")
    try:
        return DatasetSpec.from_dict(value)
    except DatasetError as exc:
        raise ConfigError(f"{field_name}.{exc.field}" if exc.field else field_name, str(exc)) from None


def fold_data_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Move flat DatasetSpec fields (:data:`DATA_FIELDS`) into ``data`` (a nested ``data`` wins)."""
    flat = {k: data[k] for k in DATA_FIELDS if k in data}
    if not flat:
        return data
    out = {k: v for k, v in data.items() if k not in flat}
    source = out.get("data", "digits")
    nested = dict(source) if isinstance(source, dict) else {"source": source}
    out["data"] = {**flat, **nested}
    return out


def parse_defense(item: Any) -> dict[str, Any]:
    """``"midre"`` / ``"midre:a_h=0.8"`` / ``{"name": "midre", "a_h": 0.8}`` -> a defense dict."""
    if isinstance(item, dict):
        if "name" not in item:
            raise ConfigError("defenses", "every defense needs a 'name'")
        return dict(item)
    if not isinstance(item, str) or not item.strip():
        raise ConfigError("defenses", f"expected a name or a mapping, got {item!r}")
    name, _, params = item.strip().partition(":")
    out: dict[str, Any] = {"name": name.strip().lower()}
    for part in filter(None, params.split(",")):
        key, _, raw = part.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@dataclass
class AttackSettings:
    """What every study that attacks has: attacks, budgets, judges, cache and device.

    ``check`` (not a field): validate on construction; ``False`` builds an already resolved config
    as it is (a service resolves a spec once, when it is submitted).
    """

    attacks: list[str] = field(default_factory=lambda: ["deepinversion", "gmi"])
    per_identity: int = 2
    identities: int | None = None
    attack_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    prior_options: dict[str, Any] = field(default_factory=dict)
    public_data: str | None = None
    eval_arch: str = "resnet18"
    eval_archs: list[str] | None = None
    eval_epochs: int = 20
    eval_all_images: bool = False
    feature_identities: int = 3
    cache_dir: str | None = None
    device: str = "cpu"
    adaptive: bool = False
    inception_weights: str | None = None
    check: InitVar[bool] = True

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, check: bool = True):
        """Build from a JSON-like dict; a :class:`ConfigError` names an unknown or invalid field."""
        _check_fields(cls, data)
        try:
            return cls(**data, check=check)
        except TypeError as exc:
            raise ConfigError("", f"{cls.__name__}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _validate_attack_settings(self) -> None:
        if isinstance(self.attacks, str):
            self.attacks = [a for a in self.attacks.split(",") if a.strip()]
        if not isinstance(self.attacks, list) or not self.attacks:
            raise ConfigError("attacks", f"must be a non-empty list of names ({', '.join(list_attacks())})")
        self.attacks = [_attack_name(a, f"attacks[{i}]") for i, a in enumerate(self.attacks)]
        _positive_int(self, "per_identity")
        _positive_int(self, "eval_epochs")
        _positive_int(self, "feature_identities", 0)
        if self.identities is not None:
            _positive_int(self, "identities")
        self._validate_judges()
        for name in ("attack_budgets", "attack_options", "prior_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, "must be a mapping")
        for name in ("attack_budgets", "attack_options"):
            for attack in getattr(self, name):
                _attack_name(attack, f"{name}.{attack}")
        for attack, budget in self.attack_budgets.items():
            try:
                AttackBudget.from_dict({**DEFAULT_ATTACK_BUDGETS.get(resolve_attack_name(attack), {}), **budget})
            except ConfigError as exc:
                raise exc.within(f"attack_budgets.{attack}") from None
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"attack_budgets.{attack}", str(exc)) from None
        try:
            check_prior_options(self.prior_options)
        except ConfigError as exc:
            raise exc.within("prior_options") from None
        for attack, options in self.attack_options.items():
            try:
                parse_options(attack, _attack_only(options))
            except ConfigError as exc:
                raise exc.within(f"attack_options.{attack}") from None
        self._validate_adaptive()
        if self.inception_weights is not None and not Path(str(self.inception_weights)).is_file():
            raise ConfigError("inception_weights", f"no such file: {self.inception_weights} (torchvision inception_v3 "
                                                   f"weights as safetensors)")

    def _validate_adaptive(self) -> None:
        from midre.attacks.adaptive import check_white_box

        if not isinstance(self.adaptive, bool):
            raise ConfigError("adaptive", f"must be true or false, got {self.adaptive!r}")
        for attack, options in self.attack_options.items():
            if not isinstance(options, dict):
                continue
            flag = options.get("adaptive", False)
            if not isinstance(flag, bool):
                raise ConfigError(f"attack_options.{attack}.adaptive", f"must be true or false, got {flag!r}")
            samples = options.get("eot_samples", EOT_SAMPLES)
            if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 64:
                raise ConfigError(f"attack_options.{attack}.eot_samples",
                                  f"must be an integer in [1, 64], got {samples!r}")
            if flag:
                check_white_box(attack, f"attack_options.{attack}.adaptive")
        if self.adaptive and not self.adaptive_attacks():
            names = ", ".join(self.attacks)
            raise ConfigError("adaptive", f"none of the attacks ({names}) gets the model's gradients; "
                                          f"an adaptive attacker needs a white-box attack")

    def adaptive_attacks(self) -> list[str]:
        """The attacks of the study that also run adaptively: every white-box attack with ``adaptive``, else
        those with ``attack_options.<attack>.adaptive``."""
        from midre.attacks.registry import get_attack

        own = {resolve_attack_name(k): v for k, v in self.attack_options.items() if isinstance(v, dict)}
        return [a for a in self.attacks if (own.get(a) or {}).get("adaptive")
                or (self.adaptive and get_attack(a).access == "white-box")]

    def eot_samples_for(self, attack: str) -> int:
        own = {resolve_attack_name(k): v for k, v in self.attack_options.items() if isinstance(v, dict)}
        return int((own.get(attack) or {}).get("eot_samples", EOT_SAMPLES))

    def _validate_judges(self) -> None:
        if self.eval_arch not in list_models():
            raise ConfigError("eval_arch", f"unknown architecture {self.eval_arch!r}; known: "
                                           f"{', '.join(list_models())}")
        if self.eval_archs is None:
            return
        if isinstance(self.eval_archs, str):
            self.eval_archs = [a.strip() for a in self.eval_archs.split(",") if a.strip()]
        if not isinstance(self.eval_archs, list) or not self.eval_archs:
            raise ConfigError("eval_archs", "must be a non-empty list of architectures (or null: the default "
                                            "panel of judges)")
        for i, arch in enumerate(self.eval_archs):
            if arch not in list_models():
                raise ConfigError(f"eval_archs[{i}]", f"unknown architecture {arch!r}; known: "
                                                      f"{', '.join(list_models())}")

    def budget_for(self, attack: str) -> AttackBudget:
        own = {resolve_attack_name(k): v for k, v in self.attack_budgets.items()}
        return AttackBudget.from_dict({**DEFAULT_ATTACK_BUDGETS.get(attack, {}), **own.get(attack, {})})

    def options_for(self, attack: str) -> dict[str, Any]:
        own = {resolve_attack_name(k): v for k, v in self.attack_options.items()}
        opts = _attack_only(own.get(attack, {}))
        if needs_public_data(attack):
            opts["prior"] = {**DEFAULT_PRIOR_OPTIONS, **self.prior_options, **opts.get("prior", {})}
        return opts

    #: Whether the study may make the last identities public when its attacks need public images
    #: (a study that trains its targets chooses its private identities; an audit of a trained model cannot).
    splits_public = False

    def check_data(self, splits: Any) -> None:
        """Refuse private data that cannot be this study's (a given target's identities)."""

    def eval_config(self) -> EvalModelConfig:
        return EvalModelConfig(arch=self.eval_arch, epochs=self.eval_epochs, all_images=self.eval_all_images)

    def judge_configs(self, image_size: int | None = None) -> list[EvalModelConfig]:
        """The judges: one per ``eval_archs`` entry, or the default panel (:func:`default_judge_configs`)
        of architectures that take ``image_size``."""
        from midre.evaluation.judges import default_judge_configs

        return default_judge_configs(self.eval_config(), self.eval_archs, image_size)


#: Keys of ``attack_options.<attack>`` that say how the study runs the attack, not how the attack runs.
STUDY_OPTION_KEYS = ("adaptive", "eot_samples")


def _attack_only(options: Any) -> Any:
    """An attack's options without the study's own keys (:data:`STUDY_OPTION_KEYS`)."""
    return {k: v for k, v in options.items() if k not in STUDY_OPTION_KEYS} if isinstance(options, dict) else options


def _attack_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(where, f"must be an attack name, got {name!r}")
    try:
        return resolve_attack_name(name)
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from None


@dataclass
class PipelineConfig(AttackSettings):
    """The whole study: targets per defense and seed, attacks, metrics, report.

    Attributes:
        data: the private data (:class:`midre.data.DatasetSpec`; ``from_dict`` also takes a source
            string with the spec's fields flat beside it). When ``data.num_private`` is ``None`` and an
            attack needs public data without ``public_data``, the last ``public_fraction`` of the
            identities (sorted by name) become public.
        public_fraction: see ``data``.
        public_data: a separate public data set (path), e.g. Extended Yale B for AT&T faces.
        arch, epochs, batch_size, lr, augment: target training (:class:`midre.train.TrainConfig`).
        weights_path, init_from: every target (NoDef included) starts from these weights, e.g. a
            model to harden (:class:`midre.train.TrainConfig`).
        defenses: names or dicts (``"midre"``, ``{"name": "midre", "a_h": 0.8}``); NoDef first.
        seeds: number of seeds (0..N-1) or an explicit list; each trains a target and attacks it.
        attacks, per_identity, identities: which attacks, images per identity, how many identities
            (``None``: all private identities).
        attack_budgets, attack_options, prior_options: per-attack overrides.
        eval_arch, eval_archs, eval_epochs, eval_all_images: the judges.
        feature_identities: identities in the feature-space plots (0 disables them).
        cache_dir: where evaluation models / priors / surrogates are cached (default out_dir/cache).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    data: DatasetSpec = field(default_factory=lambda: DatasetSpec(source="digits"))
    public_fraction: float = 0.25
    arch: str = "cnn-small"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    augment: list[str] = field(default_factory=list)
    defenses: list[Any] = field(default_factory=lambda: ["nodef", "midre"])
    seeds: int | list[int] = 3
    weights_path: str | None = None
    init_from: str | None = None

    splits_public = True

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, check: bool = True):
        if isinstance(data, dict):
            data = fold_data_fields(data)
        return super().from_dict(data, check=check)

    def __post_init__(self, check: bool = True) -> None:
        self.data = dataset_spec_from(self.data)
        if check:
            self._validate()

    def _validate(self) -> None:
        if self.data.image_size < MIN_STUDY_IMAGE_SIZE:
            raise ConfigError("data.image_size", f"must be an integer >= {MIN_STUDY_IMAGE_SIZE}, got "
                                                 f"{self.data.image_size}")
        _positive_int(self, "epochs")
        _positive_int(self, "batch_size")
        if not (isinstance(self.public_fraction, int | float) and 0 < self.public_fraction < 1):
            raise ConfigError("public_fraction", f"must be in (0, 1), got {self.public_fraction!r}")
        if isinstance(self.defenses, str):
            self.defenses = [d for d in self.defenses.split(";" if ":" in self.defenses else ",") if d.strip()]
        if not isinstance(self.defenses, list) or not self.defenses:
            raise ConfigError("defenses", "must be a non-empty list")
        self.defenses = [parse_defense(d) for d in self.defenses]
        for i, defense in enumerate(self.defenses):
            try:
                build_defense(defense)
            except ConfigError as exc:
                raise ConfigError(f"defenses[{i}]{exc.field.removeprefix('defense')}", exc.message) from None
        for name in ("arch", "eval_arch"):
            if getattr(self, name) not in list_models():
                raise ConfigError(name, f"unknown architecture {getattr(self, name)!r}; known: "
                                        f"{', '.join(list_models())}")
            self._check_size(getattr(self, name), "the target" if name == "arch" else "the evaluation model")
        for i, arch in enumerate(self.eval_archs or []):
            if arch in list_models():
                self._check_size(arch, f"judge eval_archs[{i}]")
        _check_seeds(self.seeds)
        self._validate_attack_settings()
        if self.adaptive_attacks():
            from midre.defenses import adaptive_refusal

            reasons = [why for d in self.defenses[1:] if (why := adaptive_refusal(d)) is not None]
            if len(reasons) == len(self.defenses[1:]):
                raise ConfigError("adaptive", "no defense of the study has a training-time transform for an adaptive "
                                              "attacker to optimise through" + (f": {'; '.join(reasons)}" if reasons
                                                                                 else " (NoDef alone)"))

    def _check_size(self, arch: str, who: str) -> None:
        try:
            check_input_size(arch, self.data.image_size)
        except ConfigError as exc:
            raise ConfigError("data.image_size", f"{exc.message} ({who})") from None

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def judge_configs(self, image_size: int | None = None) -> list[EvalModelConfig]:
        return super().judge_configs(image_size if image_size is not None else self.data.image_size)

    def dataset_spec(self, num_private: int | None = None) -> DatasetSpec:
        """The private data spec, with ``num_private`` when the study chose one."""
        if num_private is None:
            return self.data
        return dataclasses.replace(self.data, num_private=num_private)

    def target_dir(self, out_dir: Path, label: str, seed: int) -> Path:
        """The folder of a trained target of this study."""
        return Path(out_dir) / "targets" / label / f"seed{seed}"


@dataclass
class AttackEvalConfig(AttackSettings):
    """Attack one trained target (a ``midre.train`` output folder).

    Attributes:
        target: the target's checkpoint folder.
        data: the private data the target was trained on, as :class:`midre.data.DatasetSpec` fields
            without ``image_size`` / ``channels`` / ``normalize`` (those come from the target's card),
            e.g. ``{"source": "faces/", "num_private": 30}``. ``None`` re-loads the data spec that
            ``midre train`` stored in the card; a model trained elsewhere needs it.
        eval_model: an evaluation model's checkpoint folder; ``None`` trains (or reuses from the
            cache) the judges for the target's data spec.
        seeds: attack repetitions (seeds 0..N-1 or a list); the report gives mean ± std over them.
        public_data: public images for GAN attacks when the target's data has no public identities.
        deployment: audit the target as it is served (:class:`midre.deployment.Deployment` fields:
            ``policy``, ``budget``, ``default_k``, ``model``): the query attacks see only what a client
            under that output policy sees, within its query budget; white-box attacks are refused.
        (the other fields as in :class:`PipelineConfig`)
    """

    target: str = ""
    data: dict[str, Any] | None = None
    eval_model: str | None = None
    seeds: int | list[int] = 3
    deployment: dict[str, Any] | None = None

    def __post_init__(self, check: bool = True) -> None:
        if check:
            self._validate()

    def _validate(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError("target", "must be the path of a trained model folder")
        if self.data is not None:
            if not isinstance(self.data, dict) or not isinstance(self.data.get("source"), str):
                raise ConfigError("data", "must be an object with a 'source' (DatasetSpec fields)")
            taken = sorted(set(self.data) & {"image_size", "channels", "normalize"})
            if taken:
                raise ConfigError(f"data.{taken[0]}", "comes from the target's model card")
            dataset_spec_from(self.data)
        _check_seeds(self.seeds)
        self._validate_attack_settings()
        if self.deployment is not None:
            self._validate_deployment()
        if self.adaptive_attacks() and (Path(self.target) / "model.json").is_file():
            self.adaptive_refusal()

    def deployment_view(self) -> Any:
        """The :class:`midre.deployment.Deployment` the attacks query (``None``: the model itself)."""
        from midre.deployment import Deployment

        return None if self.deployment is None else Deployment.from_dict(self.deployment)

    def _validate_deployment(self) -> None:
        """A deployment answers queries only: every attack must be a query attack its policy can feed."""
        from midre.attacks.registry import get_attack

        try:
            deployment = self.deployment_view()
        except ValueError as exc:
            field, _, message = str(exc).partition(": ")
            raise ConfigError(field, message) from None
        for i, name in enumerate(self.attacks):
            why = deployment.refusal(name, get_attack(name).access)
            if why is not None:
                raise ConfigError(f"attacks[{i}]", why)
        if self.adaptive:
            raise ConfigError("adaptive", "an adaptive attacker optimises through the model; a deployment answers "
                                          "queries only")

    def adaptive_refusal(self) -> None:
        """Refuse an adaptive attack on a target whose defense has no transform to adapt to."""
        from midre.defenses import adaptive_refusal

        spec = self.card().get("defense")
        if not isinstance(spec, dict | list) or not spec:
            raise ConfigError("adaptive", "the target's model.json names no defense: an adaptive attacker needs to "
                                          "know how it was trained")
        why = adaptive_refusal(spec)
        if why is not None:
            raise ConfigError("adaptive", why)

    def card(self) -> dict[str, Any]:
        """The target's ``model.json``."""
        from midre.checkpoint import read_card

        return read_card(self.target)

    def dataset_spec(self, num_private: int | None = None) -> DatasetSpec:
        """The private data: ``data`` sized as the target's card says, or the spec ``midre train``
        stored in the card."""
        card = self.card()
        if self.data is not None:
            size, channels = card.get("image_size"), card.get("channels") or card.get("in_channels") or 3
            normalize = card.get("normalization") is not None
            return dataset_spec_from({**self.data, "image_size": size, "channels": channels, "normalize": normalize})
        data_dict = (card.get("config") or {}).get("data")
        if not data_dict:
            raise ConfigError("data", "the target's model.json stores no data spec (a model trained elsewhere): "
                                      "give the private data set")
        return dataset_spec_from(data_dict)

    def check_data(self, splits: Any) -> None:
        card = self.card()
        names = card.get("class_names")
        if names and list(names) != list(splits.class_names):
            raise ConfigError("data", "the data set's identities differ from those in the target's model.json")
        classes = card.get("num_classes")
        if isinstance(classes, int) and len(splits.class_names) != classes:
            raise ConfigError("data", f"the target has {classes} classes, the data set "
                                      f"{len(splits.class_names)} private identities")

    def judge_configs(self, image_size: int | None = None) -> list[EvalModelConfig]:
        size = image_size if image_size is not None else self.card().get("image_size")
        return super().judge_configs(size if isinstance(size, int) else None)

    def target_dir(self, out_dir: Path, label: str, seed: int) -> Path:
        """Every seed attacks the one given target."""
        return Path(self.target)


__all__ = ["DEFAULT_ATTACK_BUDGETS", "AttackEvalConfig", "AttackSettings", "PipelineConfig", "dataset_spec_from",
           "fold_data_fields", "parse_defense"]
