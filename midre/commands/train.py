"""``midre train``: train one classifier with or without a defense, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from midre.commands.progress_bar import ProgressBar

DEFENSE_HELP = """defense to train with:
  nodef           no defense (baseline)
  midre           MIDRE random erasing: every image, every iteration, a square of a_e ~ U[a_l, a_h]
                  of the image filled with the ImageNet mean (paper Sec. 2.2)
  fixed-erasing   ablation: one fixed square per image for the whole training (Table 1)
  entire-erasing  ablation: each epoch, leave out --share of each identity's images (Table 1)
  comparison defenses: nls, bido, mid, tl-dmi, mi-rad, trap-mid, loft, cutmix, random-crop,
  gaussian-blur
  (docs/defenses.md; set their parameters with --param KEY=VALUE)
  names joined with '+' combine defenses, e.g. midre+nls"""


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Data options shared by train and the study commands."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="{digits|PATH}",
                   help="'digits' (built-in scikit-learn digits, no download), an ImageFolder directory "
                        "(one sub-folder per identity) or a .zip/.tar.gz of one")
    g.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="resize images to S x S (default: 32 for digits, 64 otherwise)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="3: grayscale repeated to RGB (default); 1: grayscale")
    g.add_argument("--no-normalize", action="store_true",
                   help="feed [0, 1] pixels instead of ImageNet-normalised ones")
    g.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                   help="share of each identity's images held out for testing (default 0.2)")
    g.add_argument("--split-seed", type=int, default=42, help="seed of the train/test split (default 42)")
    g.add_argument("--num-private", type=int, default=None, metavar="K",
                   help="only the first K identities are private (trained on); the rest are public")


def data_spec_from_args(args: argparse.Namespace):
    from midre.data import DatasetSpec

    size = args.image_size or (32 if args.data == "digits" else 64)
    source = args.data if args.data == "digits" else str(Path(args.data).expanduser())
    return DatasetSpec(
        source=source, image_size=size, channels=args.channels, normalize=not args.no_normalize,
        test_fraction=args.test_fraction, split_seed=args.split_seed, num_private=args.num_private,
    )


AUGMENT_HELP = {
    "hflip": "random horizontal flips (faces; not for digits)",
    "shift": "random shifts by up to 1/8 of the side, reflected border",
}


def add_augment_arguments(group: argparse._ArgumentGroup) -> None:
    """One flag per train-time augmentation (``--hflip``, ``--shift``)."""
    for name, text in AUGMENT_HELP.items():
        group.add_argument(f"--{name}", action="store_true", help=text)


def augment_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The augmentations whose flags are set, for :class:`midre.train.TrainConfig`."""
    return tuple(name for name in AUGMENT_HELP if getattr(args, name, False))


def parse_params(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, lists, objects)."""
    params: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param: expected KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def defense_spec_from_args(args: argparse.Namespace) -> dict:
    """The defense spec from --defense, its flags and --param (only what was given)."""
    flags = {"a_h": args.a_h, "a_l": args.a_l, "a_e": args.a_e, "share": args.share}
    params = {**{k: v for k, v in flags.items() if v is not None}, **parse_params(args.param)}
    return {"name": args.defense, **params}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier with or without a defense",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train an image classifier on private identities, optionally hardened with MIDRE "
                    "random erasing, and write OUT/model.safetensors + OUT/model.json.\n\n"
                    "example:\n  midre train --data digits --arch cnn-small --defense midre --epochs 3 --out runs/d",
    )
    add_data_arguments(p)
    g = p.add_argument_group("model and defense")
    g.add_argument("--arch", default="cnn-small",
                   help="architecture (default cnn-small); `midre train --list-archs` lists them")
    g.add_argument("--list-archs", action="store_true", help="print the known architectures and exit")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="start from local weights (.safetensors, or a state dict loaded with weights_only)")
    g.add_argument("--defense", default="nodef", help=DEFENSE_HELP)
    g.add_argument("--a-h", type=float, default=None, metavar="X",
                   help="MIDRE: upper bound of the erased area fraction (default 0.4; 0.8 = strong)")
    g.add_argument("--a-l", type=float, default=None, metavar="X", help="MIDRE: lower bound (default 0.1)")
    g.add_argument("--a-e", type=float, default=None, metavar="X",
                   help="MIDRE / fixed-erasing: erase exactly this area fraction instead of sampling one")
    g.add_argument("--share", type=float, default=None, metavar="X",
                   help="entire-erasing: share of each identity's images left out per epoch (default 0.3)")
    g.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="any defense parameter, repeatable (e.g. --param smoothing=-0.05 for nls; for a "
                        "combination give each part's parameters as JSON: --param 'nls={\"smoothing\": -0.1}')")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    t.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam", help="default adam")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    t.add_argument("--schedule", choices=("multistep", "cosine", "none"), default="multistep",
                   help="multistep: x0.1 at 75%% and 90%% of the epochs (authors' recipe; default)")
    add_augment_arguments(t)
    t.add_argument("--seed", type=int, default=0, help="seed of init, shuffling and erasing (default 0)")
    t.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    t.add_argument("--devices", type=int, default=1, metavar="N",
                   help="train over N devices in one run: N processes with DistributedDataParallel, on N GPUs "
                        "(rank r on cuda:r) with --device cuda or auto on a CUDA machine, else N CPU processes "
                        "(gloo); --batch-size stays the global batch, split over the N; each process erases "
                        "with its own random stream, so the result matches one process statistically, not "
                        "bit for bit (default 1)")
    t.add_argument("--no-resume", action="store_true", help="ignore resume state in OUT and start over")
    p.add_argument("--out", required=False, metavar="DIR", help="output folder (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from midre.models import list_models
    from midre.report.verdicts import train_warnings
    from midre.train import TrainConfig, train

    if args.list_archs:
        print("\n".join(list_models()))
        return 0
    if not args.out:
        raise ValueError("--out: required (the folder the checkpoint is written to)")
    cfg = TrainConfig(
        data=data_spec_from_args(args), arch=args.arch, defense=defense_spec_from_args(args),
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, augment=augment_from_args(args),
        seed=args.seed, device=args.device, weights_path=args.weights, devices=args.devices,
    )  # with --devices N > 1, midre.distributed logs "training with N processes (...)"
    bar = None if args.quiet else ProgressBar()
    result = train(cfg, args.out, progress=bar, resume=not args.no_resume)
    m = result.metrics
    warnings = train_warnings(m, int(result.card.get("num_classes") or 0))
    print(json.dumps({"out": str(result.out_dir), "arch": cfg.arch, "defense": cfg.defense,
                      "test_accuracy": m["test_accuracy"], "train_accuracy": m["train_accuracy"],
                      "train_seconds": m["train_seconds"], "warnings": warnings}, indent=2), file=sys.stdout)
    for warning in warnings:
        print(f"WARNING ({warning['code']}): {warning['message']}", file=sys.stderr)
    return 0
