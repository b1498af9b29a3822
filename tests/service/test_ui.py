"""The dashboard (/ui/) over HTTP: sign-in and sessions, CSRF, tenancy, scopes, and what each page shows.

In-process API on SQLite (no worker): jobs that must have run get their outputs written directly
(report.json + a plot as artifacts), or are models uploaded through the API. The browser tests
(``test_ui_browser.py``) run the whole flow with a real worker.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from services.db.keys import get_or_create_tenant, mint_key
from services.db.models import ApiKey, Artifact, Job, JobUnit, UiSession
from services.db.session import session_scope
from services.db.types import new_id, utcnow
from services.gateway.ui.sessions import COOKIE
from services.storage import LocalStore
from tests.service._support import face_folder_members, make_zip, png_bytes
from tests.service.conftest import Api

TRAIN = {"kind": "train", "dataset": "digits", "arch": "cnn-small", "training": {"epochs": 1, "image_size": 16}}


def sign_in(api: Api, key: str) -> str:
    """Sign the test client in with ``key``; returns the session's CSRF token."""
    r = api.client.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(api.client.get("/ui/datasets" if "jobs" in r.headers["location"] else "/ui/models").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def scoped_key(api: Api, tenant: str, scopes: list[str], models: list[str] | None = None) -> str:
    with session_scope(api.settings.db_url) as session:
        return mint_key(session, get_or_create_tenant(session, tenant).id, scopes, models=models)[1]


def add_job(api: Api, key: str, **values: Any) -> str:
    """A job row of ``key``'s tenant (queued train job unless ``values`` say otherwise)."""
    r = api.client.post("/v1/jobs", json=values.pop("spec", TRAIN), headers=api.auth(key))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    if values:
        with session_scope(api.settings.db_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
    return job_id


def add_artifact(api: Api, job_id: str, name: str, data: bytes, content_type: str) -> str:
    """Store ``data`` as artifact ``name`` of the job, as a worker does; returns its sha256."""
    tmp = api.settings.storage_dir / "tmp-artifact"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    blob = LocalStore(api.settings.storage_dir).put_file(tmp)
    with session_scope(api.settings.db_url) as session:
        session.add(Artifact(job_id=job_id, name=name, size=blob.size, sha256=blob.sha256,
                             content_type=content_type, created_at=utcnow()))
    return blob.sha256


def stat(mean: float, std: float = 0.0, n: int = 1) -> dict[str, Any]:
    return {"mean": mean, "std": std, "n": n, "runs": [mean] * n}


def study_report(nodef_attacc: float, midre_attacc: float, **extra: Any) -> dict[str, Any]:
    """A report.json in the shape midre.report writes."""
    return {
        "schema_version": 1,
        "dataset": {"source": "digits", "identities": 10, "image_size": 32},
        "models": {"target": {"arch": "cnn-small"}, "evaluation": {"arch": "resnet18", "accuracy": 97.5}},
        "seeds": [0, 1],
        "results": [
            {"attack": "mi-face", "defense": "nodef", "seeds": [0, 1], "tradeoff_delta": None,
             "metrics": {"acc": stat(98.25, 0.5, 2), "attacc_top1": stat(nodef_attacc, 1.0, 2)}},
            {"attack": "mi-face", "defense": "midre", "seeds": [0, 1], "tradeoff_delta": "OP",
             "metrics": {"acc": stat(97.75, 0.25, 2), "attacc_top1": stat(midre_attacc, 2.0, 2)}},
        ],
        "verdicts": [{"attack": "mi-face", "defense": "midre", "status": "helped",
                      "text": f"MIDRE lowered top-1 AttAcc of mi-face by {nodef_attacc - midre_attacc:.1f} points."}],
        "artifacts": {"json": "report.json", "html": "report.html", "plots": ["tradeoff.png"]},
        **extra,
    }


def add_study(api: Api, key: str, report: dict[str, Any]) -> str:
    """A succeeded pipeline job whose outputs are ``report`` (+ report.html and a plot)."""
    job_id = add_job(api, key, status="succeeded", progress=1.0, stage="done", finished_at=utcnow())
    with session_scope(api.settings.db_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(kind="pipeline"))
    add_artifact(api, job_id, "report.json", json.dumps(report).encode(), "application/json")
    add_artifact(api, job_id, "report.html", b"<html><body><script>alert(1)</script>report</body></html>",
                 "text/html")
    add_artifact(api, job_id, "tradeoff.png", png_bytes(3, 24), "image/png")
    return job_id


# --- sign-in, sessions, cookies --------------------------------------------------------------------


def test_root_and_pages_without_a_session_redirect_to_sign_in(api: Api) -> None:
    r = api.client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    r = api.client.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].split("?")[0] == "/ui/login"
    for path in ("/ui/jobs", "/ui/jobs/job_x", "/ui/models", "/ui/datasets", "/ui/compare", "/ui/jobs/job_x/stream"):
        r = api.client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/ui/login?next="), path
    assert "<form" in api.client.get("/ui/login").text


def test_sign_in_sets_a_strict_httponly_cookie_and_stores_only_its_hash(api: Api, key_a: str) -> None:
    r = api.client.post("/ui/login", data={"key": "mk_nope_wrong"}, follow_redirects=False)
    assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
    r = api.client.post("/ui/login", data={"key": key_a, "next": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"  # no open redirect
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here; over https the cookie is Secure
    token = api.client.cookies[COOKIE]
    with session_scope(api.settings.db_url) as session:
        ids = session.scalars(select(UiSession.id)).all()
    assert ids == [hashlib.sha256(token.encode()).hexdigest()]
    r = api.client.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/jobs"
    page = api.client.get("/ui/jobs")
    assert page.status_code == 200 and "tenant-a" in page.text
    r = api.client.post("/ui/login", data={"key": key_a, "next": "/ui/datasets"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/datasets"


def test_https_cookie_is_secure(api: Api, key_a: str) -> None:
    r = api.client.post("https://testserver/ui/login", data={"key": key_a}, follow_redirects=False)
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_sign_out_revocation_and_expiry_end_the_session(api: Api, key_a: str) -> None:
    csrf = sign_in(api, key_a)
    token = api.client.cookies[COOKIE]
    r = api.client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    api.client.cookies.set(COOKIE, token)  # a copy of the old cookie no longer works
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303
    api.client.cookies.clear()

    sign_in(api, key_a)
    with session_scope(api.settings.db_url) as session:
        session.execute(update(UiSession).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303

    sign_in(api, key_a)
    assert api.client.get("/ui/jobs").status_code == 200
    with session_scope(api.settings.db_url) as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))
    assert api.client.get("/ui/jobs", follow_redirects=False).status_code == 303
    assert api.client.post("/ui/login", data={"key": key_a}, follow_redirects=False).status_code == 401


# --- CSRF, cross-site, tenancy, scopes -------------------------------------------------------------


def test_every_state_changing_form_needs_its_csrf_token(api: Api, key_a: str) -> None:
    csrf = sign_in(api, key_a)
    job = add_job(api, key_a)
    ds = api.client.post("/v1/datasets", json={"name": "d", "source": "digits"}, headers=api.auth(key_a)).json()["id"]
    posts = [
        ("/ui/logout", {}), (f"/ui/jobs/{job}/cancel", {}), ("/ui/jobs", {"spec": json.dumps(TRAIN)}),
        (f"/ui/datasets/{ds}/delete", {}), ("/ui/datasets/register", {"name": "x"}),
        (f"/ui/models/{job}/policy", {"policy": "label-only"}),
    ]
    for path, data in posts:
        for token in (None, "wrong", csrf[:-1]):
            form = data if token is None else {**data, "csrf": token}
            r = api.client.post(path, data=form, follow_redirects=False)
            assert r.status_code == 403, (path, token, r.status_code)
            assert "CSRF" in r.text and r.headers["content-type"].startswith("text/html")
    files = {"file": ("faces.zip", make_zip(face_folder_members()), "application/zip")}
    assert api.client.post("/ui/datasets", files=files, data={"name": "f"}).status_code == 403
    assert api.client.post(f"/ui/models/{job}/try", files={"files": ("a.png", png_bytes(1))}).status_code == 403
    # A form from another site is refused even with the right token.
    r = api.client.post(f"/ui/jobs/{job}/cancel", data={"csrf": csrf}, headers={"Origin": "https://evil.example"},
                        follow_redirects=False)
    assert r.status_code == 403
    r = api.client.post(f"/ui/jobs/{job}/cancel", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"},
                        follow_redirects=False)
    assert r.status_code == 403
    with session_scope(api.settings.db_url) as session:
        assert session.get(Job, job).status == "queued"  # nothing above changed anything
        assert session.scalar(select(UiSession.id)) is not None
    assert api.client.get("/v1/datasets", headers=api.auth(key_a)).json()["items"][0]["id"] == ds


def test_another_tenants_ids_are_404_pages(api: Api, key_a: str, key_b: str) -> None:
    theirs = add_job(api, key_b)
    study = add_study(api, key_b, study_report(50.0, 20.0))
    ds = api.client.post("/v1/datasets", json={"name": "d", "source": "digits"}, headers=api.auth(key_b)).json()["id"]
    csrf = sign_in(api, key_a)
    for path in (f"/ui/jobs/{theirs}", f"/ui/jobs/{theirs}/state", f"/ui/jobs/{theirs}/stream",
                 f"/ui/jobs/{study}/report", f"/ui/jobs/{study}/artifacts/report.json", f"/ui/models/{study}",
                 f"/ui/datasets/{ds}", f"/ui/compare?a={study}&b={study}"):
        r = api.client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html") and "Not found" in r.text, path
    assert api.client.post(f"/ui/jobs/{theirs}/cancel", data={"csrf": csrf}).status_code == 404
    assert api.client.post(f"/ui/datasets/{ds}/delete", data={"csrf": csrf}).status_code == 404
    assert "tenant-b" not in api.client.get("/ui/jobs").text
    assert theirs not in api.client.get("/ui/jobs").text


def test_the_keys_scopes_apply(api: Api, key_a: str) -> None:
    job = add_job(api, key_a)
    predict_key = scoped_key(api, "tenant-a", ["predict"])
    r = api.client.post("/ui/login", data={"key": predict_key}, follow_redirects=False)
    assert r.status_code == 303
    assert api.client.get("/ui/", follow_redirects=False).headers["location"] == "/ui/models"
    assert api.client.get("/ui/models").status_code == 200
    csrf = csrf_of(api.client.get("/ui/models").text)
    for path in ("/ui/jobs", f"/ui/jobs/{job}", "/ui/datasets", "/ui/compare", "/ui/jobs/new"):
        r = api.client.get(path)
        assert r.status_code == 403 and "jobs" in r.text, path
    r = api.client.post(f"/ui/jobs/{job}/cancel", data={"csrf": csrf})
    assert r.status_code == 403
    r = api.client.post("/ui/jobs", data={"csrf": csrf, "spec": json.dumps(TRAIN)})
    assert r.status_code == 403
    assert len(api.client.get("/v1/jobs", headers=api.auth(key_a)).json()["items"]) == 1


# --- pages -----------------------------------------------------------------------------------------


def test_pages_are_self_contained_with_a_strict_csp(api: Api, key_a: str) -> None:
    sign_in(api, key_a)
    job = add_job(api, key_a)
    study = add_study(api, key_a, study_report(50.0, 20.0))
    assets: set[str] = set()
    for path in ("/ui/login", "/ui/jobs", "/ui/jobs/new", f"/ui/jobs/{job}", f"/ui/jobs/{study}/report",
                 f"/ui/compare?a={study}&b={study}", "/ui/models", "/ui/datasets"):
        r = api.client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
        html = r.text
        assert '<main id="main"' in html and 'lang="en"' in html and 'name="viewport"' in html, path
        assert not re.search(r"""(src|href)=["'](https?:)?//""", html), path  # nothing from another host
        assert "<script>" not in html and " style=" not in html, path  # no inline code (the CSP forbids it)
        for ident in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html):
            assert f'for="{ident}"' in html, (path, ident)  # every field has its label
        assets |= set(re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html))
    assert assets == {"/ui/static/ui.css", "/ui/static/ui.js"}
    for asset in assets:
        assert api.client.get(asset).status_code == 200


def test_jobs_list_filters_and_job_page(api: Api, key_a: str) -> None:
    csrf = sign_in(api, key_a)
    queued = add_job(api, key_a)
    failed = add_job(api, key_a, status="failed", error_code="boom", error_message="it broke", finished_at=utcnow())
    page = api.client.get("/ui/jobs").text
    assert queued in page and failed in page and "<progress" in page
    page = api.client.get("/ui/jobs?status=failed").text
    assert failed in page and queued not in page
    assert queued not in api.client.get("/ui/jobs?kind=pipeline").text
    assert api.client.get("/ui/jobs?status=bogus").status_code == 422

    page = api.client.get(f"/ui/jobs/{failed}").text
    assert "it broke" in page and "/cancel" not in page  # a finished job has no cancel form
    page = api.client.get(f"/ui/jobs/{queued}").text
    assert f'action="/ui/jobs/{queued}/cancel"' in page and "queued on" in page
    assert "&#34;epochs&#34;: 1" in page  # the spec (HTML-escaped)
    r = api.client.post(f"/ui/jobs/{queued}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{queued}"
    assert api.client.get(f"/v1/jobs/{queued}", headers=api.auth(key_a)).json()["status"] == "cancelled"
    assert api.client.post(f"/ui/jobs/{queued}/cancel", data={"csrf": csrf}).status_code == 409

    state = api.client.get(f"/ui/jobs/{queued}/state").json()
    assert state["job"]["status"] == "cancelled" and state["job"]["terminal"]
    assert [e["message"] for e in state["events"]][-1] == "cancelled before it started"
    after = api.client.get(f"/ui/jobs/{queued}/state?after={state['next']}").json()
    assert after["events"] == []


def test_a_fanned_out_study_shows_its_units(api: Api, key_a: str) -> None:
    sign_in(api, key_a)
    job = add_job(api, key_a, status="running")
    assert "Units" not in api.client.get(f"/ui/jobs/{job}").text
    with session_scope(api.settings.db_url) as session:
        for key, status in (("eval", "succeeded"), ("target/midre/seed0", "running"), ("report", "pending")):
            session.add(JobUnit(job_id=job, key=key, kind=key.split("/")[0], status=status, progress=0.5))
    page = api.client.get(f"/ui/jobs/{job}").text
    assert "3 units" in page and "1 running" in page and "1 succeeded" in page and "target/midre/seed0" in page


def test_the_event_stream_sends_status_events_and_ends(api: Api, key_a: str) -> None:
    sign_in(api, key_a)
    job = add_job(api, key_a, status="cancelled", finished_at=utcnow())
    with api.client.stream("GET", f"/ui/jobs/{job}/stream") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    assert "event: log" in body and '"queued on' in body
    assert "event: job" in body and '"status": "cancelled"' in body
    assert body.rstrip().endswith("event: end\ndata: {}")
    first = int(re.search(r"^id: (\d+)$", body, re.M).group(1))
    with api.client.stream("GET", f"/ui/jobs/{job}/stream", headers={"Last-Event-ID": str(first)}) as r:
        resumed = "".join(r.iter_text())
    assert f"id: {first}\n" not in resumed and "event: end" in resumed


def test_the_stream_of_an_unfinished_job_closes_for_a_reconnect(api: Api, key_a: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.ui import pages

    monkeypatch.setattr(pages, "STREAM_POLL_S", 0.05)
    monkeypatch.setattr(pages, "STREAM_MAX_S", 0.2)
    sign_in(api, key_a)
    job = add_job(api, key_a)
    with api.client.stream("GET", f"/ui/jobs/{job}/stream") as r:
        body = "".join(r.iter_text())
    assert body.startswith("retry: ") and '"status": "queued"' in body and "event: end" not in body


def test_submitting_a_job_from_the_form(api: Api, key_a: str) -> None:
    csrf = sign_in(api, key_a)
    form = api.client.get("/ui/jobs/new").text
    idem = re.search(r'name="idempotency_key" value="([^"]+)"', form).group(1)
    bad = {**TRAIN, "training": {"epochs": 1, "image_size": 16, "lr": -1}}
    r = api.client.post("/ui/jobs", data={"csrf": csrf, "spec": json.dumps(bad), "idempotency_key": idem})
    assert r.status_code == 422 and "training.lr" in r.text
    r = api.client.post("/ui/jobs", data={"csrf": csrf, "spec": "{not json", "idempotency_key": idem})
    assert r.status_code == 422 and "not JSON" in r.text
    assert api.client.get("/v1/jobs", headers=api.auth(key_a)).json()["items"] == []
    for _ in range(2):  # a double submit (same form) makes one job
        r = api.client.post("/ui/jobs", data={"csrf": csrf, "spec": json.dumps(TRAIN), "idempotency_key": idem},
                            follow_redirects=False)
        assert r.status_code == 303
    jobs = api.client.get("/v1/jobs", headers=api.auth(key_a)).json()["items"]
    assert len(jobs) == 1 and r.headers["location"] == f"/ui/jobs/{jobs[0]['id']}"
    assert jobs[0]["spec"]["training"]["epochs"] == 1


def test_report_page_renders_report_json_sections_and_plots(api: Api, key_a: str) -> None:
    sign_in(api, key_a)
    report = study_report(
        60.0, 25.0,
        warnings=[{"code": "single_seed", "message": "only 2 seeds: spreads are rough"}],
        recommendation={"defense": "midre-a_h0.4", "reason": "largest AttAcc drop within 1 point of Acc"},
        frontier=[{"defense": "nodef", "acc": stat(98.25, 0.5, 2), "attacc": {"mi-face": stat(60.0, 1.0, 2)}},
                  {"defense": "midre-a_h0.4", "acc": stat(97.75, 0.25, 2), "attacc": {"mi-face": stat(25.0, 2.0, 2)},
                   "acc_drop": 0.5, "pareto": True}],
        attacks=[{"name": "mi-face"}],
    )
    study = add_study(api, key_a, report)
    r = api.client.get(f"/ui/jobs/{study}/report")
    assert r.status_code == 200
    html = r.text
    assert "MIDRE lowered top-1 AttAcc of mi-face by 35.0 points." in html
    assert "98.25 ± 0.50" in html and "25.00 ± 2.00" in html and ">OP<" in html
    assert "only 2 seeds: spreads are rough" in html and "largest AttAcc drop" in html
    frontier = html[html.index("Privacy-utility frontier"):]
    assert "midre-a_h0.4" in frontier and "+0.5" in frontier and "25.0 ± 2.0" in frontier
    assert f'src="/ui/jobs/{study}/artifacts/tradeoff.png"' in html
    plot = api.client.get(f"/ui/jobs/{study}/artifacts/tradeoff.png")
    assert plot.status_code == 200 and plot.content == png_bytes(3, 24)
    assert plot.headers["x-checksum-sha256"] == hashlib.sha256(plot.content).hexdigest()
    raw = api.client.get(f"/ui/jobs/{study}/report.html")
    assert raw.status_code == 200 and "sandbox" in raw.headers["content-security-policy"]
    assert "script-src" not in raw.headers["content-security-policy"]  # default-src 'none': no script runs
    assert api.client.get(f"/ui/jobs/{add_job(api, key_a)}/report").status_code == 404  # no report

    # an attack-only report: its leakage statements stand where a comparison's verdicts would, and the
    # judges that pooled AttAcc are named with their accuracies
    audit = study_report(60.0, 25.0)
    audit.update(verdicts=[], leakage=[{"attack": "mi-face", "level": "high", "text": "high: mi-face recovers 60 %"}],
                 judges=[{"arch": "resnet18", "accuracy": 98.75}, {"arch": "densenet121", "accuracy": 100.0}])
    html = api.client.get(f"/ui/jobs/{add_study(api, key_a, audit)}/report").text
    assert "high: mi-face recovers 60 %" in html and "No defense to compare" not in html
    assert "pooled over 2 independent judges" in html and "98.75" in html


def test_compare_two_studies(api: Api, key_a: str) -> None:
    sign_in(api, key_a)
    a = add_study(api, key_a, study_report(60.0, 25.0))
    b = add_study(api, key_a, study_report(60.0, 12.5))
    picker = api.client.get("/ui/compare").text
    assert a in picker and b in picker
    html = api.client.get(f"/ui/compare?a={a}&b={b}").text
    table = html[html.index('id="compare-table"'):]
    assert "25.00 ± 2.00" in table and "12.50 ± 2.00" in table and "-12.50" in table and "+0.00" in table
    assert html.count("<article") == 2


def test_datasets_upload_report_and_delete(api: Api, key_a: str) -> None:
    csrf = sign_in(api, key_a)
    files = {"file": ("faces.zip", make_zip(face_folder_members(3, 4)), "application/zip")}
    r = api.client.post("/ui/datasets", files=files, data={"csrf": csrf, "name": "my faces"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = api.client.get(r.headers["location"]).text
    ds = r.headers["location"].rsplit("/", 1)[1]
    api_view = api.client.get(f"/v1/datasets/{ds}", headers=api.auth(key_a)).json()
    assert api_view["summary"]["identities"] == 3 and api_view["summary"]["images"] == 12
    assert "my faces" in page and "README.txt" in page  # the rejected file and its reason
    assert re.search(r"<dt>Identities</dt><dd>3</dd>", page) and re.search(r"<dt>Images</dt><dd>12</dd>", page)

    bad = {"file": ("x.zip", b"not an archive at all", "application/zip")}
    r = api.client.post("/ui/datasets", files=bad, data={"csrf": csrf})
    assert r.status_code == 415 and "not a .zip" in r.text
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.png", png_bytes(1))
    r = api.client.post("/ui/datasets", files={"file": ("evil.zip", buf.getvalue(), "application/zip")},
                        data={"csrf": csrf})
    assert r.status_code == 422 and "evil.png" in r.text
    assert len(api.client.get("/v1/datasets", headers=api.auth(key_a)).json()["items"]) == 1

    assert "my faces" in api.client.get("/ui/datasets").text
    r = api.client.post(f"/ui/datasets/{ds}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert api.client.get(f"/v1/datasets/{ds}", headers=api.auth(key_a)).status_code == 404


def test_upload_forms_take_files_past_the_json_body_limit(api: Api, key_a: str) -> None:
    """The dashboard's upload form streams under the dataset cap, not the 256 kB cap of JSON bodies."""
    import numpy as np
    from PIL import Image

    def noise(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (160, 160, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    archive = make_zip({f"p{i}/{j}.png": noise(i * 10 + j) for i in range(2) for j in range(2)})
    assert len(archive) > api.settings.max_json_bytes
    csrf = sign_in(api, key_a)
    r = api.client.post("/ui/datasets", files={"file": ("big.zip", archive, "application/zip")},
                        data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert api.client.get("/v1/datasets", headers=api.auth(key_a)).json()["items"][0]["summary"]["images"] == 4


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """Weights and card of a small model trained with the library (1 epoch, 16 px digits)."""
    from midre.data import DatasetSpec
    from midre.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(data=DatasetSpec(source="digits", image_size=16, channels=1, max_images_per_identity=20),
                      arch="cnn-small", defense={"name": "midre", "a_h": 0.4}, epochs=1, device="cpu")
    train(cfg, out)
    card = json.loads((out / "model.json").read_text())
    return (out / "model.safetensors").read_bytes(), card


def test_models_policy_usage_and_try_it(api: Api, key_a: str, model_files: tuple[bytes, dict[str, Any]]) -> None:
    weights, card = model_files
    r = api.client.post("/v1/models", files={"file": ("m.safetensors", weights, "application/octet-stream")},
                        data={"card": json.dumps(card), "name": "digits-net"}, headers=api.auth(key_a))
    assert r.status_code == 201, r.text
    model = r.json()["id"]
    csrf = sign_in(api, key_a)
    listing = api.client.get("/ui/models").text
    assert model in listing and "uploaded" in listing and "midre" in listing

    page = api.client.get(f"/ui/models/{model}").text
    assert 'id="policy-form"' in page and "No queries yet" in page and "class_names" in page
    r = api.client.post(f"/ui/models/{model}/policy", data={"csrf": csrf, "policy": "top-k", "top_k": "2",
                                                            "budget": "5"}, follow_redirects=False)
    assert r.status_code == 303
    policy = api.client.get(f"/v1/models/{model}/policy", headers=api.auth(key_a)).json()
    assert (policy["policy"], policy["top_k"], policy["budget"]) == ("top-k", 2, 5)
    r = api.client.post(f"/ui/models/{model}/policy", data={"csrf": csrf, "policy": "full", "top_k": "2"})
    assert r.status_code == 422 and "top_k" in r.text  # the API's own rule: only top-k/rounded take top_k
    r = api.client.post(f"/ui/models/{model}/policy", data={"csrf": csrf, "policy": "top-k", "top_k": "x"})
    assert r.status_code == 422

    files = [("files", ("a.png", png_bytes(1, 16), "image/png")), ("files", ("b.png", png_bytes(2, 16), "image/png"))]
    r = api.client.post(f"/ui/models/{model}/try", files=files, data={"csrf": csrf})
    assert r.status_code == 200, r.text
    answer = re.search(r'<div id="answer".*?<pre>(.*?)</pre>', r.text, re.S).group(1)
    predictions = json.loads(answer.replace("&#34;", '"').replace("&quot;", '"'))
    assert len(predictions) == 2 and all(len(p["top"]) == 2 for p in predictions)  # top-k 2, as the policy says
    assert "queries used 2 of 5" in r.text
    page = api.client.get(f"/ui/models/{model}").text
    key_id = key_a.split("_")[1]
    usage = page[page.index('id="usage"'):]
    assert key_id in usage and re.search(r'<td class="num">2</td>', usage)

    # A predict key limited to other models does not see this one; one allowed sees it without the policy form.
    other = scoped_key(api, "tenant-a", ["predict"], models=[new_id("job")])
    api.client.post("/ui/login", data={"key": other})
    assert model not in api.client.get("/ui/models").text
    assert api.client.get(f"/ui/models/{model}").status_code == 404
    allowed = scoped_key(api, "tenant-a", ["predict"], models=[model])
    api.client.post("/ui/login", data={"key": allowed})
    page = api.client.get(f"/ui/models/{model}").text
    assert 'id="try-form"' in page and 'id="policy-form"' not in page
    assert api.client.post(f"/ui/models/{model}/policy",
                           data={"csrf": csrf_of(page), "policy": "full"}).status_code == 403


def test_attacc_per_attack_of_a_study_model() -> None:
    from services.gateway.ui.pages import _acc, _attacc

    metrics = {"nodef.mi-face.attacc_top1": 80.0, "midre-a_h0.4.mi-face.attacc_top1": 30.0,
               "midre-a_h0.4.gmi.attacc_top1": 20.0, "midre-a_h0.4.mi-face.acc": 95.0, "nodef.mi-face.acc": 97.0}
    assert _attacc(metrics, []) == {"mi-face": 30.0, "gmi": 20.0}
    assert _attacc(metrics, [{"attack": "mi-face", "attacc_top1": 12.0}])["mi-face"] == 12.0  # the newest audit
    assert _acc(metrics, []) == 95.0 and _acc({"acc": 91.0, **metrics}, []) == 91.0
    assert _acc({}, [{"attack": "gmi", "acc": 88.0}]) == 88.0  # a model trained elsewhere: its audit's Acc
    assert _acc({}, []) is None


def test_ui_routes_stay_out_of_the_openapi_document(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_templates_and_static_files_ship_in_the_package() -> None:
    """The wheel takes every file of the ``services`` package (hatch), so the ui files must live there."""
    import services.gateway.ui as ui

    root = Path(ui.__file__).parent
    assert {p.name for p in (root / "static").iterdir()} >= {"ui.css", "ui.js"}
    assert {"base.html", "jobs.html", "job.html", "report.html", "models.html", "datasets.html"} <= {
        p.name for p in (root / "templates").iterdir()}
