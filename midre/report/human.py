"""Human review of reconstructions: people look at a reconstruction and a few candidate identities and pick
one (or "none"); :func:`summarize` turns their answers into the report's ``human`` figures.

An answer is a dict with ``reviewer`` (str), ``kind`` and ``correct`` (bool):

* ``kind="reconstruction"``: a reconstruction shown with candidates; it also carries ``attack``,
  ``defense``, ``seed``, ``identity`` (the attacked identity), ``item`` (a stable id of the reconstruction,
  the same for every reviewer who saw it), ``judge_hits`` (per judge of the report, whether its top-1 is
  the attacked identity; ``None`` when unknown), ``chance`` (1 / (candidates + 1): the "none" option counts)
  and optionally ``image`` (a ``data:image/...;base64`` URL, shown for the judges' false positives).
* ``kind="control_real"`` (a real private image of one of the candidates) and ``kind="control_blank"`` (a
  picture of nobody among them, "none" is right): controls with a known answer. A reviewer who answers
  too few of them, or too many wrongly, is left out of every figure: their answers on reconstructions
  cannot be told from guessing.

The figures, per (attack, defense), over the included reviewers' answers on reconstructions:

* ``attacc_top1``: the share of answers that picked the attacked identity (percent), the human AttAcc,
  with a 95 % percentile-bootstrap interval that resamples identities and reviewers (two-way): a
  replicate draws the row's identities with replacement, draws its reviewers with replacement, and
  pools every answer of each drawn (identity, reviewer) cell, as often as the cell was drawn.
* ``chance``: the mean of the answers' ``chance`` (percent), what guessing scores.
* ``judge_attacc_top1``: the first judge's AttAcc on the same answers (percent), so the two figures
  weigh every reconstruction alike; ``kappa``: Cohen's kappa between a reviewer's verdict and that
  judge's on the same answers (1: the judge credits exactly what people credit; 0: agreement no better
  than their two rates imply); ``kappa_per_judge`` the same for each judge.
* ``judge_false_positives``: reconstructions the first judge credited although most included reviewers
  who saw it did not pick the attacked identity (a tie is not a majority): images a classifier takes
  for the person that people do not.

Reviewer agreement is the mean of Cohen's kappa over pairs of included reviewers, each pair on the
reconstructions both answered. Everything is deterministic given ``seed``; numpy only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

KINDS = ("reconstruction", "control_real", "control_blank")
#: Most judge false positives listed (with their images) in the summary.
MAX_FALSE_POSITIVES = 24
_DATA_URL = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+=*")


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no verdicts on the same cases: (observed agreement - expected
    agreement) / (1 - expected agreement), the expected one from each rater's own rate of "yes".
    ``None`` when undefined: no cases, or expected agreement 1 (both raters said the same thing to every case)."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs two equally long sequences, got {len(a)} and {len(b)}")
    if not len(a):
        return None
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    observed = float(np.mean(x == y))
    pa, pb = float(x.mean()), float(y.mean())
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected >= 1 - 1e-12:
        return None
    return (observed - expected) / (1 - expected)


def _pct(value: float) -> str:
    return f"{round(value, 1):g}"


def _check(answers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n, answer in enumerate(answers):
        if answer.get("kind") not in KINDS:
            raise ValueError(f"answer {n}: kind must be one of {', '.join(KINDS)}, got {answer.get('kind')!r}")
        needed = ("reviewer", "correct") + (("attack", "defense", "identity", "item", "chance")
                                            if answer["kind"] == "reconstruction" else ())
        missing = [k for k in needed if answer.get(k) is None]
        if missing:
            raise ValueError(f"answer {n}: missing {', '.join(missing)}")
        out.append(answer)
    return out


def _reviewers(answers: list[dict[str, Any]], control_floor: float, min_controls: int) -> list[dict[str, Any]]:
    """Per reviewer (sorted by name): answers, controls answered, control accuracy (percent), the share of
    their reconstruction answers that were right and its chance level (percent, ``None`` without any;
    shown for every reviewer, also the excluded ones), and whether they are included, with the reason
    when not."""
    rows = []
    for name in sorted({str(a["reviewer"]) for a in answers}):
        own = [a for a in answers if str(a["reviewer"]) == name]
        controls = [bool(a["correct"]) for a in own if a["kind"] != "reconstruction"]
        accuracy = 100.0 * sum(controls) / len(controls) if controls else None
        reason = None
        if len(controls) < min_controls:
            reason = f"answered {len(controls)} controls, needs {min_controls}"
        elif accuracy is not None and accuracy < 100.0 * control_floor - 1e-9:
            reason = f"control accuracy {_pct(accuracy)} % < floor {_pct(100.0 * control_floor)} %"
        recon = [a for a in own if a["kind"] == "reconstruction"]
        rows.append({"reviewer": name, "answers": len(own), "controls": len(controls),
                     "control_accuracy": accuracy,
                     "attacc_top1": 100.0 * sum(bool(a["correct"]) for a in recon) / len(recon) if recon else None,
                     "chance": 100.0 * sum(float(a["chance"]) for a in recon) / len(recon) if recon else None,
                     "included": reason is None, "reason": reason})
    return rows


def _draw_counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """``(resamples, n)``: how often each of ``n`` units is drawn in each replicate (n draws with replacement)."""
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def two_way_interval(answers: Sequence[dict[str, Any]], resamples: int, seed: Sequence[int] | int,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval (percent) of the share of ``answers`` correct, resampling identities
    and reviewers with replacement; replicates that draw no answer are skipped (``None`` if all are)."""
    identities = sorted({str(a["identity"]) for a in answers})
    reviewers = sorted({str(a["reviewer"]) for a in answers})
    i_index = {k: n for n, k in enumerate(identities)}
    r_index = {k: n for n, k in enumerate(reviewers)}
    hits = np.zeros((len(identities), len(reviewers)))
    total = np.zeros_like(hits)
    for a in answers:
        cell = i_index[str(a["identity"])], r_index[str(a["reviewer"])]
        hits[cell] += bool(a["correct"])
        total[cell] += 1
    rng = np.random.default_rng(seed)
    by_identity = _draw_counts(rng, resamples, len(identities))
    by_reviewer = _draw_counts(rng, resamples, len(reviewers))
    h = np.einsum("bi,ij,bj->b", by_identity, hits, by_reviewer)
    t = np.einsum("bi,ij,bj->b", by_identity, total, by_reviewer)
    kept = t > 0
    if not kept.any():
        return None
    shares = 100.0 * h[kept] / t[kept]
    tail = 100.0 * (1 - level) / 2
    low, high = np.percentile(shares, [tail, 100.0 - tail])
    return float(low), float(high)


def _judged(answers: Sequence[dict[str, Any]], judge: int) -> tuple[list[bool], list[bool]]:
    """(human verdicts, judge ``judge``'s verdicts) over the answers whose ``judge_hits`` know that judge."""
    known = [a for a in answers if a.get("judge_hits") is not None and len(a["judge_hits"]) > judge
             and a["judge_hits"][judge] is not None]
    return [bool(a["correct"]) for a in known], [bool(a["judge_hits"][judge]) for a in known]


def _items(answers: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    items: dict[str, list[dict[str, Any]]] = {}
    for a in answers:
        items.setdefault(str(a["item"]), []).append(a)
    return items


def judge_false_positives(answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reconstructions (one answer each, sorted by attack, defense, seed, identity, item) that the first
    judge credited while most answers on them are not correct."""
    out = []
    for answers_on_item in _items(answers).values():
        hit = next((a["judge_hits"][0] for a in answers_on_item
                    if a.get("judge_hits") and a["judge_hits"][0] is not None), None)
        wrong = sum(not a["correct"] for a in answers_on_item)
        if hit and 2 * wrong > len(answers_on_item):
            out.append(answers_on_item[0])
    return sorted(out, key=lambda a: (str(a["attack"]), str(a["defense"]), _order(a.get("seed")),
                                      _order(a["identity"]), str(a["item"])))


def _order(value: Any) -> tuple[int, int, str]:
    """Sort key putting numbers first in numeric order, then anything else by its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return 0, value, ""
    return 1, 0, str(value)


def _row(attack: str, defense: str, answers: list[dict[str, Any]], judges: Sequence[str], resamples: int,
         seed: Sequence[int]) -> dict[str, Any]:
    """One (attack, defense) row of ``results`` (see the module docstring)."""
    mean = 100.0 * float(np.mean([bool(a["correct"]) for a in answers]))
    bounds = two_way_interval(answers, resamples, seed)
    human, judge = _judged(answers, 0)
    has_judge = bool(judge)
    return {
        "attack": attack, "defense": defense, "answers": len(answers),
        "identities": len({str(a["identity"]) for a in answers}),
        "reviewers": len({str(a["reviewer"]) for a in answers}),
        "attacc_top1": {"mean": mean, "ci_low": bounds[0] if bounds else None,
                        "ci_high": bounds[1] if bounds else None},
        "chance": 100.0 * float(np.mean([float(a["chance"]) for a in answers])),
        "judge_attacc_top1": 100.0 * float(np.mean(judge)) if has_judge else None,
        "kappa": cohen_kappa(human, judge) if has_judge else None,
        "kappa_per_judge": [cohen_kappa(*_judged(answers, j)) for j in range(len(judges))],
        "judge_false_positives": len(judge_false_positives(answers)) if has_judge else None,
    }


def reviewer_agreement(answers: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean Cohen's kappa over pairs of reviewers, each pair on the items both answered (a reviewer's first
    answer on an item counts); pairs sharing fewer than two items, or with an undefined kappa, are skipped."""
    verdicts: dict[str, dict[str, bool]] = {}
    for a in answers:
        verdicts.setdefault(str(a["reviewer"]), {}).setdefault(str(a["item"]), bool(a["correct"]))
    names = sorted(verdicts)
    kappas = []
    for n, first in enumerate(names):
        for second in names[n + 1:]:
            shared = sorted(set(verdicts[first]) & set(verdicts[second]))
            if len(shared) < 2:
                continue
            kappa = cohen_kappa([verdicts[first][i] for i in shared], [verdicts[second][i] for i in shared])
            if kappa is not None:
                kappas.append(kappa)
    return {"kappa": float(np.mean(kappas)), "pairs": len(kappas)} if kappas else None


def _false_positive_entry(answer: dict[str, Any]) -> dict[str, Any]:
    entry = {k: answer.get(k) for k in ("item", "attack", "defense", "seed", "identity")}
    image = answer.get("image")
    if isinstance(image, str) and _DATA_URL.fullmatch(image):  # only inline raster pictures reach the page
        entry["image"] = image
    return entry


def interval_note(resamples: int) -> str:
    """What the human AttAcc interval shows and what it does not, in one sentence."""
    return (f"The 95 % interval is a percentile bootstrap ({resamples} resamples) that redraws the attacked "
            "identities and the included reviewers, so it shows how far the figure could move with other "
            "identities of the same data set and other reviewers like these; it does not cover the training "
            "variance of the target (other seeds) unless reconstructions of several seeds were reviewed, nor "
            "reviewers unlike these (other populations, other instructions), nor a bias every answer shares.")


def summarize(answers: Iterable[dict[str, Any]], *, judges: Sequence[str] = (), control_floor: float = 0.75,
              min_controls: int = 4, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The ``human`` section of a report from reviewers' answers (see the module docstring).

    Reviewers who answered fewer than ``min_controls`` controls, or got fewer than ``control_floor`` of
    them right, are listed with the reason and left out of every figure. ``judges`` names the judges in
    the order of each answer's ``judge_hits``; the first is the one compared with people.
    """
    answers = _check(answers)
    per_reviewer = _reviewers(answers, control_floor, min_controls)
    included = {r["reviewer"] for r in per_reviewer if r["included"]}
    kept = [a for a in answers if a["kind"] == "reconstruction" and str(a["reviewer"]) in included]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in kept:
        rows.setdefault((str(a["attack"]), str(a["defense"])), []).append(a)
    results = [_row(attack, defense, rows[attack, defense], judges, resamples, [seed, n])
               for n, (attack, defense) in enumerate(sorted(rows))]
    false_positives = judge_false_positives(kept)
    return {
        "answers": len(answers), "reviewers": len(per_reviewer), "included": len(included),
        "control_floor": control_floor, "min_controls": min_controls, "resamples": resamples, "seed": seed,
        "per_reviewer": per_reviewer, "judges": list(judges), "results": results,
        "reviewer_agreement": reviewer_agreement(kept),
        "false_positives": [_false_positive_entry(a) for a in false_positives[:MAX_FALSE_POSITIVES]],
        "interval": interval_note(resamples),
    }


__all__ = ["KINDS", "MAX_FALSE_POSITIVES", "cohen_kappa", "interval_note", "judge_false_positives",
           "reviewer_agreement", "summarize", "two_way_interval"]
