"""``midre demo``: start the embedded service, run one digits study over REST, download its results, stop."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.cli.jobs import follow
from services.cli.processes import die_with_parent, stop_group
from services.cli.rest import quiet_http_logs

#: Environment variables that select production servers; ``midre demo`` removes them so it always
#: runs the self-contained embedded stack.
PRODUCTION_ENV = ("MIDRE_DATABASE_URL", "MIDRE_BROKER_URL", "MIDRE_DATA_DIR")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre demo``."""
    p = subparsers.add_parser("demo", help="start the embedded service, run a digits job over REST, "
                              "download the checkpoint and report")
    p.add_argument("--home", help="data folder (sets MIDRE_HOME; default ~/.midre)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.set_defaults(func=cmd_demo)


def demo_spec(epochs: int) -> dict[str, Any]:
    """The demo's job: a ``pipeline`` study.

    It runs on the built-in ``digits`` data with the small CNN at 32x32 (600 images), sized so the
    demo finishes in a couple of minutes on two CPU cores: NoDef vs MIDRE (a_h 0.4), one seed,
    MI-Face and DeepInversion with short budgets, a ResNet-18 evaluation model trained for 2
    epochs. The numbers show the mechanics, not the paper's effect sizes (see docs/attacks.md).
    """
    from services.jobspec import PIPELINE  # the spec layer needs the service's packages

    common: dict[str, Any] = {
        "dataset": "digits",
        "arch": "cnn-small",
        "defense": {"name": "midre", "a_h": 0.4},
        "training": {"epochs": epochs, "image_size": 32, "batch_size": 64, "seed": 0},
        "data": {"channels": 1, "max_images_per_identity": 60},
        "device": "auto",
    }
    return {
        "kind": PIPELINE.name,
        **common,
        "attacks": ["mi-face", "deepinversion"],
        "evaluation": {"arch": "resnet18", "epochs": 2, "per_identity": 1},
        "attack_budgets": {"mi-face": {"steps": 60}, "deepinversion": {"steps": 60}},
    }


def metric_lines(metrics: dict[str, float]) -> list[str]:
    """``Acc / AttAcc`` per attack and defense for a study's ``<defense>.<attack>.<metric>`` metrics."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for name, value in metrics.items():
        parts = name.rsplit(".", 2)
        if len(parts) == 3:
            rows.setdefault((parts[1], parts[0]), {})[parts[2]] = value
    if not rows:
        return ["metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))]
    lines = []
    for (attack, defense), values in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != "nodef", kv[0][1])):
        text = f"{attack:>14} vs {defense:<14} Acc {_with_interval(values, 'acc')}  " \
               f"AttAcc top-1 {_with_interval(values, 'attacc_top1')}"
        if "tradeoff_delta" in values:
            text += f"  Δ {values['tradeoff_delta']:.2f}"
        lines.append(text)
    return lines


def _with_interval(values: dict[str, float], name: str) -> str:
    """``88.33% [80.00, 95.00]``: a figure with its 95 % interval where the study measured one."""
    text = f"{values.get(name, float('nan')):6.2f}%"
    if f"{name}_ci_low" in values and f"{name}_ci_high" in values:
        text += f" [{values[f'{name}_ci_low']:.2f}, {values[f'{name}_ci_high']:.2f}]"
    return text


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until ``url``'s ``/readyz`` answers 200; raise if ``proc`` exits or ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the service at {url} was not ready after {timeout:.0f}s")


def _embedded_env(home: str | None) -> dict[str, str]:
    """The environment of the demo's ``midre serve``: production variables removed (here too, so the
    key is minted in the same embedded database), ``MIDRE_HOME`` from ``--home``."""
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    if home:
        env["MIDRE_HOME"] = str(Path(home).expanduser().resolve())
    for key in PRODUCTION_ENV:
        os.environ.pop(key, None)
    if "MIDRE_HOME" in env:
        os.environ["MIDRE_HOME"] = env["MIDRE_HOME"]
    return env


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the embedded service, run one digits job over REST, download its results, stop."""
    from services.settings import Settings

    quiet_http_logs()
    env = _embedded_env(args.home)
    settings = Settings()
    settings.ensure_dirs()
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"[1/5] starting the embedded service on {url} (data in {settings.home}; log in "
          f"{log_dir / 'demo-serve.log'})")
    with open(log_dir / "demo-serve.log", "ab") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "midre.cli", "serve", "--port", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        wait_ready(url, server, timeout=120)
        dest = _run_demo_job(settings, url, args.epochs, args.timeout)
        if dest is None:
            return 1
        print("[5/5] stopping the service")
    finally:
        stop_group(server, grace=15)
    print(f"done: results in {dest}")
    return 0


def _run_demo_job(settings: Any, url: str, epochs: int, timeout: float) -> Path | None:
    """Mint a key, submit the demo study, follow it, download its results; the folder, or ``None``
    (the failure already printed) when the job did not succeed."""
    from services.client import Client
    from services.db.keys import create_api_key
    from services.db.session import session_scope

    with session_scope(settings.db_url) as session:
        key = create_api_key(session, "demo")
    print("[2/5] created an API key for tenant 'demo'")
    spec = demo_spec(epochs)
    with Client(url, key) as client:
        job = client.submit(spec)
        print(f"[3/5] submitted a {spec['kind']} job {job['id']} "
              f"({spec['arch']}, {spec['defense']['name']} a_h={spec['defense']['a_h']}, digits)")
        job = follow(client, job["id"], timeout=timeout)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
            return None
        dest: Path = settings.home / "demo" / job["id"]
        paths = client.download(job["id"], dest)
        print(f"[4/5] downloaded {len(paths)} artifacts (sha256 verified) to {dest}")
        _print_results(client.model_card(job["id"]), job, dest, paths)
    return dest


def _print_results(card: dict[str, Any], job: dict[str, Any], dest: Path, paths: list[Path]) -> None:
    """The model, the metrics per attack and defense, and where the checkpoint and report are."""
    checkpoint = dest / card["checkpoint"]["name"] if card.get("checkpoint") else None
    names = {p.relative_to(dest).as_posix(): p for p in paths}
    report = names.get("report.html") or names.get("report.json") or names.get("model.json")
    print(f"      model: {card['arch']}, {card['num_classes']} classes, defense {card['defense']}")
    for line in metric_lines(job["metrics"]):
        print(f"      {line}")
    if checkpoint:
        print(f"      checkpoint: {checkpoint}")
    if report:
        print(f"      report: {report}")
