"""What the serving-time defense ``shield`` costs a model's users, measured on its held-out split.

For a trained checkpoint (``midre train`` / a study's ``targets/<label>/seed<k>``) and its own data
spec, compares the answers under ``full`` (the baseline, in the same run) with ``shield`` at several
strengths: top-1 and top-5 accuracy (by construction unchanged: the script checks it), the mean
confidence of the predicted identity, the negative log-likelihood of the true identity and the expected
calibration error (15 bins). Prints one row per policy and each figure's ratio to ``full``::

    uv run python benchmarks/shield_cost.py --target runs/att-defenses/targets/nodef/seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from midre.checkpoint import load_checkpoint, read_card  # noqa: E402
from midre.data import load_dataset, to_float  # noqa: E402
from midre.deployment import shield  # noqa: E402
from midre.study import dataset_spec_from  # noqa: E402


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of the predicted identity's confidence (equal-width bins)."""
    conf, pred = probs.max(1)
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.float().mean()) * abs(float((pred[inside] == labels[inside]).float().mean())
                                                         - float(conf[inside].mean()))
    return total


def figures(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    return {"top1 %": 100 * float((probs.argmax(1) == labels).float().mean()),
            "top5 %": 100 * float((top5 == labels[:, None]).any(1).float().mean()),
            "confidence": float(probs.max(1).values.mean()),
            "nll": float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()),
            "ece": ece(probs, labels)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="folder of a trained model (model.json + safetensors)")
    parser.add_argument("--strengths", default="0.5,0.8,0.95", help="shield strengths to measure")
    args = parser.parse_args()
    model, card = load_checkpoint(args.target)
    model.eval()
    spec = dataset_spec_from((read_card(args.target).get("config") or {})["data"])
    splits = load_dataset(spec)
    test, norm = splits.test, splits.normalization
    with torch.no_grad():
        x = to_float(test.images, norm)
        probs = torch.cat([model(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)])
    base = figures(probs, test.labels)
    rows = [("full", base)] + [(f"shield s={s}", figures(shield(probs, float(s)), test.labels))
                               for s in args.strengths.split(",")]
    print(f"{args.target}: {len(test.labels)} held-out images, {probs.shape[1]} identities")
    print(f"{'policy':<16}" + "".join(f"{k:>22}" for k in base))
    for name, values in rows:
        cells = "".join(f"{values[k]:>12.4f} ({values[k] / base[k] if base[k] else float('nan'):5.2f}x)"
                        for k in base)
        print(f"{name:<16}{cells}")
        assert abs(values["top1 %"] - base["top1 %"]) < 1e-9 and abs(values["top5 %"] - base["top5 %"]) < 1e-9
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
