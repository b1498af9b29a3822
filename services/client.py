"""A small Python client of the MIDRE service (used by the REST commands of ``midre`` and ``midre demo``).

Example:
    >>> from services.client import Client
    >>> with Client("http://127.0.0.1:8000", api_key) as c:  # doctest: +SKIP
    ...     job = c.submit({"kind": "train", "dataset": "digits", "arch": "cnn-small",
    ...                     "defense": {"name": "midre", "a_h": 0.4}, "training": {"epochs": 2}})
    ...     job = c.wait(job["id"])
    ...     paths = c.download(job["id"], "out/")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(RuntimeError):
    """An error answer of the service (its problem-details body is kept)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{status} {problem.get('code', '')}: {detail}".strip())
        self.status = status
        self.problem = problem


class ServiceUnreachable(ConnectionError):
    """No answer at all from the service URL (nothing listening, DNS, timeout): not an API error."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the MIDRE service at {url}: {reason}")
        self.url = url
        self.reason = reason


def _reason(exc: httpx.TransportError) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``: the part a person acts on."""
    text = str(exc) or type(exc).__name__
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
    if isinstance(exc, httpx.TimeoutException) and not str(exc):
        text = "timed out"
    return text[:1].lower() + text[1:]


class Client:
    """Thin, typed-by-convention wrapper around the REST API.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000`` (default ``$MIDRE_URL``).
        api_key: bearer key (default ``$MIDRE_API_KEY``).
        timeout: seconds per request.
    """

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("MIDRE_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("MIDRE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text[:500]}
            raise ApiError(response.status_code, problem)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a transport failure becomes :class:`ServiceUnreachable`, an error answer :class:`ApiError`."""
        try:
            return self._check(self.http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise ServiceUnreachable(self.url, _reason(exc)) from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API and return the decoded JSON (None for an empty body)."""
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def pages(self, path: str, params: dict[str, Any] | None = None, limit: int | None = None,
              page_size: int = 200) -> Iterator[dict[str, Any]]:
        """The items of a cursor-paginated list (newest first), at most ``limit`` of them."""
        cursor: str | None = None
        seen = 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            query = {k: v for k, v in (params or {}).items() if v is not None} | {"limit": size}
            if cursor:
                query["cursor"] = cursor
            page = self.request("GET", path, params=query)
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            cursor = page["next_cursor"]
            if cursor is None or (limit is not None and seen >= limit):
                return

    # -- jobs ---------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job spec; returns the job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", "/v1/jobs", json=spec, headers=headers)

    def dry_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check a job spec and estimate its cost; nothing is stored (``resolved``, ``estimate``)."""
        return self.request("POST", "/v1/jobs", json=spec, params={"dry_run": "true"})

    def job(self, job_id: str) -> dict[str, Any]:
        """One job."""
        return self.request("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The tenant's jobs, newest first, optionally only one ``status`` / ``kind``."""
        return list(self.pages("/v1/jobs", {"status": status, "kind": kind}, limit))

    def events(self, job_id: str, after: int | None = None) -> Iterator[dict[str, Any]]:
        """Every event of a job after ``after``, following pagination."""
        while True:
            params = {"limit": 500} | ({"after": after} if after is not None else {})
            page = self.request("GET", f"/v1/jobs/{job_id}/events", params=params)
            yield from page["items"]
            if page["items"]:
                after = page["items"][-1]["id"]
            if page["next_cursor"] is None:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop."""
        return self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends (or ``timeout`` seconds pass: TimeoutError); returns the job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll)

    # -- artifacts ----------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's artifacts (name, size, sha256, ...)."""
        return self.request("GET", f"/v1/jobs/{job_id}/artifacts")["items"]

    def report(self, job_id: str) -> dict[str, Any] | None:
        """A finished job's ``report.json`` (``None`` for a job without a report)."""
        if not any(a["name"] == "report.json" for a in self.artifacts(job_id)):
            return None
        return self._send("GET", f"/v1/jobs/{job_id}/artifacts/report.json").json()

    def download(self, job_id: str, dest: str | Path, names: list[str] | None = None) -> list[Path]:
        """Download artifacts into ``dest`` (all of them by default), checking each sha256."""
        dest = Path(dest)
        paths = []
        for item in self.artifacts(job_id):
            if names and item["name"] not in names:
                continue
            target = (dest / item["name"]).resolve()
            if dest.resolve() not in target.parents:
                raise ValueError(f"refusing artifact name {item['name']!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{item['name']}") as response:
                    if response.status_code >= 400:
                        response.read()
                        self._check(response)
                    with open(target, "wb") as fh:
                        for chunk in response.iter_bytes():
                            digest.update(chunk)
                            fh.write(chunk)
            except httpx.TransportError as exc:
                raise ServiceUnreachable(self.url, _reason(exc)) from exc
            if digest.hexdigest() != item["sha256"]:
                raise ValueError(f"{item['name']}: sha256 mismatch after download")
            paths.append(target)
        return paths

    # -- datasets -----------------------------------------------------------------------------
    def datasets(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The tenant's datasets, newest first."""
        return list(self.pages("/v1/datasets", limit=limit))

    def upload_dataset(self, archive: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload an ImageFolder archive; returns the dataset with its validation summary."""
        archive = Path(archive)
        with open(archive, "rb") as fh:
            return self.request(
                "POST",
                "/v1/datasets",
                files={"file": (archive.name, fh, "application/octet-stream")},
                data={"name": name or archive.name},
            )

    def model_card(self, job_id: str) -> dict[str, Any]:
        """The model card of a succeeded job."""
        return self.request("GET", f"/v1/models/{job_id}")

    def upload_model(self, weights: str | Path, card: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """Upload a model trained elsewhere: a safetensors state dict and its card (``arch``, ``num_classes``
        or ``class_names``, ``image_size``, ...); returns the model card, whose ``id`` names the model."""
        weights = Path(weights)
        data = {"card": json.dumps(card)} | ({"name": name} if name else {})
        with open(weights, "rb") as fh:
            return self.request("POST", "/v1/models", data=data,
                                files={"file": (weights.name, fh, "application/octet-stream")})
    # -- serving ------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """The tenant's servable models (every page)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.request("GET", "/v1/models", params={"limit": 200} | ({"cursor": cursor} if cursor else {}))
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    def predict(self, job_id: str, images: list[str | Path], top_k: int | None = None) -> dict[str, Any]:
        """Predict the identities of image files with model ``job_id`` (one request, multipart)."""
        handles = [open(p, "rb") for p in images]  # noqa: SIM115 - closed below
        try:
            files = [
                ("files", (Path(p).name, fh, "application/octet-stream"))
                for p, fh in zip(images, handles, strict=True)
            ]
            params = {"top_k": top_k} if top_k else None
            return self.request("POST", f"/v1/models/{job_id}/predict", files=files, params=params)
        finally:
            for fh in handles:
                fh.close()

    def set_policy(self, job_id: str, **policy: Any) -> dict[str, Any]:
        """Set a model's output policy / budget (``policy=``, ``top_k=``, ``decimals=``, ``budget=``)."""
        return self.request("PUT", f"/v1/models/{job_id}/policy", json=policy)

    def policy(self, job_id: str) -> dict[str, Any]:
        """A model's output policy, budget and per-key query accounting."""
        return self.request("GET", f"/v1/models/{job_id}/policy")

    def update_policy(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change only the given policy fields (``PATCH``); the others keep their values.

        ``budget=None`` given explicitly removes the budget (unlimited); leaving it out keeps it.
        """
        return self.request("PATCH", f"/v1/models/{job_id}/policy", json=fields)

    def export(self, job_id: str, dest: str | Path, fmt: str = "onnx") -> Path:
        """Download the model exported as ``fmt`` (``onnx`` | ``torchscript``) to the file ``dest``."""
        response = self._send("GET", f"/v1/models/{job_id}/export", params={"format": fmt})
        dest = Path(dest)
        dest.write_bytes(response.content)
        return dest

    # -- keys, webhooks, integrations (admin scope) -----------------------------------------------
    def create_key(self, name: str, scopes: list[str], models: list[str] | None = None) -> dict[str, Any]:
        """Mint a key of this tenant; the answer's ``key`` is the secret, shown only this once."""
        body: dict[str, Any] = {"name": name, "scopes": scopes} | ({"models": models} if models else {})
        return self.request("POST", "/v1/keys", json=body)

    def keys(self) -> list[dict[str, Any]]:
        """The tenant's keys, newest first, revoked ones included (never their secrets)."""
        return self.request("GET", "/v1/keys")["items"]

    def revoke_key(self, key_id: str) -> None:
        """Revoke the key whose public id is ``key_id``."""
        self.request("DELETE", f"/v1/keys/{key_id}")

    def create_webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        """Register ``url`` for ``events``; the answer's ``secret`` verifies deliveries, shown only this once."""
        return self.request("POST", "/v1/webhooks", json={"url": url, "events": events})

    def webhooks(self) -> list[dict[str, Any]]:
        """The tenant's webhooks, newest first (never their secrets)."""
        return self.request("GET", "/v1/webhooks")["items"]

    def delete_webhook(self, webhook_id: str) -> None:
        """Delete a webhook with its pending deliveries."""
        self.request("DELETE", f"/v1/webhooks/{webhook_id}")

    def set_mlflow(self, tracking_uri: str, experiment: str, registered_model: str | None = None,
                   token: str | None = None, username: str | None = None,
                   password: str | None = None) -> dict[str, Any]:
        """Set (replace) the tenant's MLflow server; returns the configuration without its credentials."""
        body = {"tracking_uri": tracking_uri, "experiment": experiment, "registered_model": registered_model,
                "token": token, "username": username, "password": password}
        return self.request("PUT", "/v1/integrations/mlflow", json={k: v for k, v in body.items() if v is not None})

    def mlflow(self) -> dict[str, Any]:
        """The tenant's MLflow configuration (an :class:`ApiError` 404 when none is set)."""
        return self.request("GET", "/v1/integrations/mlflow")

    def delete_mlflow(self) -> None:
        """Stop the MLflow hand-off and delete its credentials."""
        self.request("DELETE", "/v1/integrations/mlflow")
