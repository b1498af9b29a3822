"""The evaluation model: an independent classifier that judges reconstructions.

GMI (Zhang et al. 2020, Sec. 4.1) and PPA (Struppek et al. 2022, Sec. 4.1) measure attack success
with a classifier of a *different architecture* trained on the same private identities: a
reconstruction counts as a hit when this model, which the attack never saw, recognises the person.
Here it is trained with :func:`midre.train.train` (defense ``nodef``) and cached under a key of the
data spec and training settings, so every target and attack of a data set shares one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.progress import ProgressCallback, StopCallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalModelConfig:
    """How the evaluation model is trained.

    Attributes:
        arch: a :func:`midre.models.create_model` name different from the targets' (default
            ``resnet18``: 97.5% held-out accuracy on att_faces 64 px after 20 epochs on 2 CPU cores).
        epochs: training epochs.
        all_images: train on every private image (train + test split). Gives the judge more data,
            but its accuracy can then only be reported on images it was trained on.
        seed: training seed.
        lr, batch_size: optimiser settings passed to :class:`midre.train.TrainConfig`.
        augment: train-time augmentation names of :class:`midre.train.TrainConfig`. Default
            flips and random shifts: on att_faces 64 px (30 identities, 8 train / 2 held-out images
            each, 20 epochs) held-out accuracy 98.3 % against 95.0 % with flips alone. A judge that
            keys on exact pixel positions of ten photos per person under-counts recognisable
            reconstructions (docs/attacks.md, "The evaluation model").
        keep_best: keep the weights of the epoch with the best held-out accuracy (the latest of
            equally good epochs) instead of the last epoch. The held-out split both selects the
            epoch and reports the accuracy, so the reported figure is slightly optimistic; with
            ``all_images`` (no held-out split) the last epoch is kept.
    """

    arch: str = "resnet18"
    epochs: int = 20
    all_images: bool = False
    seed: int = 1234
    lr: float = 1e-3
    batch_size: int = 64
    augment: tuple[str, ...] = ("hflip", "shift")
    keep_best: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["augment"] = list(self.augment)
        return out


def _spec_dict(spec: Any) -> dict[str, Any]:
    data = spec.to_dict() if hasattr(spec, "to_dict") else dataclasses.asdict(spec)
    src = data.get("source")
    if isinstance(src, str) and src != "digits" and Path(src).exists():
        data["source"] = str(Path(src).resolve())
    return data


def eval_model_key(spec: Any, config: EvalModelConfig) -> str:
    """Cache key: the data spec (identities, size, channels, split) + the training settings."""
    blob = json.dumps({"data": _spec_dict(spec), "config": config.to_dict()}, sort_keys=True, default=str)
    return f"eval-{config.arch}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass
class EvaluationModel:
    """A trained evaluation model and how to feed it ``[0, 1]`` pixel images.

    Attributes:
        model: the classifier (eval mode).
        card: its ``model.json``.
        directory: where it is stored.
        accuracy: top-1 accuracy reported for it.
        accuracy_split: ``"test"`` (held-out private images) or ``"train"`` (``all_images``: no
            held-out images exist).
    """

    model: nn.Module
    card: dict[str, Any]
    directory: Path
    accuracy: float | None
    accuracy_split: str = "test"
    normalization: Any = None
    image_shape: tuple[int, int, int] = (3, 64, 64)
    _private_cache: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def arch(self) -> str:
        return str(self.card.get("arch", "?"))

    @property
    def class_names(self) -> list[str]:
        return list(self.card.get("class_names", []))

    def _prepare(self, pixels: Tensor) -> Tensor:
        c, h, w = self.image_shape
        x = pixels.float()
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if x.shape[1] != c:
            x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x
        if self.normalization is not None:
            mean = torch.as_tensor(self.normalization.mean, dtype=x.dtype, device=x.device).flatten()
            std = torch.as_tensor(self.normalization.std, dtype=x.dtype, device=x.device).flatten()
            if mean.numel() != c:
                mean, std = mean.mean().repeat(c), std.mean().repeat(c)
            x = (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
        return x

    @torch.no_grad()
    def logits_and_features(self, pixels: Tensor, batch: int = 128) -> tuple[Tensor, Tensor]:
        """Logits ``[N, K]`` and penultimate features ``[N, D]`` of ``[0, 1]`` pixel images."""
        device = next(self.model.parameters()).device
        logits, feats = [], []
        for start in range(0, pixels.shape[0], batch):
            x = self._prepare(pixels[start:start + batch].to(device))
            f = self.model.features(x)
            logits.append(self.model.classifier(f).cpu())
            feats.append(f.cpu())
        return torch.cat(logits), torch.cat(feats)

    def private_features(self, images_uint8: Tensor, labels: Tensor, key: str = "train") -> tuple[Tensor, Tensor]:
        """Penultimate features of the private training images (computed once per ``key``)."""
        if key not in self._private_cache:
            _, feats = self.logits_and_features(images_uint8.float() / 255.0)
            self._private_cache[key] = (feats, labels.cpu())
        return self._private_cache[key]


def load_evaluation_model(directory: str | Path, device: str | torch.device = "cpu") -> EvaluationModel:
    """Load an evaluation model saved by :func:`midre.train.train` (``model.safetensors`` + ``model.json``)."""
    from midre.target import AttackTarget, load_checkpoint

    directory = Path(directory)
    model, card = load_checkpoint(directory, device=device)
    model.eval()
    shaped = AttackTarget.from_model_card(model, card)
    metrics = card.get("metrics", {}) or {}
    extra = {}
    info_path = directory / "evaluation.json"
    if info_path.is_file():
        extra = json.loads(info_path.read_text())
    split = extra.get("accuracy_split", "test")
    acc = metrics.get("test_accuracy") if split == "test" else metrics.get("train_accuracy")
    return EvaluationModel(model=model, card=card, directory=directory, accuracy=acc, accuracy_split=split,
                           normalization=shaped.normalization, image_shape=shaped.image_shape)


def train_evaluation_model(spec: Any, cache_dir: str | Path, config: EvalModelConfig | None = None, *,
                           device: str = "cpu", progress: ProgressCallback | None = None,
                           should_stop: StopCallback | None = None) -> EvaluationModel:
    """Train (or reuse from ``cache_dir``) the evaluation model for the private identities of ``spec``.

    With ``config.all_images`` the model is trained on every private image (the data spec's test
    split is folded in by ``test_fraction=0``); its accuracy is then a training-set accuracy and
    is labelled so in reports.
    """
    from midre.train import TrainConfig, train

    config = config or EvalModelConfig()
    key = eval_model_key(spec, config)
    directory = Path(cache_dir) / "evaluation" / key
    data = dataclasses.replace(spec, test_fraction=0.0) if config.all_images else spec
    train_cfg = TrainConfig(data=data, arch=config.arch, defense={"name": "nodef"}, epochs=config.epochs,
                            batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                            augment=tuple(config.augment), device=device)
    select = config.keep_best and not config.all_images
    tracker = _BestEpoch(directory, progress) if select else None
    result = train(train_cfg, directory, progress=tracker or progress, should_stop=should_stop)
    if tracker is not None:
        tracker.apply()
    (directory / "evaluation.json").write_text(json.dumps(
        {"key": key, "config": config.to_dict(), "accuracy_split": "train" if config.all_images else "test"},
        indent=2))
    logger.info("evaluation model %s: %s accuracy %s", key, "train" if config.all_images else "test",
                result.card.get("metrics", {}))
    return load_evaluation_model(directory, device=device)


BEST_FILE = "best_epoch.safetensors"


class _BestEpoch:
    """Progress callback that keeps the weights of the epoch with the best held-out accuracy.

    :func:`midre.train.train` saves its per-epoch resume state (``checkpoint/last.pt``) before it
    reports the epoch; when that epoch's ``test_accuracy`` is at least the best so far, its weights
    are copied to ``best_epoch.safetensors`` (with the epoch and accuracy in the metadata, so a
    resumed training continues the comparison). :meth:`apply` then puts those weights into
    ``model.safetensors`` and records ``selected_epoch`` in the card.
    """

    def __init__(self, directory: Path, inner: ProgressCallback | None) -> None:
        self.directory = directory
        self.inner = inner
        self.best_acc, self.best_epoch = self._stored()

    def _stored(self) -> tuple[float, int | None]:
        path = self.directory / BEST_FILE
        if not path.is_file():
            return float("-inf"), None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return float(meta.get("test_accuracy", "-inf")), int(meta["epoch"]) if "epoch" in meta else None

    def __call__(self, event: Any) -> None:
        acc = (event.metrics or {}).get("test_accuracy") if event.stage == "epoch" else None
        if isinstance(acc, int | float) and math.isfinite(acc) and acc >= self.best_acc:
            self._snapshot(int(event.epoch), float(acc))
        if self.inner is not None:
            self.inner(event)

    def _snapshot(self, epoch: int, acc: float) -> None:
        from safetensors.torch import save_file

        from midre.train import RESUME_FILE

        path = self.directory / RESUME_FILE
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if int(state.get("epoch", -1)) != epoch:
            return
        weights = {k: v.contiguous() for k, v in state["model"].items()}
        tmp = self.directory / (BEST_FILE + ".tmp")
        save_file(weights, str(tmp), metadata={"epoch": str(epoch), "test_accuracy": repr(acc)})
        tmp.replace(self.directory / BEST_FILE)
        self.best_acc, self.best_epoch = acc, epoch

    def apply(self) -> None:
        """Put the best epoch's weights into ``model.safetensors`` (once: a finished judge is left as it is)."""
        from safetensors.torch import load_file

        from midre.checkpoint import load_checkpoint, save_checkpoint

        best = self.directory / BEST_FILE
        model, card = load_checkpoint(self.directory, device="cpu")
        metrics = dict(card.get("metrics") or {})
        if "selected_epoch" in metrics or not best.is_file() or self.best_epoch is None:
            return
        metrics["last_epoch_test_accuracy"] = metrics.get("test_accuracy")
        metrics["selected_epoch"] = self.best_epoch
        if self.best_epoch != metrics.get("epochs"):
            model.load_state_dict(load_file(str(best), device="cpu"), strict=True)
            metrics["test_accuracy"] = self.best_acc
        card = {k: v for k, v in card.items() if k != "schema_version"}
        save_checkpoint(model, self.directory, {**card, "metrics": metrics})
        best.unlink(missing_ok=True)


def evaluate_reconstructions(evaluator: EvaluationModel, pixels: Tensor, labels: Tensor,
                             private_images: Tensor, private_labels: Tensor) -> dict[str, float]:
    """AttAcc top-1/top-5, KNN distance and delta_eval of ``[0, 1]`` reconstructions ``pixels``.

    ``private_images`` (uint8) / ``private_labels`` are the private *training* images, whose
    evaluation-model features the KNN distance compares against.
    """
    from midre.evaluation.metrics import attack_accuracy, delta_feature, knn_distance

    logits, feats = evaluator.logits_and_features(pixels)
    priv_feats, priv_labels = evaluator.private_features(private_images, private_labels)
    return {
        "attacc_top1": attack_accuracy(logits, labels, 1),
        "attacc_top5": attack_accuracy(logits, labels, 5),
        "knn_dist": knn_distance(feats, labels, priv_feats, priv_labels),
        "delta_eval": delta_feature(feats, labels, priv_feats, priv_labels),
    }
