"""Screenshots of every dashboard page at 1280 px, for the docs (``docs/img/ui-*.png``).

Starts the embedded service (``midre serve``: API + one worker) in a temporary ``MIDRE_HOME``, creates
a key, runs a small digits train job, two small pipeline studies (2 and 4 epochs) and an audit of the
trained model, registers the built-in digits as a dataset, then signs in with Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) and captures each page. Needs no network. About 10-30
minutes on two shared CPU cores::

    uv run python scripts/ui_screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]

``--only review`` runs just one study and captures the review pages: the trial a reviewer answers (at
1280 px and at phone width, ``ui-review.png`` / ``ui-review-phone.png``) and the study's review section
as its owner sees it (``ui-job-reviews.png``); about 2 minutes.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.cli.demo import free_port, wait_ready  # noqa: E402
from services.cli.jobs import follow  # noqa: E402
from services.cli.processes import die_with_parent, stop_group  # noqa: E402
from services.client import Client  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TRAIN = {
    "kind": "train", "dataset": "digits", "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 4, "image_size": 32, "batch_size": 64, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 40},
}
STUDY = {
    "dataset": "digits", "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4}, "seeds": 2,
    "training": {"epochs": 2, "image_size": 32, "batch_size": 64, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 40}, "attacks": ["mi-face"],
    "evaluation": {"arch": "cnn-small", "epochs": 3, "per_identity": 2, "identities": 4, "feature_identities": 2},
    "attack_budgets": {"mi-face": {"steps": 20}},
}
#: Two studies that differ only in training length: the comparison page lines their rows up.
PIPELINES = ({"kind": "pipeline", **STUDY},
             {"kind": "pipeline", **STUDY, "training": {**STUDY["training"], "epochs": 4}})
AUDIT = {"kind": "attack_eval", **{k: STUDY[k] for k in ("attacks", "evaluation", "attack_budgets")}, "seeds": 1}


def shrink(png: bytes) -> bytes:
    """The screenshot as a 256-colour PNG (a fraction of the size, text stays sharp)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def run_jobs(url: str, key: str) -> dict[str, str]:
    """Submit the jobs the pages show and wait for them; returns their ids."""
    with Client(url, key) as client:
        train = client.submit(TRAIN)["id"]
        studies = [client.submit(spec)["id"] for spec in PIPELINES]
        for job_id in (train, *studies):
            job = follow(client, job_id, timeout=3600)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
        audit = client.submit({**AUDIT, "model": train})["id"]
        if follow(client, audit, timeout=3600)["status"] != "succeeded":
            raise SystemExit(f"audit {audit} did not succeed")
        client.submit({**TRAIN, "training": {**TRAIN["training"], "epochs": 60}})  # a job still running
        dataset = client.request("POST", "/v1/datasets", json={"name": "digits", "source": "digits"})["id"]
    return {"train": train, "pipeline": studies[0], "pipeline_b": studies[1], "audit": audit, "dataset": dataset}


def launch(pw: Any, profile: str, chromium: str) -> Any:
    """Debian's Chromium at 1280 px on a fresh profile (Playwright downloads no browser)."""
    return pw.chromium.launch_persistent_context(
        profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, device_scale_factor=1,
    )


def capture(url: str, key: str, ids: dict[str, str], out: Path, chromium: str) -> list[Path]:
    """Sign in and save one screenshot per page."""
    from playwright.sync_api import sync_playwright

    shots = [
        ("jobs", "/ui/jobs"), ("job-new", "/ui/jobs/new"), ("job", f"/ui/jobs/{ids['train']}"),
        ("report", f"/ui/jobs/{ids['pipeline']}/report"),
        ("compare", f"/ui/compare?a={ids['pipeline']}&b={ids['pipeline_b']}"),
        ("models", "/ui/models"), ("model", f"/ui/models/{ids['train']}"),
        ("datasets", "/ui/datasets"), ("dataset", f"/ui/datasets/{ids['dataset']}"),
    ]
    written = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = launch(pw, profile, chromium)
        try:
            page = browser.new_page()
            page.goto(f"{url}/ui/login")
            written.append(save(page, out / "ui-login.png"))
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/ui/jobs")
            for name, path in shots:
                page.goto(f"{url}{path}")
                page.wait_for_load_state("networkidle")  # the plots of reports have loaded
                written.append(save(page, out / f"ui-{name}.png"))
        finally:
            browser.close()
    return written


def capture_review(url: str, key: str, out: Path, chromium: str) -> list[Path]:
    """Run one study, invite a reviewer, and capture the reviewer's trial page and the owner's review section."""
    from playwright.sync_api import sync_playwright

    with Client(url, key) as client:
        study = client.submit(PIPELINES[0])["id"]
        if follow(client, study, timeout=3600)["status"] != "succeeded":
            raise SystemExit(f"study {study} did not succeed")
        reviewer = client.request("POST", "/v1/keys", json={"name": "Reviewer One", "scopes": ["review"]})
        client.request("POST", f"/v1/jobs/{study}/reviews", json={"reviewer": reviewer["id"], "trials": 16})
    written = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = launch(pw, profile, chromium)
        try:
            page = browser.new_page()
            for who, secret in (("owner", key), ("reviewer", reviewer["key"])):
                browser.clear_cookies()
                page.goto(f"{url}/ui/login")
                page.fill("#key", secret)
                page.click("button[type=submit]")
                page.wait_for_load_state("networkidle")
                if who == "owner":
                    page.goto(f"{url}/ui/jobs/{study}#h-reviews")
                    written.append(save(page, out / "ui-job-reviews.png"))
                    continue
                page.click("text=Start")
                page.wait_for_selector("#answer-form")
                written.append(save(page, out / "ui-review.png"))
                page.set_viewport_size({"width": 390, "height": 844})
                written.append(save(page, out / "ui-review-phone.png"))
        finally:
            browser.close()
    return written


def save(page: Any, path: Path) -> Path:
    path.write_bytes(shrink(page.screenshot(full_page=False)))
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({path.stat().st_size // 1024} kB)")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--only", choices=("all", "review"), default="all",
                        help="review: only the review pages (one small study)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="midre-ui-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")} | {"MIDRE_HOME": home}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(Path(home) / "serve.log", "ab") as log:
            server = subprocess.Popen([sys.executable, "-m", "midre.cli", "serve", "--port", str(port)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=die_with_parent)
        try:
            wait_ready(url, server, timeout=180)
            from services.db.keys import create_api_key
            from services.db.session import session_scope

            with session_scope(f"sqlite:///{home}/midre.sqlite3") as session:
                key = create_api_key(session, "acme")
            if args.only == "review":
                capture_review(url, key, args.out, args.chromium)
            else:
                ids = run_jobs(url, key)
                capture(url, key, ids, args.out, args.chromium)
                capture_review(url, key, args.out, args.chromium)
        finally:
            stop_group(server, grace=15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
