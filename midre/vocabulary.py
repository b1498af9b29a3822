"""The one metric vocabulary: every number the project reports, with its name and unit.

The trainer and the checkpoint card keep their historical fields (``test_accuracy`` as a fraction);
everything a user reads through the service (job metrics, epoch events, model cards, the served
models list, hand-offs to MLflow) goes through :func:`normalise` and so uses these names and units.
Study reports (``report.json``) already use them. Values are stored unrounded; only displays round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricName:
    """One metric: its unit, what it means, and which direction is better."""

    name: str
    unit: str
    meaning: str
    higher_is_better: bool | None
    label: str = ""


VOCABULARY: dict[str, MetricName] = {m.name: m for m in (
    MetricName("acc", "%", "top-1 accuracy of the model on the held-out private test split (utility)", True, "Acc"),
    MetricName("train_acc", "%", "top-1 accuracy on the training images of the last epoch", True, "Train acc"),
    MetricName("train_loss", "", "mean training loss of the last epoch", False, "Train loss"),
    MetricName("train_seconds", "s", "wall time of training", None, "Train time"),
    MetricName("epochs", "", "training epochs run", None, "Epochs"),
    MetricName("attacc_top1", "%", "share of reconstructions the evaluation model (judge) classifies as the "
               "attacked identity (privacy leak)", False, "AttAcc top-1"),
    MetricName("attacc_top5", "%", "the same with the identity among the judge's five most likely", False,
               "AttAcc top-5"),
    MetricName("knn_dist", "eval-feature sq. L2", "mean smallest squared L2 distance in the judge's penultimate "
               "features from a reconstruction to its identity's private training images", True, "KNN dist"),
    MetricName("delta_eval", "eval-feature sq. L2", "δ_eval of the PPA paper: the same distance as reported by "
               "the study", True, "δ_eval"),
    MetricName("queries", "target forward passes (images)", "images an attack submitted to the target", None,
               "Queries"),
    MetricName("tradeoff_delta", "", "Δ = (AttAcc_NoDef - AttAcc_def) / (Acc_NoDef - Acc_def): AttAcc points "
               "removed per Acc point lost (paper Sec. 3)", True, "Δ"),
)}

#: Library field -> (vocabulary name, factor to its unit).
LIBRARY_NAMES = {
    "test_accuracy": ("acc", 100.0),
    "train_accuracy": ("train_acc", 100.0),
    "train_loss": ("train_loss", 1.0),
    "train_seconds": ("train_seconds", 1.0),
    "epochs": ("epochs", 1.0),
}


def normalise(metrics: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers of ``metrics`` under vocabulary names and units.

    Library names become vocabulary names (``test_accuracy`` 0.9387 -> ``acc`` 93.87); dotted study
    names (``midre.gmi.attacc_top1``) and names already in the vocabulary pass through; other
    numbers pass through unchanged. NaN, infinities and non-numbers are dropped.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        name, factor = LIBRARY_NAMES.get(key, (key, 1.0))
        out[name] = float(value) * factor
    return out


def markdown_table() -> str:
    """The vocabulary as a Markdown table (docs/results.md embeds it; a test keeps them equal)."""
    rows = ["| name | unit | meaning | better |", "| --- | --- | --- | --- |"]
    for m in VOCABULARY.values():
        better = {True: "higher", False: "lower", None: ""}[m.higher_is_better]
        rows.append(f"| `{m.name}` | {m.unit} | {m.meaning} | {better} |")
    return "\n".join(rows)
