"""A panel of independent judges: AttAcc you can trust.

AttAcc is a measurement, and one evaluation model is one instrument with an error of its own: two
judges of the same recipe differ by up to 13 points on the same reconstructions (docs/attacks.md,
"The evaluation model is a measuring instrument"), and a judge can credit reconstructions that are
adversarial examples for it rather than faces of the person (Ho et al. 2025, "On the Vulnerability
of Model Inversion Evaluation", arXiv:2505.03519). A :class:`JudgePanel` therefore scores every
reconstruction with several evaluation models of different architectures and seeds and reports:

* ``judges``: each judge's top-1 / top-5 AttAcc;
* the pooled AttAcc: the mean of the judges' AttAcc (``attacc_top1`` / ``attacc_top5``);
* ``agreement``: the share of reconstructions on which all judges agree (all credit it, or none);
* ``double_check``: the share of reconstructions that a judge credits *and* whose nearest private
  training image, in another judge's penultimate features, belongs to the attacked identity
  (averaged over judges, so it is directly comparable with, and never above, the pooled top-1);
* ``pixel_std``: the mean per-image pixel standard deviation (flat grey reconstructions: ~0).

Every judge is an :class:`~midre.evaluation.eval_model.EvaluationModel` trained by
:func:`~midre.evaluation.eval_model.train_evaluation_model` (one cached unit each), keeping the epoch
with the best held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from midre.errors import ConfigError
from midre.evaluation import distribution
from midre.evaluation.eval_model import (
    EvalModelConfig,
    EvaluationModel,
    eval_model_key,
    load_evaluation_model,
    train_evaluation_model,
)
from midre.evaluation.metrics import (
    delta_feature,
    knn_distance,
    nearest_identity_match,
    nearest_private_sq_dist,
    topk_hits,
)
from midre.progress import ProgressCallback, StopCallback, scaled

#: Default judge architectures: two families (a residual network and a densely connected one), both
#: cheap enough on CPU at 64 px. The first judge keeps the base config's architecture when it is
#: not one of these. Measured held-out accuracies: docs/attacks.md, "Judges".
DEFAULT_JUDGE_ARCHS: tuple[str, ...] = ("resnet18", "densenet121")

#: Seed of judge ``i``: the base config's seed plus ``i * JUDGE_SEED_STRIDE`` (different seeds too).
JUDGE_SEED_STRIDE = 1000


def default_judge_configs(base: EvalModelConfig, archs: Sequence[str] | None = None,
                          image_size: int | None = None) -> list[EvalModelConfig]:
    """The panel's configs: one per architecture, each with its own seed, the rest as in ``base``.

    Args:
        base: the recipe (epochs, augmentation, optimiser) every judge shares; ``base.arch`` is the
            first judge (when ``archs`` is not given) and ``base.seed`` the first seed.
        archs: the judges' architectures, in order (default: ``base.arch`` then the
            :data:`DEFAULT_JUDGE_ARCHS` not yet used, two judges in all).
        image_size: the images' side; the default panel then only adds architectures that take it
            (a 16 px study gets ``base.arch`` twice, with two seeds, when no other one does).

    Raises:
        ConfigError: ``archs`` is empty or names an unknown architecture.
    """
    from midre.models import list_models

    if archs is None:
        names = [base.arch] + [a for a in DEFAULT_JUDGE_ARCHS if a != base.arch and _fits(a, image_size)]
        names = (names + [base.arch])[:2]
    else:
        names = [str(a) for a in archs]
        if not names:
            raise ConfigError("judges", "at least one judge architecture is needed (two or more to compare)")
    known = set(list_models())
    for name in names:
        if name not in known:
            raise ConfigError("judges", f"unknown architecture {name!r}; known: {', '.join(sorted(known))}")
    return [dataclasses.replace(base, arch=name, seed=base.seed + i * JUDGE_SEED_STRIDE)
            for i, name in enumerate(names)]


def _fits(arch: str, image_size: int | None) -> bool:
    from midre.models import check_input_size

    if image_size is None:
        return True
    try:
        check_input_size(arch, image_size)
    except ConfigError:
        return False
    return True


class JudgePanel:
    """Several independent evaluation models that score reconstructions together.

    Build it with :meth:`load` (judges trained before, e.g. one task each) or :meth:`train_or_load`,
    or directly from :class:`EvaluationModel` objects.
    """

    def __init__(self, judges: Sequence[EvaluationModel], seeds: Sequence[int | None] | None = None) -> None:
        if not judges:
            raise ConfigError("judges", "a panel needs at least one judge")
        self.judges: list[EvaluationModel] = list(judges)
        if seeds is None:
            seeds = [_card_seed(j) for j in self.judges]
        if len(seeds) != len(self.judges):
            raise ValueError("seeds: one per judge")
        self.seeds: list[int | None] = list(seeds)

    @classmethod
    def load(cls, spec: Any, cache_dir: str | Path, configs: Sequence[EvalModelConfig], *,
             device: str = "cpu") -> JudgePanel:
        """Load every judge of ``configs`` from ``cache_dir`` (each trained before by
        :func:`train_evaluation_model` with the same ``spec`` and config).

        Raises:
            ConfigError: a judge has not been trained (its folder lacks ``evaluation.json``).
        """
        judges = []
        for cfg in configs:
            directory = Path(cache_dir) / "evaluation" / eval_model_key(spec, cfg)
            if not (directory / "evaluation.json").is_file():
                raise ConfigError("judges", f"judge {cfg.arch} (seed {cfg.seed}) is not trained yet: {directory}")
            judges.append(load_evaluation_model(directory, device=device))
        return cls(judges, [cfg.seed for cfg in configs])

    @classmethod
    def train_or_load(cls, spec: Any, cache_dir: str | Path, configs: Sequence[EvalModelConfig], *,
                      device: str = "cpu", progress: ProgressCallback | None = None,
                      should_stop: StopCallback | None = None) -> JudgePanel:
        """Train (or reuse from ``cache_dir``) every judge of ``configs``, one after the other."""
        configs = list(configs)
        if not configs:
            raise ConfigError("judges", "at least one judge config is needed")
        judges = []
        for i, cfg in enumerate(configs):
            sub = scaled(progress, i / len(configs), (i + 1) / len(configs)) if progress else None
            judges.append(train_evaluation_model(spec, cache_dir, cfg, device=device, progress=sub,
                                                 should_stop=should_stop))
        return cls(judges, [cfg.seed for cfg in configs])

    def describe(self) -> list[dict[str, Any]]:
        """One entry per judge: ``arch``, ``seed``, ``accuracy`` (percent; held-out unless
        ``accuracy_split`` says ``"train"``), ``accuracy_split``, ``selected_epoch``, ``dir``."""
        out = []
        for judge, seed in zip(self.judges, self.seeds, strict=True):
            metrics = judge.card.get("metrics") or {}
            out.append({"arch": judge.arch, "seed": seed,
                        "accuracy": 100.0 * judge.accuracy if judge.accuracy is not None else None,
                        "accuracy_split": judge.accuracy_split,
                        "selected_epoch": metrics.get("selected_epoch"), "epochs": metrics.get("epochs"),
                        "dir": str(judge.directory)})
        return out

    def score(self, pixels: Tensor, labels: Tensor, private_images: Tensor,
              private_labels: Tensor) -> dict[str, Any]:
        """Judge ``[0, 1]`` reconstructions ``pixels`` of identities ``labels``.

        Args:
            pixels: ``[N, C, H, W]`` reconstructions in ``[0, 1]``.
            labels: ``[N]`` attacked identities.
            private_images, private_labels: the private *training* images (uint8) and identities.

        Returns:
            Fractions in ``[0, 1]`` (see the module docstring): ``attacc_top1`` / ``attacc_top5``
            (pooled), ``knn_dist`` / ``delta_eval`` (in the first judge's features, as with one
            judge), ``judges``, ``agreement``, ``double_check``, ``double_check_per_judge``,
            ``pixel_std``; the set metrics of :mod:`midre.evaluation.distribution` in the first judge's
            features (``fid``, ``precision``, ``recall``, ``density``, ``coverage``, averaged over
            identities); and ``identities``: per attacked identity, its pooled ``attacc_top1`` /
            ``attacc_top5``, ``knn_dist`` and set metrics (the per-identity outcomes the report's
            intervals and paired comparisons resample, :mod:`midre.evaluation.evidence`); ``top1``:
            ``[J, N]`` each judge's top-1 identity per image (what human review compares people with).
        """
        labels = labels.cpu()
        if labels.numel() == 0:
            raise ValueError("labels: no reconstructions to judge")
        hits1, hits5, feats, priv, top1 = [], [], [], [], []
        for judge in self.judges:
            logits, f = judge.logits_and_features(pixels)
            top1.append(logits.argmax(1).cpu())
            hits1.append(topk_hits(logits, labels, 1))
            hits5.append(topk_hits(logits, labels, 5))
            feats.append(f)
            priv.append(judge.private_features(private_images, private_labels))
        per_judge = [{"arch": j.arch, "seed": s, "attacc_top1": float(h1.double().mean()),
                      "attacc_top5": float(h5.double().mean())}
                     for j, s, h1, h5 in zip(self.judges, self.seeds, hits1, hits5, strict=True)]
        credited = torch.stack(hits1)  # [J, N]
        agree = (credited.all(0) | ~credited.any(0)).double().mean()
        n = len(self.judges)
        checks = []
        for j in range(n):
            k = (j + 1) % n  # another judge's feature space (the judge's own when it is alone)
            near = nearest_identity_match(feats[k], labels, priv[k][0], priv[k][1])
            checks.append(float((credited[j] & near).double().mean()))
        pf, pl = priv[0]
        sets, set_means = distribution.summarize_sets(feats[0], labels, pf, pl)
        return {
            "attacc_top1": sum(p["attacc_top1"] for p in per_judge) / n,
            "attacc_top5": sum(p["attacc_top5"] for p in per_judge) / n,
            "knn_dist": knn_distance(feats[0], labels, pf, pl),
            "delta_eval": delta_feature(feats[0], labels, pf, pl),
            "judges": per_judge,
            "agreement": float(agree),
            "double_check": sum(checks) / n,
            "double_check_per_judge": checks,
            "pixel_std": pixel_std(pixels),
            **set_means,
            "identities": _per_identity(credited.double(), torch.stack(hits5).double(),
                                        nearest_private_sq_dist(feats[0], labels, pf, pl), labels, sets),
            "top1": torch.stack(top1),
        }


def _per_identity(top1: Tensor, top5: Tensor, knn: Tensor, labels: Tensor,
                  sets: dict[int, dict[str, float | None]]) -> dict[int, dict[str, Any]]:
    """Pooled hits ``[J, N]`` and nearest distances ``[N]`` -> per-identity outcomes (fractions)."""
    out = {}
    for identity in labels.unique().tolist():
        mine = labels == identity
        out[int(identity)] = {"attacc_top1": float(top1[:, mine].mean()), "attacc_top5": float(top5[:, mine].mean()),
                              "knn_dist": float(knn[mine].mean()), "images": int(mine.sum()),
                              **sets.get(int(identity), {})}
    return out


def pixel_std(pixels: Tensor) -> float:
    """Mean over images of the standard deviation of each image's pixels (all channels) in ``[0, 1]``.

    A reconstruction with no structure (flat grey, as a failed MI-Face run gives) has ~0; a natural
    face photo roughly 0.15-0.3.
    """
    if pixels.numel() == 0:
        raise ValueError("pixels: no images")
    x = pixels.detach().float().cpu().flatten(1)
    return float(x.std(1, unbiased=False).mean())


def record_fields(scores: dict[str, Any]) -> dict[str, Any]:
    """A panel's :meth:`JudgePanel.score` as the fields of a study's run record, in its units:
    AttAcc, agreement and double-check in percent, ``pixel_std`` in ``[0, 1]`` pixel units."""
    pct = 100.0
    out: dict[str, Any] = {
        "attacc_top1": pct * scores["attacc_top1"], "attacc_top5": pct * scores["attacc_top5"],
        "knn_dist": scores["knn_dist"], "delta_eval": scores["delta_eval"],
        "judges": [{"arch": j["arch"], "seed": j["seed"], "attacc_top1": pct * j["attacc_top1"],
                    "attacc_top5": pct * j["attacc_top5"]} for j in scores.get("judges", [])],
    }
    for key in ("agreement", "double_check"):
        if scores.get(key) is not None:
            out[key] = pct * scores[key]
    if scores.get("pixel_std") is not None:
        out["pixel_std"] = scores["pixel_std"]
    for key in distribution.NAMES:
        if scores.get(key) is not None:
            out[key] = scores[key] * (1.0 if key in ("fid", "density") else pct)
    if scores.get("identities"):
        out["identities"] = {str(i): {k: (v * pct if k in PERCENT_FIELDS and v is not None else v)
                                      for k, v in per.items()} for i, per in scores["identities"].items()}
    return out


#: Per-identity fields that are shares (recorded in percent, like the figures they resample).
PERCENT_FIELDS = ("attacc_top1", "attacc_top5", "precision", "recall", "coverage")


def _card_seed(judge: EvaluationModel) -> int | None:
    seed = judge.card.get("seed")
    if seed is None:
        info = judge.directory / "evaluation.json" if judge.directory else None
        if info is not None and info.is_file():
            seed = (json.loads(info.read_text()).get("config") or {}).get("seed")
    return int(seed) if isinstance(seed, int) else None


__all__ = ["DEFAULT_JUDGE_ARCHS", "JUDGE_SEED_STRIDE", "JudgePanel", "default_judge_configs", "pixel_std",
           "record_fields"]
