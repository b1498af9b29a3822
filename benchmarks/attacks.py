"""Batched attack vs a per-identity loop of the same attack, measured in one run.

Every attack in ``midre.attacks`` optimises all reconstructions (identities x images per identity)
in one batch. The baseline runs the *same* attack, with the same budget, once per identity — what a
straightforward implementation that loops over identities around the optimiser does. Total work
(images x steps) is identical; only the batching differs. Prints both times and the ratio.

    uv run python benchmarks/attacks.py                      # deepinversion, 40 identities, 64 px
    uv run python benchmarks/attacks.py --attack mi-face --identities 20 --steps 20
"""

from __future__ import annotations

import argparse
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    from midre.attacks import AttackBudget, AttackTarget, run_attack
    from midre.models import create_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attack", default="deepinversion", choices=("deepinversion", "mi-face"),
                   help="a prior-free attack (no GAN training inside the timing)")
    p.add_argument("--arch", default="cnn-small")
    p.add_argument("--identities", type=int, default=40)
    p.add_argument("--per-identity", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=args.identities, image_size=args.image_size, in_channels=3).eval()
    target = AttackTarget(model, (3, args.image_size, args.image_size), None)
    budget = AttackBudget(steps=args.steps)
    ids = list(range(args.identities))
    run_attack(args.attack, target, ids[:2], per_identity=1, budget=AttackBudget(steps=1),  # warm-up
               device=args.device)

    t0 = time.perf_counter()
    batched = run_attack(args.attack, target, ids, per_identity=args.per_identity, budget=budget, seed=0,
                         device=args.device)
    _sync(args.device)
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    looped = [run_attack(args.attack, target, [i], per_identity=args.per_identity, budget=budget, seed=0,
                         device=args.device) for i in ids]
    _sync(args.device)
    t_loop = time.perf_counter() - t0

    n = batched.labels.numel()
    assert n == sum(r.labels.numel() for r in looped)
    print(f"attack {args.attack}, {args.arch} target, {args.identities} identities x {args.per_identity} images, "
          f"{args.image_size} px, {args.steps} steps, "
          f"{torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'}")
    print(f"batched (one optimisation of {n} images): {t_batched:8.2f} s")
    print(f"per-identity loop ({args.identities} optimisations): {t_loop:8.2f} s")
    print(f"speed-up: {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
