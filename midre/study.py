"""Privacy-utility studies: the whole pipeline (train targets per defense and seed, attack them,
judge the reconstructions, write the report) and the attack evaluation of one trained target.

Both are resumable: every finished piece is a file in ``out_dir`` (targets via the trainer's own
resume, one ``metrics.json`` + ``recon.safetensors`` per attack run, GMI priors and the judges in
the cache), and running again with the same ``out_dir`` skips what is done. The pipeline is a graph
of units (:mod:`midre.plan`) that a service can run on several workers at once.

Layout of ``out_dir``::

    config.json                       the resolved configuration
    units/<unit key>.json             one per finished unit of the study graph (midre.plan)
    targets/<defense>/seed<k>/        model.safetensors + model.json (midre.train)
    attacks/<defense>/seed<k>/<attack>/metrics.json, recon.safetensors, cache/ (target-specific priors,
                                      surrogates)
    cache/ (default cache_dir)        evaluation/<key>/ (the judges), priors/<key>/ (GMI priors)
    report.json, report.html, *.png
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from midre.attacks import (
    AttackBudget,
    AttackTarget,
    list_attacks,
    needs_public_data,
    parse_options,
    resolve_attack_name,
)
from midre.defenses import build_defense
from midre.device import resolve_device
from midre.errors import ConfigError
from midre.evaluation import EvalModelConfig
from midre.evaluation.eval_model import load_evaluation_model
from midre.evaluation.judges import JudgePanel
from midre.models import check_input_size, list_models
from midre.priors.prior import check_prior_options
from midre.progress import ProgressCallback, ProgressEvent, StopCallback, never_stop, no_progress, scaled
from midre.units import (  # noqa: F401  (defense_label, gmi_prior_config: part of this module's API)
    _attack_one,
    _grids_and_features,
    _load_public,
    defense_label,
    gmi_prior,
    gmi_prior_config,
)

logger = logging.getLogger(__name__)

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
class _AttackSettings:
    """Fields shared by both study configs."""

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

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a JSON-like dict; ``ValueError`` names an unknown or invalid field."""
        _check_fields(cls, data)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError("", f"{cls.__name__}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _validate_attack_settings(self) -> None:
        if isinstance(self.attacks, str):
            self.attacks = [a for a in self.attacks.split(",") if a.strip()]
        if not isinstance(self.attacks, list) or not self.attacks:
            raise ConfigError("attacks", f"must be a non-empty list of names ({', '.join(list_attacks())})")
        resolved = []
        for i, attack in enumerate(self.attacks):
            if not isinstance(attack, str):
                raise ConfigError(f"attacks[{i}]", f"must be an attack name, got {attack!r}")
            try:
                resolved.append(resolve_attack_name(attack))
            except ValueError as exc:
                raise ConfigError(f"attacks[{i}]", str(exc)) from None
        self.attacks = resolved
        _positive_int(self, "per_identity")
        _positive_int(self, "eval_epochs")
        if self.eval_arch not in list_models():
            known = ", ".join(list_models())
            raise ConfigError("eval_arch", f"unknown architecture {self.eval_arch!r}; known: {known}")
        _positive_int(self, "feature_identities", 0)
        if self.eval_archs is not None:
            if isinstance(self.eval_archs, str):
                self.eval_archs = [a.strip() for a in self.eval_archs.split(",") if a.strip()]
            if not isinstance(self.eval_archs, list) or not self.eval_archs:
                raise ConfigError("eval_archs", "must be a non-empty list of architectures (or null: the default "
                                                "panel of judges)")
            for i, arch in enumerate(self.eval_archs):
                if arch not in list_models():
                    raise ConfigError(f"eval_archs[{i}]", f"unknown architecture {arch!r}; known: "
                                                          f"{', '.join(list_models())}")
        if self.identities is not None:
            _positive_int(self, "identities")
        for name in ("attack_budgets", "attack_options", "prior_options"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(name, "must be a mapping")
        for name in ("attack_budgets", "attack_options"):
            for attack in getattr(self, name):
                try:
                    resolve_attack_name(attack)
                except ValueError as exc:
                    raise ConfigError(f"{name}.{attack}", str(exc)) from None
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
                parse_options(attack, options)
            except ConfigError as exc:
                raise exc.within(f"attack_options.{attack}") from None

    def budget_for(self, attack: str) -> AttackBudget:
        own = {resolve_attack_name(k): v for k, v in self.attack_budgets.items()}
        return AttackBudget.from_dict({**DEFAULT_ATTACK_BUDGETS.get(attack, {}), **own.get(attack, {})})

    def options_for(self, attack: str) -> dict[str, Any]:
        own = {resolve_attack_name(k): v for k, v in self.attack_options.items()}
        opts = dict(own.get(attack, {}))
        if needs_public_data(attack):
            opts["prior"] = {**DEFAULT_PRIOR_OPTIONS, **self.prior_options, **opts.get("prior", {})}
        return opts

    def eval_config(self) -> EvalModelConfig:
        return EvalModelConfig(arch=self.eval_arch, epochs=self.eval_epochs, all_images=self.eval_all_images)

    def judge_configs(self, image_size: int | None = None) -> list[EvalModelConfig]:
        """The judges: one per ``eval_archs`` entry, or the default panel (:func:`default_judge_configs`)
        of architectures that take ``image_size`` (default: the config's own, when it has one)."""
        from midre.evaluation.judges import default_judge_configs

        size = image_size if image_size is not None else getattr(self, "image_size", None)
        return default_judge_configs(self.eval_config(), self.eval_archs, size)


@dataclass
class PipelineConfig(_AttackSettings):
    """The whole study: targets per defense and seed, attacks, metrics, report.

    Attributes:
        data: ``"digits"`` or a path to an ImageFolder directory / archive.
        image_size, channels, normalize, test_fraction, split_seed, max_images_per_identity:
            the :class:`midre.data.DatasetSpec` of the private data.
        num_private: first K identities are private, the rest public. When ``None`` and an attack
            needs public data without ``public_data``, the last ``public_fraction`` of the
            identities (sorted by name) become public.
        public_fraction: see ``num_private``.
        public_data: a separate public data set (path), e.g. Extended Yale B for AT&T faces.
        arch, epochs, batch_size, lr, augment: target training (:class:`midre.train.TrainConfig`).
        weights_path, init_from: every target (NoDef included) starts from these weights, e.g. a
            model to harden (:class:`midre.train.TrainConfig`).
        defenses: names or dicts (``"midre"``, ``{"name": "midre", "a_h": 0.8}``); NoDef first.
        seeds: number of seeds (0..N-1) or an explicit list; each trains a target and attacks it.
        attacks, per_identity, identities: which attacks, images per identity, how many identities
            (``None``: all private identities).
        attack_budgets, attack_options, prior_options: per-attack overrides.
        eval_arch, eval_epochs, eval_all_images: the evaluation model.
        feature_identities: identities in the feature-space plots (0 disables them).
        cache_dir: where evaluation models / priors / surrogates are cached (default out_dir/cache).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    data: str = "digits"
    image_size: int = 64
    channels: int = 3
    normalize: bool = True
    test_fraction: float = 0.2
    split_seed: int = 42
    num_private: int | None = None
    public_fraction: float = 0.25
    max_images_per_identity: int | None = None
    arch: str = "cnn-small"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    augment: list[str] = field(default_factory=list)
    defenses: list[Any] = field(default_factory=lambda: ["nodef", "midre"])
    seeds: int | list[int] = 3
    weights_path: str | None = None
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise ConfigError("data", "must be 'digits' or a path")
        _positive_int(self, "image_size", 8)
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
            try:
                check_input_size(getattr(self, name), self.image_size)
            except ConfigError as exc:
                model = "the target" if name == "arch" else "the evaluation model"
                raise ConfigError("image_size", f"{exc.message} ({model})") from None
        for i, arch in enumerate(self.eval_archs or []):
            if arch in list_models():
                try:
                    check_input_size(arch, self.image_size)
                except ConfigError as exc:
                    raise ConfigError("image_size", f"{exc.message} (judge eval_archs[{i}])") from None
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int | list):
            raise ConfigError("seeds", f"must be a count or a list of ints, got {self.seeds!r}")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ConfigError("seeds", f"must be >= 1, got {self.seeds}")
        if isinstance(self.seeds, list) and (not self.seeds or not all(isinstance(s, int) for s in self.seeds)):
            raise ConfigError("seeds", f"must be a non-empty list of ints, got {self.seeds!r}")
        self._validate_attack_settings()

    def dataset_spec(self, num_private: int | None = None) -> Any:
        from midre.data import DatasetSpec

        return DatasetSpec(source=self.data, image_size=self.image_size, channels=self.channels,
                           normalize=self.normalize, test_fraction=self.test_fraction, split_seed=self.split_seed,
                           num_private=num_private if num_private is not None else self.num_private,
                           max_images_per_identity=self.max_images_per_identity)


@dataclass
class AttackEvalConfig(_AttackSettings):
    """Attack one trained target (a ``midre.train`` output folder).

    Attributes:
        target: the target's checkpoint folder.
        data: the private data the target was trained on, as :class:`midre.data.DatasetSpec` fields
            without ``image_size`` / ``channels`` / ``normalize`` (those come from the target's card),
            e.g. ``{"source": "faces/", "num_private": 30}``. ``None`` re-loads the data spec that
            ``midre train`` stored in the card; a model trained elsewhere needs it.
        eval_model: an evaluation model's checkpoint folder; ``None`` trains (or reuses from the
            cache) one for the target's data spec.
        seeds: attack repetitions (seeds 0..N-1 or a list); the report gives mean ± std over them.
        public_data: public images for GAN attacks when the target's data has no public identities.
        (the other fields as in :class:`PipelineConfig`)
    """

    target: str = ""
    data: dict[str, Any] | None = None
    eval_model: str | None = None
    seeds: int | list[int] = 3

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError("target", "must be the path of a trained model folder")
        if self.data is not None:
            if not isinstance(self.data, dict) or not isinstance(self.data.get("source"), str):
                raise ConfigError("data", "must be an object with a 'source' (DatasetSpec fields)")
            taken = sorted(set(self.data) & {"image_size", "channels", "normalize"})
            if taken:
                raise ConfigError(f"data.{taken[0]}", "comes from the target's model card")
            from midre.data import DatasetSpec

            try:
                DatasetSpec.from_dict(self.data)
            except ConfigError as exc:
                raise exc.within("data") from None
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int | list) or (
                isinstance(self.seeds, int) and self.seeds < 1):
            raise ConfigError("seeds", f"must be a count >= 1 or a list of ints, got {self.seeds!r}")
        self._validate_attack_settings()


# --------------------------------------------------------------------------- helpers


def _target_data(config: AttackEvalConfig, card: dict[str, Any]) -> Any:
    """The private data spec of an attack evaluation: ``config.data`` sized as the card says, or the
    spec ``midre train`` stored in the card."""
    from midre.data import DatasetSpec

    if config.data is not None:
        size, channels = card.get("image_size"), card.get("channels") or card.get("in_channels") or 3
        normalize = card.get("normalization") is not None
        return DatasetSpec.from_dict({**config.data, "image_size": size, "channels": channels, "normalize": normalize})
    data_dict = (card.get("config") or {}).get("data")
    if not data_dict:
        raise ConfigError("data", "the target's model.json stores no data spec (a model trained elsewhere): "
                                  "give the private data set")
    return DatasetSpec.from_dict(data_dict)


class _Stages:
    """Maps named stages onto [0, 1] of the whole job by their estimated weight."""

    def __init__(self, progress: ProgressCallback, weights: list[tuple[str, float]]) -> None:
        total = sum(w for _, w in weights) or 1.0
        self.progress, self.bounds, acc = progress, {}, 0.0
        for name, w in weights:
            self.bounds[name] = (acc / total, (acc + w) / total)
            acc += w

    def sub(self, name: str) -> ProgressCallback:
        lo, hi = self.bounds[name]
        return scaled(self.progress, lo, hi)

    def mark(self, name: str, message: str) -> None:
        self.progress(ProgressEvent(stage=name.split(":")[0], fraction=self.bounds[name][1], message=message))


# --------------------------------------------------------------------------- the pipeline


def run_pipeline(config: PipelineConfig, out_dir: str | Path, *, progress: ProgressCallback | None = None,
                 should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Run the whole NoDef-vs-defense study and write ``report.json`` + ``report.html`` to ``out_dir``.

    The study is a graph of units (:mod:`midre.plan`): the evaluation model(s), the target-independent
    GAN priors, one target per defense and seed, one attack run per target and attack (judged on
    AttAcc, KNN distance, delta_eval), then the report with its feature-space analysis and plots.
    This runs them one after the other in this process (:func:`midre.plan.run_study`).

    Returns:
        The report dict (also written as ``out_dir/report.json``).
    """
    from midre.units import run_study

    return run_study(config, out_dir, progress=progress, should_stop=should_stop)


def run_attack_eval(config: AttackEvalConfig, out_dir: str | Path, *, progress: ProgressCallback | None = None,
                    should_stop: StopCallback | None = None) -> dict[str, Any]:
    """Attack one trained target with every configured attack and seed; write the report.

    The private data are re-loaded from the data spec stored in the target's ``model.json`` (same
    identities, same split), the evaluation model is loaded (``eval_model``) or trained/reused from
    the cache, and each attack runs ``seeds`` times.
    """
    from midre.data import load_dataset

    progress = progress or no_progress
    should_stop = should_stop or never_stop
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(config.device))
    cache_dir = str(Path(config.cache_dir) if config.cache_dir else out / "cache")
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    target = AttackTarget.from_checkpoint(config.target, device=device)
    spec = _target_data(config, target.card)
    splits = load_dataset(spec)
    card_names = target.card.get("class_names")
    if card_names and list(card_names) != list(splits.class_names):
        raise ValueError("target: the data set's identities differ from those in model.json")
    if len(splits.class_names) != target.num_classes:
        raise ValueError(f"target: the model has {target.num_classes} classes, the data set "
                         f"{len(splits.class_names)} private identities")
    public = None
    if any(needs_public_data(a) for a in config.attacks):
        if config.public_data:
            public = _load_public(config.public_data, spec)
        elif splits.public is not None:
            from midre.priors import PublicData

            public = PublicData.from_images(splits.public.images, f"{spec.source}: non-private identities")
        else:
            raise ValueError("public_data: GAN attacks need public images and the target's data set has no "
                             "public identities; pass a path")
    seeds = config.seed_list
    stages = _Stages(progress, [("eval", 0.0 if config.eval_model else 1.0),
                                ("attack", 1.5 * len(seeds) * len(config.attacks)), ("report", 0.2)])
    t0 = time.monotonic()
    if config.eval_model:
        evaluator = load_evaluation_model(config.eval_model, device=device)
        if evaluator.class_names and list(evaluator.class_names) != list(splits.class_names):
            raise ValueError("eval_model: its identities differ from the target's")
        panel = JudgePanel([evaluator])
    else:
        panel = JudgePanel.train_or_load(spec, cache_dir, config.judge_configs(spec.image_size), device=device,
                                         progress=stages.sub("eval"), should_stop=should_stop)
        evaluator = panel.judges[0]
    timings["evaluation_model"] = time.monotonic() - t0
    defense = target.card.get("defense") or {"name": "unknown"}
    label = str(defense.get("name", "target")) if isinstance(defense, dict) else "target"
    acc = (target.card.get("metrics") or {}).get("test_accuracy")
    if acc is None:  # a model trained elsewhere: measure it on the held-out split
        from midre.train import evaluate_accuracy

        acc = evaluate_accuracy(target.model, splits.test, target.normalization, torch.device(device))
    acc = float(acc)
    num_ids = len(splits.class_names)
    ids = list(range(min(num_ids, config.identities or num_ids)))
    jobs = [(s, a) for s in seeds for a in config.attacks]

    def score(pixels: torch.Tensor, labels: torch.Tensor, private: Any) -> dict[str, Any]:
        return panel.score(pixels, labels, private.images, private.labels)

    records = []
    prior_cache: dict[str, Any] = {}
    attack_sub = stages.sub("attack")
    t0 = time.monotonic()
    for j, (seed, attack) in enumerate(jobs):
        sub = scaled(attack_sub, j / len(jobs), (j + 1) / len(jobs))
        if attack not in prior_cache:
            t1 = time.monotonic()
            prior_cache[attack] = gmi_prior(attack, config, public, target.image_shape, cache_dir, device,
                                            scaled(sub, 0.0, 0.5), should_stop)
            if prior_cache[attack] is not None:
                timings[f"prior_gmi_{config.budget_for(attack).prior_steps}_steps"] = time.monotonic() - t1
        rec = _attack_one(attack, target, acc, ids, config, seed, out / "attacks" / label / f"seed{seed}" / attack,
                          score, splits.train, public, prior_cache[attack], cache_dir, device,
                          scaled(sub, 0.5 if prior_cache[attack] is not None else 0.0, 1.0), should_stop)
        records.append({**rec, "defense": label, "seed": seed})
    timings["attacks"] = time.monotonic() - t0
    from midre.report import aggregate_runs, write_report

    results, verdicts = aggregate_runs(records, [label], config.attacks, baseline=label)
    labels_of = {label: {"nodef": "NoDef", "midre": "MIDRE"}.get(label, label)}
    grids, features, feature_json = _grids_and_features(records, out, labels_of, {(label, min(seeds)): target},
                                                        splits.train, list(splits.class_names), config,
                                                        config.attacks, [label])
    timings["total"] = time.monotonic() - t_start
    report = {
        "kind": "attack_eval",
        "dataset": {**spec.to_dict(), "identities": num_ids, "class_names": list(splits.class_names),
                    "public": public.description if public is not None else None},
        "models": {"target": {"arch": target.card.get("arch"), "dir": str(config.target), "defense": defense,
                              "metrics": {**(target.card.get("metrics") or {}), "test_accuracy": acc},
                              "origin": target.card.get("origin") or {"kind": "trained"}},
                   "evaluation": {"arch": evaluator.arch, "accuracy": (100.0 * evaluator.accuracy
                                                                       if evaluator.accuracy is not None else None),
                                  "accuracy_split": evaluator.accuracy_split, "dir": str(evaluator.directory)}},
        "judges": panel.describe(),
        "defenses": [defense],
        "attacks": [{"name": a, "budget": config.budget_for(a).to_dict(), "options": config.options_for(a),
                     "per_identity": config.per_identity, "identities": len(ids)} for a in config.attacks],
        "seeds": seeds,
        "results": results,
        "verdicts": verdicts,
        "runs": records,
        "feature_space": feature_json,
        "timings": timings,
        "device": device,
    }
    report = write_report(report, out, grids=grids, feature_results=features)
    progress(ProgressEvent(stage="done", fraction=1.0, message="report written: report.html, report.json"))
    return report


__all__ = ["DEFAULT_ATTACK_BUDGETS", "AttackEvalConfig", "PipelineConfig", "defense_label", "gmi_prior",
           "parse_defense", "run_attack_eval", "run_pipeline"]
