"""Where a study keeps what its units wrote, and the small readers of those files.

Targets live in ``targets/<label>/seed<k>/`` (``model.json`` + ``model.safetensors``), attack runs in
``attacks/<label>/seed<k>/<attack>/`` (``metrics.json`` + ``recon.safetensors``): the units write
them, the report, the harden search and the frontier read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from midre.checkpoint import write_json_atomic

RECON_FILE = "recon.safetensors"
METRICS_FILE = "metrics.json"


def attack_dir(out_dir: Path, label: str, seed: int, attack: str, adaptive: bool = False) -> Path:
    """The folder of one attack run (``<attack>-adaptive`` for the adaptive attacker's)."""
    return Path(out_dir) / "attacks" / label / f"seed{seed}" / (f"{attack}-adaptive" if adaptive else attack)


def target_accuracy(out_dir: Path, label: str, seed: int) -> float | None:
    """Test accuracy (percent) of a study's trained target, ``None`` when it has not been trained."""
    path = Path(out_dir) / "targets" / label / f"seed{seed}" / "model.json"
    if not path.is_file():
        return None
    acc = (json.loads(path.read_text()).get("metrics") or {}).get("test_accuracy")
    return None if acc is None else 100.0 * float(acc)


def attack_top1(out_dir: Path, label: str, seed: int, attack: str) -> float | None:
    """Top-1 AttAcc (percent) of a finished attack run, ``None`` when it has not run."""
    path = attack_dir(out_dir, label, seed, attack) / METRICS_FILE
    return float(json.loads(path.read_text())["attacc_top1"]) if path.is_file() else None


def attack_record(run_dir: Path) -> dict[str, Any] | None:
    """The metrics record of a finished attack run (both of its files written), else ``None``."""
    if (run_dir / METRICS_FILE).is_file() and (run_dir / RECON_FILE).is_file():
        return json.loads((run_dir / METRICS_FILE).read_text())
    return None


def collect_records(out_dir: Path, candidates: list[dict[str, Any]], seeds: list[int],
                    attacks: list[str]) -> list[dict[str, Any]]:
    """Every finished attack run's record of the given candidates (skipped seeds/attacks are absent), on
    ``seeds`` or, for a candidate that lists its own (a harden search's finalists), on those."""
    records = []
    for cand in candidates:
        for seed in cand.get("seeds") or seeds:
            for attack in attacks:
                for adaptive in (False, True):
                    path = attack_dir(out_dir, cand["label"], seed, attack, adaptive) / METRICS_FILE
                    if path.is_file():
                        records.append({**json.loads(path.read_text()), "defense": cand["label"], "seed": seed,
                                        "adaptive": adaptive})
    return records


def save_attack_run(run_dir: Path, record: dict[str, Any], pixels: torch.Tensor, labels: torch.Tensor,
                    confidence: torch.Tensor, judge_top1: torch.Tensor | None = None) -> None:
    """Write an attack run: its reconstructions (uint8 pixels, labels, target confidence and, when given,
    ``judge_top1``: each judge's top-1 identity per image, ``[J, N]``), then its record."""
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"pixels": (pixels.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
               "labels": labels.contiguous(), "confidence": confidence.float().contiguous()}
    if judge_top1 is not None:
        tensors["judge_top1"] = judge_top1.to(torch.int64).contiguous()
    save_file(tensors, str(run_dir / RECON_FILE))
    write_json_atomic(run_dir / METRICS_FILE, record)


def load_reconstructions(run_dir: Path) -> dict[str, torch.Tensor]:
    """``pixels`` (uint8), ``labels``, ``confidence`` (and ``judge_top1`` where recorded) of a finished
    attack run."""
    from safetensors.torch import load_file

    return load_file(str(run_dir / RECON_FILE))


__all__ = ["attack_dir", "attack_record", "attack_top1", "collect_records", "load_reconstructions",
           "save_attack_run", "target_accuracy"]
