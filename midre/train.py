"""One trainer for every defense: NoDef, MIDRE, its ablations, and the defenses of `midre.defenses`.

The loop is deliberately plain. Images stay uint8 in memory (on the device when it is a GPU);
each batch is converted, augmented and *then* erased on the device (erasing last, as in the
authors' recipe), so MIDRE adds one vectorised op per batch and no data-loader work.

- seeded: model init, shuffling and every random square come from generators seeded by
  ``seed`` and the epoch, so a run and a resumed run give the same model;
- per-epoch resume state in ``out_dir/checkpoint/last.pt``; calling :func:`train` again on the
  same folder continues after the last finished epoch (a redelivered job);
- cooperative cancel: ``should_stop()`` is polled between steps;
- AMP (bfloat16 autocast) and channels_last on CUDA;
- several devices (``devices``): N rank processes with DistributedDataParallel over the same global
  batches (:mod:`midre.distributed`);
- output: ``model.safetensors`` + ``model.json`` (see :mod:`midre.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midre.checkpoint import CARD_FILE, WEIGHTS_FILE, load_checkpoint, package_versions, read_card, save_checkpoint
from midre.data import DatasetError, DatasetSpec, ImageSet, load_dataset, to_float
from midre.defenses import Defense, TrainContext, build_defense
from midre.device import resolve_device
from midre.distributed import Ranks, check_devices, check_visible_devices, launch
from midre.errors import ConfigError, TransientError
from midre.models import check_input_size, create_model, list_models
from midre.progress import Cancelled, ProgressCallback, ProgressEvent, StopCallback, never_stop, no_progress
from midre.seeding import AUGMENT_STREAM, GLOBAL_STREAM, SHUFFLE_STREAM, epoch_seed

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "multistep", "cosine")
AUGMENTATIONS = ("hflip", "shift")
RESUME_FILE = "checkpoint/last.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run (written into ``model.json``).

    Args:
        data: the data set and its split (:class:`midre.data.DatasetSpec`).
        arch: model name from :func:`midre.models.list_models`.
        defense: defense spec for :func:`midre.defenses.build_defense`, e.g. ``{"name": "midre", "a_h": 0.4}``.
        epochs, batch_size: the usual.
        optimizer: "adam" (authors' recipe), "adamw" or "sgd" (momentum 0.9).
        lr, weight_decay: optimizer settings.
        schedule: "multistep" (x0.1 at ``milestones``, fractions of the epochs: the authors' 75/90 of
            100), "cosine" or "none".
        augment: extra train-time augmentation applied before the defense: "hflip" (random
            horizontal flip), "shift" (random translation by up to 1/8 of the side, reflected
            border: the standard small-data augmentation that stops a model from keying on exact
            pixel positions).
        seed: seeds model init, shuffling and erasing.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        weights_path: local weights to start from (e.g. an ImageNet backbone, or a checkpoint folder of
            ``midre train`` / of a model trained elsewhere, to harden it); never downloaded.
        init_from: what the starting weights are, for the record (written into ``model.json``, e.g.
            a model id); it loads nothing itself.
        eval_every: evaluate on the test split every this many epochs (and always at the end).
        devices: train over this many devices in one run: N rank processes with DistributedDataParallel,
            on N GPUs (rank r on ``cuda:r``) when ``device`` is "cuda", or "auto" on a CUDA machine, else
            N CPU processes (Gloo). ``batch_size`` stays the global batch: each rank trains on its slice
            of every batch of the one-process run (same images, same order), and each rank draws its own
            erasing / augmentation stream, seeded by the epoch seed with its rank mixed in
            (:func:`midre.seeding.rank_seed`). The result is statistically equivalent to one process,
            not bit-identical, so a device count > 1 is part of the fingerprint. Trap-MID (triggers
            trained outside the model, per rank) is refused; details in :mod:`midre.distributed`.
    """

    data: DatasetSpec
    arch: str = "cnn-small"
    defense: dict[str, Any] = field(default_factory=lambda: {"name": "nodef"})
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.75, 0.9)
    augment: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    weights_path: str | None = None
    init_from: str | None = None
    eval_every: int = 1
    devices: int = 1
    #: Validate on construction; ``False`` builds an already resolved config as it is (not a field).
    check: InitVar[bool] = True

    def __post_init__(self, check: bool = True) -> None:
        if isinstance(self.data, Mapping):
            self.data = _dataset_spec_from_dict(self.data)
        if not isinstance(self.data, DatasetSpec):
            raise ConfigError("data", f"expected a DatasetSpec or an object, got {type(self.data).__name__}")
        self.milestones = tuple(float(m) for m in self.milestones)
        self.augment = tuple(self.augment)
        if check:
            self._validate()

    def _validate(self) -> None:
        if self.arch not in list_models():
            raise ConfigError("arch", f"unknown architecture {self.arch!r}; known: {', '.join(list_models())}")
        try:
            check_input_size(self.arch, self.data.image_size)
        except ConfigError as exc:
            raise exc.within("data") from None
        if isinstance(self.defense, str):
            self.defense = {"name": self.defense}
        defense = build_defense(self.defense)  # validates
        self.defense = defense.spec()  # fills defaults
        for name, low in (("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("seed", 0), ("devices", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
        if self.seed >= 2**32:  # seeds are mixed into per-stream seeds (midre.seeding): keep them in range
            raise ConfigError("seed", f"must be < 2**32, got {self.seed}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(name, f"must be a number, got {value!r}")
            if value < 0 or (name == "lr" and value == 0):
                raise ConfigError(name, f"must be {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ConfigError("milestones", f"fractions of the epochs in (0, 1), got {self.milestones}")
        bad = [a for a in self.augment if a not in AUGMENTATIONS]
        if bad:
            raise ConfigError("augment", f"unknown {bad[0]!r}; known: {', '.join(AUGMENTATIONS)}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            raise ConfigError("device", f"'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_devices(self.devices, self.device, self.batch_size, getattr(defense, "parts", [defense]))

    def check_devices(self) -> None:
        """Refuse ``devices`` that this machine cannot give (:func:`train` calls it before any work; not
        on construction, so a config can be built where it will not run, e.g. a service's gateway)."""
        check_visible_devices(self.devices, self.device)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, check: bool = True) -> TrainConfig:
        """Build from plain JSON-like data; an unknown key raises ValueError naming it (``check=False``:
        an already resolved config, built as it is)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(unknown[0], f"unknown training option; known: {', '.join(sorted(names))}")
        if "data" not in d:
            raise ConfigError("data", "required")
        return cls(**dict(d), check=check)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = dataclasses.asdict(self.data)
        out["milestones"], out["augment"] = list(self.milestones), list(self.augment)
        return out

    def fingerprint(self) -> str:
        """Hash of what changes the result (the device does not), to refuse resuming a different run."""
        d = self.to_dict()
        d.pop("device")
        if d["devices"] == 1:  # one device hashes as before the option existed: its resume state still matches
            d.pop("devices")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_file(path: str | None) -> str | None:
    """A weights file, or the ``model.safetensors`` of a checkpoint folder."""
    if path is not None and Path(path).is_dir():
        return str(Path(path) / WEIGHTS_FILE)
    return path


def _dataset_spec_from_dict(d: Mapping[str, Any]) -> DatasetSpec:
    names = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"data.{unknown[0]}", f"unknown data option; known: {', '.join(sorted(names))}")
    try:
        return DatasetSpec(**dict(d))
    except DatasetError as exc:
        raise ConfigError(f"data.{exc.field}" if exc.field else "data", exc.message) from None


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    out_dir: Path
    card: dict[str, Any]
    history: list[dict[str, float]]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.card["metrics"]


def _hflip(x: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _shift(x: Tensor, generator: torch.Generator, fraction: float = 0.125) -> Tensor:
    """Translate each image by its own whole-pixel offset of at most ``fraction`` of its side."""
    n, _, h, w = x.shape
    limit = torch.tensor([max(1, int(w * fraction)), max(1, int(h * fraction))], device=generator.device)
    draws = torch.randint(-2**20, 2**20, (n, 2), generator=generator, device=generator.device)
    offsets = draws % (2 * limit + 1) - limit
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = 2 * offsets.to(x.device, x.dtype) / torch.tensor([w, h], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)


@torch.no_grad()
def predictions(model: nn.Module, images: ImageSet, normalization: Any, device: torch.device,
                batch_size: int = 256) -> Tensor:
    """Top-1 predictions ``[N]`` (CPU) of ``model`` on an :class:`ImageSet` (no augmentation, no erasing)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float(images.images[start:start + batch_size].to(device), normalization)
            out.append(model(x).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate_accuracy(
    model: nn.Module, images: ImageSet, normalization: Any, device: torch.device, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` on an :class:`ImageSet` (no augmentation, no erasing)."""
    if len(images) == 0:
        return float("nan")
    return float((predictions(model, images, normalization, device, batch_size) == images.labels).double().mean())


def accuracy_by_identity(model: nn.Module, images: ImageSet, normalization: Any,
                         device: torch.device) -> dict[int, tuple[int, int]]:
    """``{identity: (correct, total)}`` of ``model``'s top-1 predictions on an :class:`ImageSet`."""
    hit = predictions(model, images, normalization, device) == images.labels
    return {int(i): (int(hit[images.labels == i].sum()), int((images.labels == i).sum()))
            for i in images.labels.unique().tolist()}


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.schedule == "multistep":
        steps = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".last.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class _Run:
    """A training run in progress: what the steps of :func:`train` share."""

    cfg: TrainConfig
    out: Path
    fingerprint: str
    device: torch.device
    splits: Any
    model: nn.Module
    defense: Defense
    opt: torch.optim.Optimizer
    sched: Any
    images: Tensor  # the training split, uint8 on the device
    labels: Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    elapsed: float = 0.0  # seconds trained before a resume
    ranks: Ranks = field(default_factory=Ranks)  # one process alone, or this rank's place among several
    step_loss: Any = None  # (x, y, epoch) -> the defense's (loss, logits, logs); through DDP over several ranks

    def __post_init__(self) -> None:
        if self.step_loss is None:  # one process: the defense's loss on the model itself
            self.step_loss = self.ranks.loss_fn(self.model, self.defense.loss)

    @property
    def use_cuda(self) -> bool:
        return self.device.type == "cuda"


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train ``cfg.arch`` on ``cfg.data`` with ``cfg.defense``; write the checkpoint to ``out_dir``.

    Args:
        cfg: the run.
        out_dir: output folder; if it already holds this run's resume state, training continues
            after the last finished epoch, and if it holds this run's finished checkpoint, that is
            returned without training again.
        progress: called with a :class:`ProgressEvent` after every step and epoch.
        should_stop: polled between steps; True raises :class:`Cancelled` (the resume state of the
            last finished epoch stays on disk).
        resume: set False to ignore (and overwrite) existing resume state.

    With ``cfg.devices > 1`` the training runs in that many rank processes (:mod:`midre.distributed`):
    this process relays rank 0's progress, polls ``should_stop`` and ends the ranks on a stop, and a
    rank that fails or is killed raises :class:`midre.errors.TransientError` (the resume state of the
    last finished epoch stays, so a retry continues from it).

    Returns:
        A :class:`TrainResult` whose ``card`` is the content of ``model.json``: ``arch``,
        ``num_classes``, ``class_names``, ``image_size``, ``channels``, ``normalization``,
        ``defense``, ``metrics`` (train_loss, train_accuracy, test_accuracy, epochs, seconds),
        ``seed``, ``config``, ``data`` (dataset summary), ``versions``.
    """
    progress = progress or no_progress
    should_stop = should_stop or never_stop
    cfg.check_devices()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = cfg.fingerprint()
    if resume:
        done = _finished_run(out, fingerprint)
        if done is not None:
            log.info("%s already holds this finished run; not training again", out)
            progress(ProgressEvent("done", 1.0, "already trained", metrics=_numeric(done.metrics)))
            return done
    if cfg.devices > 1:
        return _train_distributed(cfg, out, fingerprint, progress, should_stop, resume)
    result = _run(cfg, out, fingerprint, progress, should_stop, resume, Ranks())
    assert result is not None
    return result


def _run(cfg: TrainConfig, out: Path, fingerprint: str, progress: ProgressCallback, should_stop: StopCallback,
         resume: bool, ranks: Ranks) -> TrainResult | None:
    """The training of one process: alone, or one rank of several (only rank 0 evaluates, saves the
    resume state and the checkpoint, and reports progress; the others return None)."""
    run = _prepare(cfg, out, fingerprint, progress, ranks)
    if resume:
        _resume(run, progress)
    test_acc = float("nan")
    t0 = time.perf_counter()
    for epoch in range(run.start_epoch, cfg.epochs):
        train_loss, train_accuracy, logs = _train_epoch(run, epoch, progress, should_stop)
        run.sched.step()
        if not ranks.main:
            continue
        if epoch + 1 == cfg.epochs or (epoch + 1) % cfg.eval_every == 0:
            test_acc = evaluate_accuracy(run.model, run.splits.test, run.splits.normalization, run.device)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                  "test_accuracy": test_acc, "lr": run.opt.param_groups[0]["lr"], **logs}
        run.history.append(record)
        _save_resume(out / RESUME_FILE, _resume_state(run, epoch + 1, run.elapsed + time.perf_counter() - t0))
        progress(ProgressEvent(
            "epoch", (epoch + 1) / cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs} done", epoch=epoch + 1,
            epochs=cfg.epochs, metrics={k: v for k, v in record.items() if k not in ("epoch",)},
        ))
    return _finish(run, run.elapsed + time.perf_counter() - t0, progress) if ranks.main else None


def _train_distributed(cfg: TrainConfig, out: Path, fingerprint: str, progress: ProgressCallback,
                       should_stop: StopCallback, resume: bool) -> TrainResult:
    """Run :func:`_rank_main` in ``cfg.devices`` processes; the checkpoint rank 0 wrote is the result."""
    payload = {"config": cfg.to_dict(), "fingerprint": fingerprint, "out_dir": str(out.resolve()), "resume": resume}
    launch("midre.train:_rank_main", payload, cfg.devices, cuda=resolve_device(cfg.device).type == "cuda",
           progress=progress, should_stop=should_stop)
    done = _finished_run(out, fingerprint)
    if done is None:
        raise TransientError(f"the {cfg.devices} training ranks exited without writing the checkpoint into {out}")
    return done


def _rank_main(ranks: Ranks, payload: Mapping[str, Any]) -> None:
    """One rank of a run over several devices (the entry :func:`midre.distributed.launch` starts)."""
    cfg = TrainConfig.from_dict(payload["config"])
    if cfg.fingerprint() != payload["fingerprint"]:
        raise RuntimeError("the config reached the rank changed: its fingerprint differs from the parent's")
    _run(cfg, Path(payload["out_dir"]), payload["fingerprint"], ranks.progress(), never_stop, payload["resume"], ranks)
    ranks.barrier()  # the others wait until rank 0 has written the checkpoint


def _finished_run(out: Path, fingerprint: str) -> TrainResult | None:
    """The result already in ``out`` when it holds this run's finished checkpoint."""
    if not ((out / CARD_FILE).is_file() and (out / WEIGHTS_FILE).is_file()):
        return None
    card = read_card(out)
    if card.get("fingerprint") != fingerprint:
        return None
    return TrainResult(out, card, card.get("history", []))


def _prepare(cfg: TrainConfig, out: Path, fingerprint: str, progress: ProgressCallback, ranks: Ranks) -> _Run:
    """Load the data, build the seeded model and its defense, the optimizer and the schedule."""
    device = ranks.device or resolve_device(cfg.device)
    progress(ProgressEvent("load", 0.0, f"loading {cfg.data.source}"))
    t_load = time.perf_counter()
    splits = load_dataset(cfg.data)
    num_classes = len(splits.class_names)
    log.info("loaded %s: %d train / %d test images, %d identities in %.1fs", cfg.data.source,
             len(splits.train), len(splits.test), num_classes, time.perf_counter() - t_load)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.arch, num_classes, image_size=cfg.data.image_size,
                         in_channels=cfg.data.channels, weights_path=_weights_file(cfg.weights_path))
    defense: Defense = build_defense(cfg.defense)
    defense.setup(TrainContext(
        train_labels=splits.train.labels, num_classes=num_classes, image_size=cfg.data.image_size,
        channels=cfg.data.channels, normalization=splits.normalization, seed=cfg.seed, epochs=cfg.epochs,
        device=device,
    ))
    model = defense.prepare_model(model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = _make_optimizer(cfg, model.parameters())
    return _Run(cfg=cfg, out=out, fingerprint=fingerprint, device=device, splits=splits, model=model,
                defense=defense, opt=opt, sched=_make_schedule(cfg, opt),
                images=splits.train.images.to(device), labels=splits.train.labels.to(device),
                ranks=ranks, step_loss=ranks.loss_fn(model, defense.loss))


def _resume(run: _Run, progress: ProgressCallback) -> None:
    """Continue after the last finished epoch when ``out/checkpoint/last.pt`` holds this run's state."""
    path = run.out / RESUME_FILE
    if not path.is_file():
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != run.fingerprint:
        raise ValueError(
            f"out_dir: {run.out} holds the resume state of a different run; use another folder or resume=False"
        )
    run.model.load_state_dict(state["model"])
    run.defense.load_state_dict(state.get("defense") or {})
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["schedule"])
    run.start_epoch, run.history, run.elapsed = state["epoch"], list(state["history"]), float(state["seconds"])
    log.info("resuming %s after epoch %d", run.out, run.start_epoch)
    progress(ProgressEvent("train", run.start_epoch / run.cfg.epochs, f"resumed after epoch {run.start_epoch}",
                           epoch=run.start_epoch, epochs=run.cfg.epochs))


def _resume_state(run: _Run, epoch: int, seconds: float) -> dict[str, Any]:
    return {"fingerprint": run.fingerprint, "epoch": epoch, "history": run.history, "seconds": seconds,
            "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "schedule": run.sched.state_dict(),
            "defense": run.defense.state_dict()}


def _train_epoch(run: _Run, epoch: int, progress: ProgressCallback,
                 should_stop: StopCallback) -> tuple[float, float, dict[str, float]]:
    """One pass over the epoch's images: mean loss, accuracy and the defense's logs (epoch means).

    Every random draw comes from streams seeded by ``(cfg.seed, epoch)``, so a resumed run repeats it.
    Over several ranks, each trains on its slice of every global batch, with its own augmentation,
    erasing and dropout streams (the rank mixed into their seeds; the shuffle is shared), and the
    epoch's numbers are those of the whole batches.
    """
    cfg, model, defense, device, ranks = run.cfg, run.model, run.defense, run.device, run.ranks
    model.train()
    torch.manual_seed(ranks.seed(epoch_seed(cfg.seed, epoch, GLOBAL_STREAM)))  # dropout & co
    shuffle = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, SHUFFLE_STREAM))
    aug = torch.Generator(device=device).manual_seed(ranks.seed(epoch_seed(cfg.seed, epoch, AUGMENT_STREAM)))
    n = len(run.labels)
    subset = defense.epoch_indices(epoch, n)
    order = subset[torch.randperm(len(subset), generator=shuffle)] if subset is not None else \
        torch.randperm(n, generator=shuffle)
    steps = max(1, math.ceil(len(order) / cfg.batch_size))
    loss_sum, correct, seen = 0.0, 0, 0
    logs: dict[str, float] = {}
    for step in range(steps):
        if should_stop():
            # The resume file already holds the state after the last finished epoch; the
            # half-done epoch is dropped and re-run on resume, so the result stays the same.
            raise Cancelled(f"stopped during epoch {epoch + 1}; will resume after epoch {epoch}")
        idx, weight = ranks.share(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
        idx = idx.to(device)
        x, y = _train_batch(run, idx, epoch, aug)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_cuda and cfg.amp):
            loss, logits, batch_logs = run.step_loss(x, y, epoch)
        run.opt.zero_grad(set_to_none=True)
        (loss * weight if ranks.distributed else loss).backward()  # DDP averages the weighted gradients
        run.opt.step()
        batch_loss = float(loss.detach())
        if weight:  # 0: a rank without a slice of a short last batch, which only joins the all-reduce
            loss_sum += batch_loss * len(idx)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(idx)
        for k, v in batch_logs.items():
            logs[k] = logs.get(k, 0.0) + float(v) / steps
        progress(ProgressEvent(
            "train", (epoch + (step + 1) / steps) / cfg.epochs, "", epoch=epoch + 1, epochs=cfg.epochs,
            step=step + 1, steps=steps, metrics={"loss": batch_loss},
        ))
    if ranks.distributed:  # the whole batches' numbers: sums over the ranks, logs averaged
        keys = sorted(logs)
        loss_sum, correct, seen, *values = ranks.sum([loss_sum, correct, seen, *(logs[k] for k in keys)])
        logs = {k: v / ranks.world_size for k, v in zip(keys, values, strict=True)}
    return loss_sum / max(seen, 1), correct / max(seen, 1), logs


def _train_batch(run: _Run, idx: Tensor, epoch: int, aug: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images ``idx`` as the model trains on them: normalised, augmented, then the defense's transform."""
    x = to_float(run.images[idx], run.splits.normalization)
    y = run.labels[idx]
    if "hflip" in run.cfg.augment:
        x = _hflip(x, aug)
    if "shift" in run.cfg.augment:
        x = _shift(x, aug)
    x = run.defense.transform(x, y, idx, epoch, aug)
    if run.use_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _finish(run: _Run, seconds: float, progress: ProgressCallback) -> TrainResult:
    """Write ``model.safetensors`` + ``model.json`` and drop the resume state they supersede."""
    cfg, norm = run.cfg, run.splits.normalization
    final = run.history[-1] if run.history else {}
    card = {
        "arch": cfg.arch,
        "num_classes": len(run.splits.class_names),
        "class_names": list(run.splits.class_names),
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)} if norm is not None else None,
        "defense": cfg.defense,
        "init_from": cfg.init_from,
        "metrics": {
            "test_accuracy": final.get("test_accuracy"),
            "train_accuracy": final.get("train_accuracy"),
            "train_loss": final.get("train_loss"),
            "epochs": cfg.epochs,
            "train_seconds": round(seconds, 3),
        },
        "history": run.history,
        "seed": cfg.seed,
        "fingerprint": run.fingerprint,
        "config": cfg.to_dict(),
        "data": run.splits.summary,
        "device": str(run.device),
        "versions": package_versions(),
    }
    run.model.eval()
    save_checkpoint(run.model, run.out, card)
    shutil.rmtree(run.out / "checkpoint", ignore_errors=True)  # the finished checkpoint supersedes it
    progress(ProgressEvent("done", 1.0, f"test accuracy {final.get('test_accuracy', float('nan')):.4f}",
                           metrics=_numeric(card["metrics"])))
    return TrainResult(run.out, read_card(run.out), run.history)


def _numeric(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


__all__ = ["TrainConfig", "TrainResult", "evaluate_accuracy", "load_checkpoint", "resolve_device", "train"]
