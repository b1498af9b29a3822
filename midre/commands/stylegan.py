"""``midre convert-stylegan2``: turn a public StyleGAN2 checkpoint into the safetensors layout the
attacks load (docs/attacks.md, "StyleGAN2 weights").

Conversion is an explicit, offline step: the attacks and the service only ever read safetensors.
The one source format read here is rosinality's stylegan2-pytorch ``.pt`` checkpoint (a dict with a
``g_ema`` state dict and usually ``latent_avg``), loaded with ``torch.load(weights_only=True)``, which
refuses to run code stored in the file. NVIDIA's ``.pkl`` files pickle their own Python classes and
can only be opened by executing NVlabs' code; export them to a plain state dict with that code first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WARNING = ("warning: converting a checkpoint made by a third party. It is read with "
           "torch.load(weights_only=True), which does not execute code, but only convert files from a source "
           "you trust; the result holds only tensors (safetensors).")


def convert_stylegan2(src: str | Path, dst: str | Path, *, mapping_lr_mul: float = 0.01) -> dict[str, object]:
    """Convert a rosinality stylegan2-pytorch checkpoint ``src`` into a safetensors file ``dst``.

    Returns:
        A summary: the architecture (:class:`~midre.priors.stylegan2.StyleGAN2Config` fields), the output
        path and whether ``w_avg`` came from the checkpoint or was estimated.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: an NVlabs ``.pkl``, a file that needs pickled code, or not a StyleGAN2 generator.
    """
    import torch

    from midre.priors.stylegan2 import from_rosinality, save_stylegan2

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no checkpoint at {src}")
    if src.suffix == ".pkl":
        raise ValueError(f"{src}: NVlabs .pkl files can only be opened by running NVlabs' own code; load it with "
                         "the stylegan2-ada-pytorch repository and export G_ema in rosinality's layout "
                         "(see docs/attacks.md), then convert that file")
    try:
        ckpt = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling error names the class the file wanted to run
        raise ValueError(f"{src}: not readable as plain tensors (torch.load weights_only=True): {exc}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{src}: expected a dict (with 'g_ema'), got {type(ckpt).__name__}")
    state = ckpt.get("g_ema", ckpt)
    latent_avg = ckpt.get("latent_avg") if "g_ema" in ckpt else None
    net = from_rosinality(state, latent_avg=latent_avg, mapping_lr_mul=mapping_lr_mul)
    out = save_stylegan2(net, dst, extra_metadata={"midre.stylegan2.source": f"rosinality:{src.name}"})
    return {"out": str(out), "config": net.config.to_dict(),
            "w_avg": "checkpoint" if latent_avg is not None else "estimated from 10000 samples"}


def run_convert_command(args: argparse.Namespace) -> int:
    print(WARNING, file=sys.stderr)
    summary = convert_stylegan2(args.src, args.out, mapping_lr_mul=args.mapping_lr_mul)
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert-stylegan2`` to the ``midre`` CLI."""
    p = subparsers.add_parser(
        "convert-stylegan2", help="convert a StyleGAN2 checkpoint (rosinality .pt) to safetensors for the attacks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert rosinality's stylegan2-pytorch checkpoint (a .pt dict with g_ema, read with "
                    "torch.load(weights_only=True)) into the safetensors layout that ppa / if-gmi / mirror load "
                    "with --attack-options '{\"ppa\": {\"stylegan2\": \"DST.safetensors\"}}'. NVlabs .pkl files must "
                    "first be exported to a state dict with NVlabs' code (docs/attacks.md).\n\n"
                    "example:\n  midre convert-stylegan2 550000.pt --out ffhq256.safetensors")
    p.add_argument("src", metavar="SRC", help="rosinality stylegan2-pytorch checkpoint (.pt)")
    p.add_argument("--out", required=True, metavar="DST", help="output .safetensors file")
    p.add_argument("--mapping-lr-mul", type=float, default=0.01,
                   help="learning-rate multiplier the mapping network was trained with (default 0.01)")
    p.set_defaults(func=run_convert_command)


__all__ = ["WARNING", "convert_stylegan2", "register"]
