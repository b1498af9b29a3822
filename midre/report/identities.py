"""Which identities leak: per identity, how often its reconstructions were credited, per defense.

From the per-identity outcomes every attack run stores (``record["identities"]``): an identity's
``recovered`` share for a defense is its pooled top-1 AttAcc (all judges) averaged over the defense's
seeds and standard attacks. The report lists every attacked identity, the ones that leak most under the
baseline first, and draws a picture of the most leaking ones: a real private image above the first
seed's reconstruction of that identity under each defense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midre.report.verdicts import defense_name

#: Identities drawn in the picture (the most leaking ones under the baseline).
PICTURED = 8


def leaking_identities(records: list[dict[str, Any]], defenses: list[str],
                       class_names: list[str]) -> list[dict[str, Any]]:
    """``[{"identity", "name", "recovered": {defense: percent}, "runs"}]``, most leaking under the
    first defense (the baseline) first; empty when no run stored per-identity outcomes."""
    shares: dict[int, dict[str, list[float]]] = {}
    runs: dict[int, int] = {}
    for r in records:
        if r.get("adaptive") or r["defense"] not in defenses:
            continue
        for key, per in (r.get("identities") or {}).items():
            value = per.get("attacc_top1")
            if value is None:
                continue
            shares.setdefault(int(key), {}).setdefault(r["defense"], []).append(float(value))
            runs[int(key)] = runs.get(int(key), 0) + 1
    out = []
    for identity, per_defense in shares.items():
        recovered = {d: sum(v) / len(v) for d in defenses if (v := per_defense.get(d))}
        out.append({"identity": identity,
                    "name": class_names[identity] if identity < len(class_names) else str(identity),
                    "recovered": recovered, "runs": runs[identity]})
    base = defenses[0] if defenses else None
    out.sort(key=lambda e: (-e["recovered"].get(base, 0.0), e["identity"]))
    return out


def identities_picture(leaks: list[dict[str, Any]], out: Path, defenses: list[str], seed: int,
                       attack: str, private: Any) -> bytes | None:
    """The most leaking identities: a real private image above each defense's first reconstruction of them
    (seed ``seed``, attack ``attack``); ``None`` when nothing can be drawn."""
    from midre.outputs import attack_dir, load_reconstructions
    from midre.report import plots

    chosen = [e["identity"] for e in leaks[:PICTURED]
              if bool((private.labels == e["identity"]).any())]
    if not chosen:
        return None
    recon = {}
    for d in defenses:
        path = attack_dir(out, d, seed, attack)
        if not (path / "recon.safetensors").is_file():
            continue
        data = load_reconstructions(path)
        rows = [(data["labels"] == i).nonzero() for i in chosen]
        if any(len(r) == 0 for r in rows):
            continue
        recon[defense_name(d)] = (data["pixels"][[int(r[0]) for r in rows]].float() / 255).numpy()
    if not recon:
        return None
    real = (private.images[[int((private.labels == i).nonzero()[0]) for i in chosen]].float() / 255).numpy()
    names = [next(e["name"] for e in leaks if e["identity"] == i) for i in chosen]
    return plots.image_grid(real, recon, names)


__all__ = ["PICTURED", "identities_picture", "leaking_identities"]
