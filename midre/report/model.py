"""The report as a typed, versioned object: what ``report.json`` holds and what both renderers draw.

One builder (:mod:`midre.report.build`) makes a :class:`Report`; ``report.json`` is its
:meth:`Report.to_dict`; ``report.html`` and the service's dashboard render the same object with the
same template (:mod:`midre.report.render`). :meth:`Report.from_dict` reads any schema version this
library wrote, so a renderer never guards against missing or mistyped fields itself.

Figures follow the paper's units: accuracies and attack accuracies in percent, distances in the
evaluation model's feature units. Every figure over seeds is a :class:`Stat`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

#: Version of ``report.json``. 2: judges without their cache folders, ``plots`` with titles, the
#: target named in ``models.target.label``. 3: 95 % intervals on figures (``ci_low`` / ``ci_high``),
#: ``comparisons``, ``intervals``, ``identities``, adaptive rows (``adaptive``) and ``adaptive``.
#: 4: ``human``, the review figures, when people reviewed the reconstructions (:mod:`midre.report.human`);
#: ``deployment`` (policy, budget, per attack ``queries_used`` / ``budget_stopped`` / ``statement``) for an
#: audit of a model as it is served. Added within 4 (optional, older readers ignore them): ``attack_id`` /
#: ``attack_ids`` on result rows (:func:`midre.attacks.registry.attack_id`).
SCHEMA_VERSION = 4


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _build(cls: type, data: Any) -> Any:
    """An instance of dataclass ``cls`` from a dict: known fields set, the rest kept in ``extra``."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    obj = cls(**{k: v for k, v in data.items() if k in names and k != "extra"})
    if "extra" in names:
        obj.extra = {k: v for k, v in data.items() if k not in names}
    return obj


def _dump(obj: Any) -> Any:
    """JSON form of a report object: fields (minus ``None`` optional ones) with ``extra`` merged in."""
    if isinstance(obj, Stat):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name == "extra":
                continue
            value = getattr(obj, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _dump(value)
        return {**out, **(getattr(obj, "extra", None) or {})}
    if isinstance(obj, dict):
        return {k: _dump(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_dump(v) for v in obj]
    return obj


def _list(cls: type, values: Any) -> list[Any]:
    return [item for v in values or [] if (item := _build(cls, v)) is not None]


OMIT = {"omit_none": True}


@dataclass
class Stat:
    """A figure over seeds: mean, sample std, the per-seed values and how many there are, and its 95 %
    interval (``ci_low`` / ``ci_high``) when the runs stored per-identity outcomes
    (:mod:`midre.report.intervals`)."""

    mean: float
    std: float = 0.0
    n: int = 1
    runs: list[float] = field(default_factory=list)
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Stat | None:
        """A stat from ``{"mean", "std", "n", "runs"}`` or a bare number (``None`` when neither)."""
        if isinstance(value, Stat):
            return value
        if isinstance(value, dict):
            mean = _number(value.get("mean"))
            if mean is None:
                return None
            return cls(mean, _number(value.get("std")) or 0.0, int(value.get("n") or 1),
                       [float(v) for v in value.get("runs") or [] if _number(v) is not None],
                       _number(value.get("ci_low")), _number(value.get("ci_high")))
        number = _number(value)
        return None if number is None else cls(number)

    @property
    def has_interval(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def text(self, digits: int = 2) -> str:
        """``mean [low, high]`` with a 95 % interval, else ``mean ± std`` over seeds, ``mean`` alone for one run."""
        if self.has_interval:
            return f"{self.mean:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": self.mean, "std": self.std, "runs": list(self.runs), "n": self.n}
        if self.has_interval:
            out["ci_low"], out["ci_high"] = self.ci_low, self.ci_high
        return out


def _stats(values: Any) -> dict[str, Stat]:
    return {k: s for k, v in (values or {}).items() if (s := Stat.parse(v)) is not None}


@dataclass
class JudgeScore:
    """One judge's AttAcc in a results row."""

    arch: str
    seed: int | None = None
    attacc_top1: Stat | None = None
    attacc_top5: Stat | None = None

    def __post_init__(self) -> None:
        self.attacc_top1, self.attacc_top5 = Stat.parse(self.attacc_top1), Stat.parse(self.attacc_top5)

    @property
    def name(self) -> str:
        return f"{self.arch} (seed {self.seed})"


@dataclass
class ResultRow:
    """One (attack, defense) row of the results table (the paper's Table 3 layout)."""

    attack: str
    defense: str
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, Stat] = field(default_factory=dict)
    tradeoff_delta: float | str | None = None
    judges: list[JudgeScore] = field(default_factory=list)
    verdict: str | None = field(default=None, metadata=OMIT)
    adaptive: bool = False
    tradeoff_delta_ci: list[float] | None = field(default=None, metadata=OMIT)
    #: The versioned attack id its runs share (``gmi@1+5d41402a``); absent in reports written before ids.
    attack_id: str | None = field(default=None, metadata=OMIT)
    #: The differing ids when its runs do not share one (then ``attack_id`` is absent and a warning says so).
    attack_ids: list[str] | None = field(default=None, metadata=OMIT)

    def __post_init__(self) -> None:
        self.metrics = _stats(self.metrics)
        self.judges = _list(JudgeScore, self.judges)

    def judge_score(self, name: str) -> Stat | None:
        return next((j.attacc_top1 for j in self.judges if j.name == name), None)


@dataclass
class Verdict:
    """A defense against one attack, compared with NoDef, in one plain sentence."""

    attack: str
    defense: str
    status: str
    text: str
    attacc_drop: dict[str, Any] = field(default_factory=dict)
    acc_cost: float | None = None
    judges_disagree: bool | None = field(default=None, metadata=OMIT)
    adaptive: bool = False
    comparison: dict[str, Any] | None = field(default=None, metadata=OMIT)
    against_adaptive: str | None = field(default=None, metadata=OMIT)


@dataclass
class Judge:
    """An evaluation model that scored the reconstructions, with its accuracy on real private images."""

    arch: str
    seed: int | None = None
    accuracy: float | None = None
    accuracy_split: str = "test"
    selected_epoch: int | None = None
    epochs: int | None = None

    @property
    def held_out(self) -> bool:
        return self.accuracy_split == "test"


@dataclass
class Leakage:
    """How much the baseline (or only) model leaks to one attack, against chance and the judges."""

    attack: str
    text: str
    level: str = "none"
    defense: str | None = None
    attacc: float | None = None
    attacc_std: float | None = None
    chance: float | None = None
    reference: float | None = None
    judges_disagree: bool = False


@dataclass
class Warning:  # noqa: A001 - the report's own word for it
    """Something that limits what the report can say (``code`` as documented in docs/attacks.md)."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plot:
    """A picture of the report: its file next to ``report.json`` and its caption.

    ``kind``: ``tradeoff``, ``frontier``, ``grid``, ``features``, ``identities`` or ``summary`` (the one-picture
    summary for sharing; the pages show the tables instead).
    """

    file: str
    title: str
    kind: str

    @property
    def shown(self) -> bool:
        return self.kind != "summary"


@dataclass
class Report:
    """A privacy-utility report (see the module docstring); built by :mod:`midre.report.build`."""

    kind: str
    dataset: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    judges: list[Judge] = field(default_factory=list)
    defenses: list[dict[str, Any]] = field(default_factory=list)
    attacks: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    results: list[ResultRow] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    feature_space: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    leakage: list[Leakage] = field(default_factory=list)
    warnings: list[Warning] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    frontier: list[dict[str, Any]] | None = field(default=None, metadata=OMIT)
    recommendation: dict[str, Any] | None = field(default=None, metadata=OMIT)
    recommendation_note: str | None = field(default=None, metadata=OMIT)
    max_accuracy_drop: float | None = field(default=None, metadata=OMIT)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    intervals: dict[str, Any] = field(default_factory=dict)
    identities: list[dict[str, Any]] = field(default_factory=list)
    adaptive: dict[str, Any] = field(default_factory=dict)
    human: dict[str, Any] | None = field(default=None, metadata=OMIT)
    deployment: dict[str, Any] | None = field(default=None, metadata=OMIT)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.judges = _list(Judge, self.judges)
        self.results = _list(ResultRow, self.results)
        self.verdicts = _list(Verdict, self.verdicts)
        self.leakage = _list(Leakage, self.leakage)
        self.warnings = _list(Warning, self.warnings)
        self.plots = _list(Plot, self.plots)
        if not isinstance(self.human, dict):  # the renderer reads it as a dict or not at all
            self.human = None
        if not isinstance(self.deployment, dict):
            self.deployment = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read ``report.json`` of any schema version (v1 reports get their plots from ``artifacts``)."""
        data = dict(data)
        if int(data.get("schema_version") or 1) < 2 and "plots" not in data:
            files = (data.get("artifacts") or {}).get("plots") or []
            data["plots"] = [plot_for(str(f)) for f in files]
        data.setdefault("kind", "study")
        return _build(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``); a report with a frontier always names its recommendation
        (``null`` when there is none)."""
        out = _dump(self)
        if self.frontier is not None:
            for name in ("recommendation", "recommendation_note", "max_accuracy_drop"):
                out.setdefault(name, None)
        return out

    @property
    def attack_names(self) -> list[str]:
        return [str(a.get("name")) if isinstance(a, dict) else str(a) for a in self.attacks]

    @property
    def judge_names(self) -> list[str]:
        """Every judge named in the results rows, in order of appearance."""
        return list(dict.fromkeys(j.name for row in self.results for j in row.judges))

    @property
    def adaptive_rows(self) -> list[ResultRow]:
        return [r for r in self.results if r.adaptive]

    @property
    def panel_rows(self) -> list[ResultRow]:
        """Rows with per-judge figures (a judge panel scored them)."""
        return [r for r in self.results if r.judges or any(m in r.metrics for m in ("agreement", "double_check"))]

    @property
    def query_curves(self) -> list[dict[str, Any]]:
        """Runs of query-budgeted attacks with their AttAcc after each number of queries."""
        return [r for r in self.runs if r.get("attacc_vs_queries")]

    def shown_plots(self, kind: str) -> list[Plot]:
        return [p for p in self.plots if p.kind == kind and p.shown]


def plot_for(file: str) -> Plot:
    """The :class:`Plot` of a picture the report wrote, its kind and caption from its file name."""
    stem = file.rsplit("/", 1)[-1].removesuffix(".png")
    if stem.startswith("grid_"):
        return Plot(file, f"Reconstructions next to real private samples: {stem[5:]}", "grid")
    if stem.startswith("features_"):
        return Plot(file, f"Feature space: {stem[9:].replace('__', ', ').replace('_', ' ').strip()}", "features")
    if stem.startswith("frontier_"):
        return Plot(file, f"Privacy-utility frontier: {stem[9:]}", "frontier")
    if stem == "identities":
        return Plot(file, "The identities that leak most under the baseline: a real private image above each defense's "
                          "reconstruction (first seed, first attack)", "identities")
    if stem == "summary":
        return Plot(file, "The report in one picture", "summary")
    return Plot(file, "Privacy-utility trade-off" if stem == "tradeoff" else stem, "tradeoff")


__all__ = ["SCHEMA_VERSION", "Judge", "JudgeScore", "Leakage", "Plot", "Report", "ResultRow", "Stat", "Verdict",
           "Warning", "plot_for"]
