"""Calibrate attack budgets on real faces: AttAcc of each attack setting on NoDef and MIDRE targets.

Trains ``cnn-small`` targets (NoDef and MIDRE, several seeds) on the private identities of a face
data set, one evaluation model (ResNet-18 on every private image), the GMI prior(s) on the public
images, then runs every attack setting of the sweep on every target and prints top-1 / top-5
AttAcc (mean ± std over seeds) with wall time, so budgets can be chosen from measurements rather
than guessed. Needs only torch, torchvision, numpy, safetensors and Pillow (runs on the bare GPU
machine).

Run (GPU):  ``PYTHONPATH=. python3 benchmarks/attack_calibration.py --data PATH --device cuda``
Run (CPU, smoke): ``uv run python benchmarks/attack_calibration.py --data digits --image-size 16
--seeds 1 --di 1:20 --gmi 16:20:10 --blackbox none``

``--di`` takes ``BN_WEIGHT:STEPS`` items; ``--gmi`` ``PRIOR_WIDTH:PRIOR_STEPS:ATTACK_STEPS`` items;
``--blackbox`` ``rlb-mi:QUERIES,brep-mi:QUERIES`` (run on the first NoDef target with the first GMI
prior) or ``none``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from midre.attacks import AttackBudget, AttackTarget, run_attack  # noqa: E402
from midre.data import DatasetSpec, load_dataset  # noqa: E402
from midre.evaluation import EvalModelConfig  # noqa: E402
from midre.evaluation.eval_model import evaluate_reconstructions, train_evaluation_model  # noqa: E402
from midre.priors import PriorConfig, PublicData, load_or_train_prior  # noqa: E402
from midre.train import TrainConfig, train  # noqa: E402


def _items(text: str, n: int) -> list[tuple[float, ...]]:
    out = []
    for item in filter(None, text.split(",")):
        parts = item.split(":")
        if len(parts) != n:
            raise SystemExit(f"expected {n} ':'-separated numbers in {item!r}")
        out.append(tuple(float(p) for p in parts))
    return out


def _summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="private face data (ImageFolder) or 'digits'")
    p.add_argument("--public", default=None, help="separate public data; default: the last 25%% identities")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--epochs", type=int, default=60, help="target epochs")
    p.add_argument("--eval-epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--per-identity", type=int, default=2)
    p.add_argument("--di", default="1:200,1:600,1:2000,10:200,10:2000")
    p.add_argument("--gmi", default="16:400:150,32:2000:300")
    p.add_argument("--blackbox", default="rlb-mi:40000,brep-mi:80000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="calibration")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    print(f"device: {torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}", flush=True)

    probe = load_dataset(DatasetSpec(source=args.data, image_size=args.image_size, channels=args.channels))
    n_ids = len(probe.class_names)
    num_private = None if args.public else n_ids - max(1, n_ids // 4)
    spec = DatasetSpec(source=args.data, image_size=args.image_size, channels=args.channels, num_private=num_private)
    splits = load_dataset(spec)
    private_ids = list(range(len(splits.class_names)))
    if args.public:
        pub = load_dataset(DatasetSpec(source=args.public, image_size=args.image_size, channels=args.channels,
                                       test_fraction=0.0))
        public = PublicData.from_images(pub.train.images, args.public)
    else:
        public = PublicData.from_images(splits.public.images, "last identities")
    print(f"private identities {len(private_ids)} ({splits.train.images.shape[0]} train images), "
          f"public images {public.images.shape[0]}; chance {100 / len(private_ids):.1f}%", flush=True)
    results: dict[str, Any] = {"device": dev, "args": vars(args), "targets": {}, "eval": {}, "runs": []}

    t = time.time()
    ev = train_evaluation_model(spec, out / "cache", EvalModelConfig(epochs=args.eval_epochs, all_images=True),
                                device=dev)
    results["eval"] = {"accuracy": ev.accuracy, "seconds": time.time() - t}
    print(f"evaluation model resnet18: train accuracy {ev.accuracy} ({time.time() - t:.0f} s)", flush=True)

    targets: dict[tuple[str, int], AttackTarget] = {}
    for defense in ("nodef", "midre"):
        for seed in range(args.seeds):
            t = time.time()
            cfg = TrainConfig(data=spec, arch="cnn-small", defense={"name": defense}, epochs=args.epochs,
                              batch_size=32, seed=seed, device=dev)
            res = train(cfg, out / "targets" / f"{defense}{seed}")
            acc = res.card["metrics"]["test_accuracy"]
            results["targets"][f"{defense}{seed}"] = {"acc": acc, "seconds": time.time() - t}
            print(f"target {defense} seed {seed}: test acc {100 * acc:.1f}% ({time.time() - t:.0f} s)", flush=True)
            targets[(defense, seed)] = AttackTarget.from_checkpoint(str(out / "targets" / f"{defense}{seed}"),
                                                                    device=dev)

    def attack(label: str, name: str, budget: AttackBudget, options: dict[str, Any] | None = None,
               prior: Any = None, only_first: bool = False) -> None:
        for defense in ("nodef", "midre"):
            hits1, hits5, secs = [], [], []
            for seed in range(1 if only_first else args.seeds):
                t = time.time()
                r = run_attack(name, targets[(defense, seed)], private_ids, per_identity=args.per_identity,
                               budget=budget, options=options, prior=prior, public=public, seed=seed, device=dev,
                               cache_dir=str(out / "cache"))
                m = evaluate_reconstructions(ev, r.pixels(), r.labels, splits.train.images, splits.train.labels)
                hits1.append(m["attacc_top1"])
                hits5.append(m["attacc_top5"])
                secs.append(time.time() - t)
                results["runs"].append({"setting": label, "defense": defense, "seed": seed, **m,
                                        "seconds": secs[-1], "queries": r.queries,
                                        "confidence": float(r.confidence.mean())})
            print(f"{label:<34} {defense:<6} top1 {_summary(hits1)}  top5 {_summary(hits5)}  "
                  f"{statistics.fmean(secs):6.1f} s/run", flush=True)
            (out / "calibration.json").write_text(json.dumps(results, indent=2))
            if only_first:
                return

    for bn, steps in _items(args.di, 2):
        attack(f"deepinversion bn={bn:g} steps={int(steps)}", "deepinversion", AttackBudget(steps=int(steps)),
               {"bn_weight": bn})
    priors = []
    for width, prior_steps, steps in _items(args.gmi, 3):
        t = time.time()
        prior = load_or_train_prior(PriorConfig(kind="gmi", steps=int(prior_steps), width=int(width),
                                                batch_size=64 if dev.startswith("cuda") else 32),
                                    public, targets[("nodef", 0)].image_shape, cache_dir=out / "cache", device=dev)
        print(f"gmi prior width {int(width)} steps {int(prior_steps)}: {time.time() - t:.0f} s", flush=True)
        priors.append(prior)
        attack(f"gmi prior w{int(width)}/{int(prior_steps)} steps={int(steps)}", "gmi",
               AttackBudget(steps=int(steps), restarts=2), prior=prior)
    if args.blackbox != "none" and priors:
        for item in filter(None, args.blackbox.split(",")):
            name, _, queries = item.partition(":")
            attack(f"{name} queries={queries}", name, AttackBudget(steps=100_000, queries=int(queries)),
                   prior=priors[0], only_first=True)
    print(f"wrote {out / 'calibration.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
