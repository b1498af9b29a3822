"""A bounded, per-process LRU cache of loaded models, keyed by the weights' sha256.

Artifacts are content-addressed blobs, so a checkpoint is rebuilt with
:func:`midre.checkpoint.load_checkpoint` from a folder of two symlinks (``model.json`` and
``model.safetensors``) pointing at the blobs: no copy, and the same weights are loaded once however
many jobs share them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from midre.checkpoint import CARD_FILE, WEIGHTS_FILE, load_checkpoint
from services.serving.batcher import DynamicBatcher
from services.storage import LocalStore

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to serve: eval mode, on its device, with its card and batcher."""

    key: str
    model: nn.Module
    card: dict[str, Any]
    device: torch.device
    batcher: DynamicBatcher | None = field(default=None, repr=False)
    channels_last: bool = False

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the logits of a normalised float batch, on the CPU (runs in the executor)."""
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            else:
                x = x.to(self.device, non_blocking=True)
            logits = self.model(x)
            return torch.softmax(logits.float(), dim=1).cpu()


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` into that convolution (the BN becomes ``Identity``); returns how many.

    Exact up to float rounding (an eval BN is an affine map per channel); saves a pass over every
    activation. Only Sequential neighbours are folded: there the convolution's output feeds
    nothing but the BN.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
                folded += 1
    return folded


def for_serving(model: nn.Module, card: dict[str, Any], device: torch.device) -> tuple[nn.Module, bool]:
    """The model as served: batch norms folded into their convolutions and, on the CPU, the
    channels-last layout (oneDNN's fast convolutions; measured 1.5-3x faster for ``cnn-small``)
    and a traced graph (:func:`traced`). Returns ``(model, channels_last)``; predictions equal the
    checkpoint's up to float rounding."""
    fold_batchnorm(model)
    channels_last = device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        model = traced(model, card, device, channels_last) or model
    return model, channels_last


def traced(model: nn.Module, card: dict[str, Any], device: torch.device, channels_last: bool) -> nn.Module | None:
    """``model`` as a frozen TorchScript trace, or None when it cannot be traced faithfully.

    Why: an eager forward takes the GIL back after every layer, and in an API process the event
    loop holds it most of the time; measured on 2 cores, a batched ``cnn-small`` forward took 1.6-2x
    its CPU time in wall time next to a busy Python thread, a traced one (the whole graph in C++,
    one GIL release) about 1.3x. The trace is checked against the eager model on another batch
    size (and must keep answering any batch size); torch versions without ``torch.jit`` fall back.
    """
    try:
        size, channels = int(card["image_size"]), int(card["channels"])
    except (KeyError, TypeError, ValueError):
        return None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def example(n: int) -> torch.Tensor:
        return torch.rand(n, channels, size, size, device=device).contiguous(memory_format=memory_format)

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.compile/export
            graph = torch.jit.freeze(torch.jit.trace(model, example(2)))
            check = example(3)
            if not torch.allclose(graph(check), model(check), rtol=1e-4, atol=1e-5):
                return None
    except Exception:  # noqa: BLE001 - untraceable models are served eagerly
        log.info("serving %s eagerly: it cannot be traced", card.get("arch"), exc_info=True)
        return None
    return graph


def load_from_store(store: LocalStore, card_sha: str, weights_sha: str, device: str | torch.device) -> tuple[
    nn.Module, dict[str, Any]
]:
    """``load_checkpoint`` on the two blobs of a checkpoint."""
    with tempfile.TemporaryDirectory(prefix="midre-serve-") as tmp:
        folder = Path(tmp)
        (folder / CARD_FILE).symlink_to(store.path(card_sha))
        (folder / WEIGHTS_FILE).symlink_to(store.path(weights_sha))
        return load_checkpoint(folder, device=device)


class ModelCache:
    """At most ``capacity`` models loaded at once; the least recently used one is dropped first.

    Args:
        capacity: models kept.
        loader: ``(card_sha, weights_sha) -> (model, card)``.
        device: where models live.
        on_evict: called with an evicted entry (stops its batcher).
        prepare: ``(model, card, device) -> (model, channels_last)`` applied to a loaded model
            (:func:`for_serving`).
    """

    def __init__(
        self,
        capacity: int,
        loader: Callable[[str, str], tuple[nn.Module, dict[str, Any]]],
        device: torch.device,
        on_evict: Callable[[LoadedModel], None] | None = None,
        prepare: Callable[[nn.Module, dict[str, Any], torch.device], tuple[nn.Module, bool]] | None = None,
    ) -> None:
        self.capacity = capacity
        self.loader = loader
        self.device = device
        self.on_evict = on_evict
        self.prepare = prepare
        self._entries: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, weights_sha: str) -> bool:
        return weights_sha in self._entries

    def get(self, card_sha: str, weights_sha: str) -> LoadedModel:
        """The loaded model of a checkpoint (loaded now on a miss; blocking, call off the loop)."""
        with self._lock:
            entry = self._entries.get(weights_sha)
            if entry is not None:
                self._entries.move_to_end(weights_sha)
                self.hits += 1
                return entry
            model, card = self.loader(card_sha, weights_sha)
            channels_last = False
            if self.prepare is not None:
                model, channels_last = self.prepare(model, card, self.device)
            entry = LoadedModel(
                key=weights_sha, model=model, card=card, device=self.device, channels_last=channels_last
            )
            self._entries[weights_sha] = entry
            self.loads += 1
            while len(self._entries) > self.capacity:
                _, old = self._entries.popitem(last=False)
                if self.on_evict is not None:
                    self.on_evict(old)
            return entry

    def peek(self, weights_sha: str) -> LoadedModel | None:
        """The entry if loaded (marks it recently used), else None; never loads."""
        with self._lock:
            entry = self._entries.get(weights_sha)
            if entry is not None:
                self._entries.move_to_end(weights_sha)
                self.hits += 1
            return entry

    def clear(self) -> None:
        """Drop every model."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            if self.on_evict is not None:
                self.on_evict(entry)
