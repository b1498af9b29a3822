"""Benchmark MIDRE erasing against its baselines, measured in one run.

1. Batched random erasing (ours: copy and in-place) vs torchvision's ``RandomErasing`` applied per
   sample and stacked back into a batch, on the same 256x3x224x224 batch.
2. One training epoch with MIDRE vs NoDef on the same model and data (overhead of the defense).

Run: ``uv run python benchmarks/erasing.py`` (or ``PYTHONPATH=. python3 benchmarks/erasing.py`` on a
bare PyTorch machine). Options: ``--device cuda``, ``--repeats N``, ``--data PATH``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import best_time  # noqa: E402  (benchmarks/_timing.py: the script's folder is on sys.path)

from midre.erasing import RandomErasing  # noqa: E402


def bench_erasing(device: torch.device, repeats: int) -> None:
    x = torch.randn(256, 3, 224, 224, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    ours = RandomErasing(a_h=0.4)
    # torchvision's per-sample op configured to the same law as far as it can be: square boxes
    # (ratio 1) of 10-40 % of the image, filled with 0 (the ImageNet mean after normalisation).
    tv = T.RandomErasing(p=1.0, scale=(0.1, 0.4), ratio=(1.0, 1.0), value=0)
    work = x.clone()

    def per_sample():
        return torch.stack([tv(img) for img in x])

    def batched_copy():
        return ours(x, generator=gen)

    def batched_inplace():  # overwrites `work` again each call; the cost does not depend on its content
        return ours(work, generator=gen, inplace=True)

    t_tv = best_time(per_sample, device, repeats)
    t_copy = best_time(batched_copy, device, repeats)
    t_inplace = best_time(batched_inplace, device, repeats)
    print(f"## random erasing, batch 256x3x224x224 on {device_name(device)}")
    print(f"torchvision RandomErasing per sample + stack : {t_tv * 1e3:8.2f} ms  (baseline)")
    print(f"midre RandomErasing batched, new batch       : {t_copy * 1e3:8.2f} ms  {t_tv / t_copy:6.1f}x faster")
    print(f"midre RandomErasing batched, in place        : {t_inplace * 1e3:8.2f} ms  {t_tv / t_inplace:6.1f}x faster")
    print("goal: >= 10x faster")


def bench_epoch(device: torch.device, repeats: int, data: str) -> None:
    from midre.data import DatasetSpec
    from midre.train import TrainConfig, train

    spec = DatasetSpec(source=data, image_size=64, channels=3)
    epochs = 3
    seconds: dict[str, list[float]] = {"nodef": [], "midre": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats + 1):  # the first round warms up and is not counted
            for name in ("nodef", "midre"):  # interleaved, so drift hits both alike
                cfg = TrainConfig(data=spec, arch="cnn-small", defense={"name": name}, epochs=epochs,
                                  batch_size=64, device=str(device), eval_every=epochs)
                result = train(cfg, Path(tmp) / f"{name}-{r}", resume=False)
                if r:
                    seconds[name].append(result.metrics["train_seconds"] / epochs)
    nodef, midre = statistics.median(seconds["nodef"]), statistics.median(seconds["midre"])
    print(f"\n## one training epoch, cnn-small on {data} at 64x64, {device_name(device)}")
    print(f"median over {repeats} interleaved runs of {epochs} epochs")
    print(f"NoDef  : {nodef * 1e3:8.1f} ms / epoch  (baseline)   runs: {[round(s * 1e3) for s in seconds['nodef']]}")
    print(f"MIDRE  : {midre * 1e3:8.1f} ms / epoch  ratio {midre / nodef:.3f}  "
          f"(overhead {100 * (midre / nodef - 1):+.1f}%)   runs: {[round(s * 1e3) for s in seconds['midre']]}")
    print("goal: overhead <= 5% on CPU, <= 2% on GPU")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main() -> None:
    default_data = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "att_faces"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data", default=str(default_data) if default_data.is_dir() else "digits",
                   help="data for the epoch benchmark (default: ../shared/datasets/att_faces, else digits)")
    p.add_argument("--skip-epoch", action="store_true", help="only the erasing micro-benchmark")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}")
    bench_erasing(device, args.repeats)
    if not args.skip_epoch:
        bench_epoch(device, args.repeats, args.data)


if __name__ == "__main__":
    main()
