"""The dashboard in a real browser: Playwright driving Debian's Chromium against ``midre serve`` with its
worker (SQLite + file broker). One service and one browser for the whole flow: sign in, submit a small
digits train job from the page and watch it finish over Server-Sent Events, audit it with a tiny
attack_eval and open its report, change the model's output policy and try it, then the security
checks (another tenant's job is a 404 page, a form without its CSRF token is a 403, no cookie means
the sign-in page) and sign out.

Skipped where ``/usr/bin/chromium`` is absent; required under ``MIDRE_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.db.keys import create_api_key
from services.db.session import dispose_all, session_scope
from tests._requirements import need_browser
from tests.service._support import ApiProcess, png_bytes
from tests.service.conftest import make_settings

#: Chromium flags: no sandbox (containers), no GPU, and nothing that reaches the network by itself.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: A small digits model (1 epoch, 32 px, 20 images per digit) that the tiny audit below can attack.
TRAIN: dict[str, Any] = {
    "kind": "train", "dataset": "digits", "arch": "cnn-small", "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 1, "image_size": 32, "batch_size": 128, "seed": 0},
    "data": {"channels": 1, "max_images_per_identity": 20},
}
AUDIT: dict[str, Any] = {
    "kind": "attack_eval", "attacks": ["mi-face"], "seeds": 1,
    "evaluation": {"arch": "cnn-small", "epochs": 1, "per_identity": 1, "identities": 3, "feature_identities": 2},
    "attack_budgets": {"mi-face": {"steps": 2}},
}
JOB_TIMEOUT_MS = 300_000
#: A tiny NoDef-vs-MIDRE study whose reconstructions a reviewer answers (8 of its 16, plus 4 controls).
STUDY: dict[str, Any] = {
    "kind": "pipeline", "dataset": "digits", "arch": "cnn-small", "attacks": ["mi-face"], "seeds": 1,
    "defense": {"name": "midre", "a_h": 0.4}, "training": {"epochs": 1, "image_size": 16, "batch_size": 64},
    "data": {"channels": 1, "max_images_per_identity": 16},
    "evaluation": {"arch": "cnn-small", "epochs": 2, "per_identity": 2, "identities": 4, "feature_identities": 0},
    "attack_budgets": {"mi-face": {"steps": 2}},
}


def launch(playwright: Any, user_data: Path) -> Any:
    """A fresh Chromium profile on Debian's executable (Playwright downloads no browser)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data), executable_path=str(need_browser()), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, accept_downloads=True, service_workers="block",
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiProcess, str, str]]:
    """``midre serve`` (API + worker) and admin keys of two tenants."""
    need_browser()
    home = tmp_path_factory.mktemp("ui-home")
    settings = make_settings(home)
    proc = ApiProcess(settings, home / "serve.log", worker=True)
    try:
        proc.wait_ready()
        with session_scope(settings.db_url) as session:
            key_a, key_b = create_api_key(session, "alice"), create_api_key(session, "bob")
        yield proc, key_a, key_b
    finally:
        proc.stop()
        dispose_all()


def wait_finished(page: Any) -> str:
    """Wait on a job page until the live status says the job finished; returns that status."""
    page.wait_for_function(
        "() => ['succeeded', 'failed', 'cancelled'].includes(document.getElementById('job-status').textContent)",
        timeout=JOB_TIMEOUT_MS,
    )
    return page.inner_text("#job-status")


def test_dashboard_in_a_browser(service: tuple[ApiProcess, str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    api, key_a, key_b = service
    url = api.url
    with sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(url) or r.url.startswith("data:")
                    else outside.append(r.url))

            # No cookie: every page leads to the sign-in form.
            page.goto(f"{url}/ui/jobs")
            assert page.url.startswith(f"{url}/ui/login")
            page.fill("#key", "mk_not_a_key")
            page.click("button[type=submit]")
            expect(page.locator("p.error")).to_contain_text("not valid")
            page.fill("#key", key_a)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{url}/ui/jobs")
            page.keyboard.press("Tab")  # keyboard users get the skip link first, and it leads to the content
            assert page.evaluate("document.activeElement.className") == "skip"
            page.keyboard.press("Enter")
            assert page.evaluate("document.activeElement.id") == "main"
            cookie = next(c for c in browser.cookies() if c["name"] == "midre_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # Submit a small train job from the page and follow it live (Server-Sent Events).
            page.click("text=New job")
            page.fill("#spec", json.dumps(TRAIN, indent=2))
            page.click("#submit-job button[type=submit]")
            expect(page).to_have_url(re.compile(r"/ui/jobs/job_[0-9a-f]+$"))
            train_id = page.url.rsplit("/", 1)[1]
            page.wait_for_selector("#live[data-live='sse']", timeout=60_000)
            assert wait_finished(page) == "succeeded", api.log()[-3000:]
            page.wait_for_selector("a[href$='/artifacts/model.safetensors']", timeout=30_000)  # reloaded page
            assert page.locator("#events li").count() >= 3
            row = page.locator("tr", has=page.locator("a[href$='/artifacts/model.safetensors']"))
            sha = row.locator("code.hash").inner_text()
            with page.expect_download() as download:
                page.click("a[href$='/artifacts/model.safetensors']")
            assert hashlib.sha256(Path(download.value.path()).read_bytes()).hexdigest() == sha
            page.goto(f"{url}/ui/jobs?status=succeeded&kind=train")
            expect(page.locator(f"#jobs tr[data-job='{train_id}'] [data-field='status']")).to_have_text("succeeded")

            # Audit the model (tiny attack_eval) and read its report.
            page.goto(f"{url}/ui/jobs/new")
            page.fill("#spec", json.dumps({**AUDIT, "model": train_id}))
            page.click("#submit-job button[type=submit]")
            expect(page).to_have_url(re.compile(r"/ui/jobs/job_[0-9a-f]+$"))
            audit_id = page.url.rsplit("/", 1)[1]
            assert wait_finished(page) == "succeeded", api.log()[-3000:]
            page.wait_for_selector("a.button[href$='/report']", timeout=30_000)
            page.click("a.button[href$='/report']")
            expect(page.locator("h1")).to_have_text("Privacy-utility report")
            expect(page.locator(".results tbody tr").first).to_contain_text("mi-face")
            images = page.locator("figure img")
            assert images.count() >= 1
            for i in range(images.count()):  # every plot and grid loads (served by the dashboard)
                images.nth(i).scroll_into_view_if_needed()
                loaded = "img => img.complete && img.naturalWidth > 0"
                page.wait_for_function(loaded, arg=images.nth(i).element_handle())
            page.goto(f"{url}/ui/compare?a={audit_id}&b={audit_id}")
            expect(page.locator("#compare-table tbody tr").first).to_contain_text("+0.00")

            # The model: its audit, then change its output policy and try it.
            page.goto(f"{url}/ui/models")
            expect(page.locator(f"#models a[href='/ui/models/{train_id}']")).to_be_visible()
            page.click(f"#models a[href='/ui/models/{train_id}']")
            expect(page.locator("#policy-now")).to_have_text("full")
            page.select_option("#p-policy", "label-only")
            page.fill("#p-budget", "50")
            page.click("#policy-form button[type=submit]")
            expect(page.locator("#policy-now")).to_have_text("label-only")
            expect(page.locator("#budget-now")).to_have_text("50")
            image = tmp_path / "digit.png"
            image.write_bytes(png_bytes(7, 32))
            page.set_input_files("#try-files", str(image))
            page.click("#try-form button[type=submit]")
            expect(page.locator("#answer")).to_contain_text("label-only")
            expect(page.locator("#answer")).to_contain_text("queries used 1 of 50")
            answer = json.loads(page.inner_text("#answer pre"))
            assert len(answer) == 1 and "label" in answer[0] and not {"top", "probabilities"} & set(answer[0])

            # Another tenant's job id is a 404 page.
            theirs = httpx.post(f"{url}/v1/jobs", json=TRAIN | {"training": {**TRAIN["training"], "epochs": 99}},
                                headers={"Authorization": f"Bearer {key_b}"}).json()["id"]
            httpx.post(f"{url}/v1/jobs/{theirs}/cancel", headers={"Authorization": f"Bearer {key_b}"})
            response = page.goto(f"{url}/ui/jobs/{theirs}")
            assert response is not None and response.status == 404
            expect(page.locator("h1")).to_contain_text("404")

            # A form without its CSRF token is refused (403) and changes nothing.
            page.goto(f"{url}/ui/datasets")
            page.click("text=Register the built-in digits")
            expect(page).to_have_url(re.compile(r"/ui/datasets/ds_[0-9a-f]+$"))
            dataset = page.url.rsplit("/", 1)[1]
            page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
            with page.expect_navigation() as nav:
                page.click("button.danger")
            assert nav.value is not None and nav.value.status == 403
            expect(page.locator("h1")).to_contain_text("403")
            assert page.goto(f"{url}/ui/datasets/{dataset}").status == 200

            # Readable on a phone: nothing wider than the screen but the scrolling tables.
            page.set_viewport_size({"width": 390, "height": 844})
            for path in ("/ui/jobs", f"/ui/jobs/{train_id}", f"/ui/models/{train_id}", f"/ui/jobs/{audit_id}/report"):
                page.goto(f"{url}{path}")
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
            page.set_viewport_size({"width": 1280, "height": 900})

            # Sign out: the cookie is gone and pages lead to the sign-in form again.
            page.goto(f"{url}/ui/jobs")
            page.click("header button:has-text('Sign out')")
            expect(page).to_have_url(f"{url}/ui/login")
            page.goto(f"{url}/ui/models")
            assert page.url.startswith(f"{url}/ui/login")
            assert outside == []  # no request left the service
        finally:
            browser.close()


def wait_job(api: ApiProcess, key: str, job_id: str, timeout: float = 300.0) -> str:
    """Poll ``GET /v1/jobs/{id}`` until the job finishes; its status."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}).json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/ui/login")
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_a_reviewer_answers_by_keyboard_and_the_report_shows_human_attacc(
        service: tuple[ApiProcess, str, str], tmp_path: Path) -> None:
    """The owner invites a ``review`` key from the job page; the reviewer answers every trial with the
    keyboard at phone width, reaches nothing else, and the study's report then has human AttAcc with its
    interval and kappa."""
    from playwright.sync_api import expect, sync_playwright
    from sqlalchemy import select

    from services.db.models import ReviewTrial

    api, key_a, _ = service
    url, admin = api.url, {"Authorization": f"Bearer {key_a}"}
    job = httpx.post(f"{url}/v1/jobs", json=STUDY, headers=admin).json()
    reviewer = httpx.post(f"{url}/v1/keys", json={"name": "Reviewer One", "scopes": ["review"]}, headers=admin).json()
    assert wait_job(api, key_a, job["id"]) == "succeeded", api.log()[-3000:]

    def right_answer(trial_id: str) -> tuple[str, str | None]:
        with session_scope(api.settings.db_url) as session:
            row = session.scalar(select(ReviewTrial).where(ReviewTrial.id == trial_id))
            return row.kind, row.right

    with sync_playwright() as pw:
        browser = launch(pw, tmp_path / "profile")
        try:
            page = browser.new_page()
            sign_in(page, url, key_a)
            page.goto(f"{url}/ui/jobs/{job['id']}")
            page.select_option("#reviewer", reviewer["id"])
            page.fill("#trials", "8")
            page.click("#h-reviews ~ form button[type=submit]")
            expect(page.locator("#h-reviews ~ div table")).to_contain_text("Reviewer One")
            browser.clear_cookies()

            page.set_viewport_size({"width": 390, "height": 844})
            sign_in(page, url, reviewer["key"])
            expect(page).to_have_url(f"{url}/ui/reviews")
            page.click("text=Start")
            answered = 0
            while page.locator("#answer-form").count():
                kind, right = right_answer(page.input_value("input[name=trial]"))
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                # controls answered truly; reconstructions: the true person on every other trial, else "none"
                key = (right or "0") if kind != "reconstruction" or answered % 2 == 0 else "0"
                with page.expect_navigation():
                    page.keyboard.press(key)
                answered += 1
            expect(page.locator("main")).to_contain_text("trials are answered")
            assert answered == 8 + 4
            # the review key reaches no other page of the dashboard
            for path in ["/ui/jobs", "/ui/jobs/new", "/ui/models", "/ui/datasets", "/ui/compare",
                         f"/ui/jobs/{job['id']}", f"/ui/jobs/{job['id']}/report", f"/ui/jobs/{job['id']}/report.html",
                         f"/ui/jobs/{job['id']}/artifacts/report.json", f"/ui/models/{job['id']}"]:
                assert page.goto(f"{url}{path}").status in (403, 404), path
            browser.clear_cookies()

            page.set_viewport_size({"width": 1280, "height": 900})
            sign_in(page, url, key_a)
            page.goto(f"{url}/ui/jobs/{job['id']}/report")
            section = page.locator("table", has=page.locator("th", has_text="Human AttAcc"))
            expect(section).to_contain_text("[")  # the interval
            expect(page.locator("main")).to_contain_text("κ")
        finally:
            browser.close()
    human = httpx.get(f"{url}/v1/jobs/{job['id']}/human-evaluation", headers=admin).json()
    assert human["answers"] == 12 and human["reviewers"] == 1 and human["included"] == 1
    for row in human["results"]:
        assert row["attacc_top1"]["ci_low"] <= row["attacc_top1"]["mean"] <= row["attacc_top1"]["ci_high"]
