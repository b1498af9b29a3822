"""Signed webhooks (Standard Webhooks, https://www.standardwebhooks.com): the outbound target check
and the deliverer that empties the outbox.

* **Target check** (:func:`check_target`): ``http``/``https`` only; the host is resolved and every
  address must be public (no loopback, private, link-local, multicast, reserved, unspecified or
  other non-global address, IPv6 and IPv4-mapped IPv6 included) unless the operator sets
  ``MIDRE_WEBHOOKS_ALLOW_PRIVATE=true``. It runs when a webhook is registered and again at every
  delivery, and the request then goes to the very address that was checked (TLS still verifies the
  host name), so a DNS answer that changes in between cannot point a delivery inside.
* **Deliverer** (:class:`WebhookDeliverer`): a daemon thread in every worker (next to the reaper)
  and, with ``MIDRE_WEBHOOKS_IN_API``, in every API process. It claims one due outbox row at a time
  with a conditional UPDATE (``state = 'pending' AND next_attempt_at <= now``) that moves
  ``next_attempt_at`` past a lease and stamps a lease token, so of several deliverers exactly one
  sends it; a deliverer that dies mid-send leaves the row to be claimed again when the lease ends.
  Each try is signed afresh (``webhook-id`` stays the message id, ``webhook-timestamp`` is the try's
  time), is recorded as a ``webhook_attempts`` row, and a failure is retried after
  ``MIDRE_WEBHOOKS_BASE_DELAY_S * 2**(n-1)`` (capped at 6 h) until ``MIDRE_WEBHOOKS_MAX_ATTEMPTS``.
  Any 2xx answer is a success; redirects are not followed (a 3xx is a failed try).
* The same outbox carries MLflow hand-offs (``channel = 'mlflow'``): the deliverer claims them alike
  (with a longer lease, :func:`lease_s`) and one try is :func:`services.integrations.mlflow.log_job`,
  which also leaves a ``log`` event on the job. The hand-off receives :func:`check_target` from here
  and imports nothing of this module (``services.integrations.outbound`` holds what both use).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook as Signer

from services.db import jobs as jobstate
from services.db.models import Job, Webhook, WebhookAttempt, WebhookDelivery
from services.db.session import session_factory
from services.db.types import utcnow
from services.db.webhooks import DELIVERED, FAILED, PENDING
from services.integrations.mlflow import event_message, log_job
from services.integrations.outbound import Result, UnsafeTarget, refuse_private
from services.settings import Settings

log = logging.getLogger(__name__)

#: The longest back-off between two tries, whatever the base delay and the try number.
MAX_DELAY_S = 6 * 3600.0
#: A claimed row is left alone for the request timeout plus this margin; past it another deliverer
#: may take it over (the claimer died mid-send).
LEASE_MARGIN_S = 30.0
#: Rows one pass sends at most (the next pass, ``MIDRE_WEBHOOKS_POLL_S`` later, sends the rest).
PASS_LIMIT = 200
USER_AGENT = "midre-webhooks/1"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``ipaddress`` properties that make an address unfit as a webhook target, in the order reported.
_REFUSED = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_site_local", "site-local"),  # IPv6 fec0::/10: deprecated, but routed inside some networks
    ("is_private", "private"),
    ("is_reserved", "reserved"),
)
#: IPv6 unicast meant for the internet is 2000::/3 (RFC 4291); all else is local, special or unassigned.
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
#: Special-purpose blocks that ``ipaddress`` still calls global (IANA special-purpose registries).
_NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in ("192.88.99.0/24", "3fff::/20", "2001:db8::/32"))


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes (the Standard Webhooks form)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def address_problem(address: _Address) -> str | None:
    """Why ``address`` may not be a webhook target (``None``: it is a public address).

    IPv4-mapped (``::ffff:a.b.c.d``), 6to4 and Teredo IPv6 addresses are judged by the IPv4 address
    they carry as well, so ``::ffff:127.0.0.1`` is loopback.
    """
    candidates: list[_Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        candidates += [a for a in embedded if a is not None]
    for candidate in candidates:
        for attribute, name in _REFUSED:
            if getattr(candidate, attribute, False):
                return f"a {name} address"
        if not candidate.is_global or any(candidate in net for net in _NOT_GLOBAL if net.version == candidate.version):
            return "not a public address"
        if candidate is address and isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
            return "not a public address (outside IPv6 global unicast 2000::/3)"
    return None


def parse_target(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a webhook URL, or :class:`UnsafeTarget` (scheme, host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeTarget("the scheme must be http or https")
    if not parts.hostname:
        raise UnsafeTarget("the URL has no host")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def check_target(url: str, allow_private: bool, setting: str = "MIDRE_WEBHOOKS_ALLOW_PRIVATE") -> list[str]:
    """Resolve the host of ``url`` and return its addresses, or raise :class:`UnsafeTarget`.

    Every address the name resolves to must be public unless ``allow_private`` (the operator's ``setting``,
    named in the refusal): otherwise a name with one public and one private address would
    let the private one through on a later lookup.
    """
    _, host, port = parse_target(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeTarget(f"the host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise UnsafeTarget(f"the host {host!r} does not resolve")
    if not allow_private:
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem is not None:
                raise refuse_private(problem, setting)
    return addresses


def backoff_s(settings: Settings, attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): base, 2x base, 4x base, ..."""
    return min(settings.webhooks_base_delay_s * 2 ** (attempt - 1), MAX_DELAY_S)


def post(settings: Settings, url: str, body: str, headers: dict[str, str]) -> Result:
    """POST ``body`` to ``url`` after checking the target again; never raises, never follows redirects.

    The request goes to the checked address itself; ``Host`` and (for https) the TLS server name and
    certificate check keep using the URL's host name.
    """
    started = time.perf_counter()

    def done(status: int | None, error: str | None) -> Result:
        return Result(status, error, round((time.perf_counter() - started) * 1000, 1))

    try:
        addresses = check_target(url, settings.webhooks_allow_private)
        scheme, host, _ = parse_target(url)
    except UnsafeTarget as exc:
        return done(None, f"refused: {exc}")
    original = httpx.URL(url)
    pinned = original.copy_with(host=addresses[0])
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    request_headers = {**headers, "Host": original.netloc.decode("ascii").rpartition("@")[2],
                       "Content-Type": "application/json", "User-Agent": USER_AGENT}
    try:
        with httpx.Client(timeout=settings.webhooks_timeout_s, follow_redirects=False, trust_env=False) as client:
            with client.stream("POST", pinned, content=body.encode(), headers=request_headers,
                               extensions=extensions) as response:
                status = response.status_code  # the body is not read: a receiver cannot make us buffer it
    except httpx.TimeoutException:
        return done(None, f"timed out after {settings.webhooks_timeout_s:g} s")
    except httpx.HTTPError as exc:
        return done(None, f"{type(exc).__name__}: {exc}"[:500])
    if 300 <= status < 400:
        return done(status, "redirect not followed")
    return done(status, None if 200 <= status < 300 else f"HTTP {status}")


def lease_s(settings: Settings, channel: str) -> float:
    """How long a claimed row is left to its deliverer: one request's timeout for a webhook; for an
    MLflow hand-off (a dozen requests and uploads) 20 times ``MIDRE_MLFLOW_TIMEOUT_S``; plus a margin."""
    if channel == "mlflow":
        return 20 * settings.mlflow_timeout_s + LEASE_MARGIN_S
    return settings.webhooks_timeout_s + LEASE_MARGIN_S


def claim_one(sessions: sessionmaker[Session], settings: Settings) -> tuple[str, str] | None:
    """Take one due outbox row for this deliverer: ``(message id, lease token)``, or ``None``.

    ``UPDATE ... WHERE id = ? AND state = 'pending' AND next_attempt_at <= now`` moves the row's
    ``next_attempt_at`` past the lease, so a second deliverer's identical UPDATE matches nothing
    (PostgreSQL re-checks the condition after the first commits; SQLite runs writers one at a time).
    """
    now = utcnow()
    with sessions() as session:
        due = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.channel)
            .where(WebhookDelivery.state == PENDING, WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(20)
        ).all()
        for message_id, channel in due:
            token = secrets.token_hex(16)
            lease_until = now + dt.timedelta(seconds=lease_s(settings, channel))
            won = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == message_id, WebhookDelivery.state == PENDING,
                       WebhookDelivery.next_attempt_at <= now)
                .values(next_attempt_at=lease_until, lease=token, attempts=WebhookDelivery.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if won.rowcount == 1:
                return message_id, token
    return None


def deliver(sessions: sessionmaker[Session], settings: Settings, message_id: str, lease: str) -> Result | None:
    """Send a claimed message once, record the try and schedule the next (or finish the row)."""
    with sessions() as session:
        row = session.get(WebhookDelivery, message_id)
        if row is None or row.lease != lease:
            return None  # deleted with its webhook or integration, or another deliverer took over
        channel, job_id, attempt = row.channel, row.job_id, row.attempts
        hook = session.get(Webhook, row.webhook_id) if channel == "webhook" and row.webhook_id else None
        if channel == "webhook" and hook is None:
            return None
        url, secret, body = (hook.url, hook.secret, row.payload) if hook is not None else ("", "", "")
    at = utcnow()
    try:
        if channel == "mlflow":
            result = log_job(settings, sessions, message_id, check_target)
        else:
            result = _sign_and_post(settings, url, secret, message_id, at, body)
    except Exception as exc:  # noqa: BLE001 - a bad row must still use up its tries, not loop forever
        log.exception("outbox %s: try %d could not be made", message_id, attempt)
        result = Result(None, f"internal error: {type(exc).__name__}", 0.0)
    finished = utcnow()
    if result.ok:
        state, next_at = DELIVERED, None
    elif attempt >= settings.webhooks_max_attempts:
        state, next_at = FAILED, None
    else:
        state, next_at = PENDING, finished + dt.timedelta(seconds=backoff_s(settings, attempt))
    with sessions() as session:
        kept = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == message_id, WebhookDelivery.lease == lease)
            .values(state=state, next_attempt_at=next_at, lease=None,
                    finished_at=finished if state != PENDING else None)
            .execution_options(synchronize_session=False)
        )
        if kept.rowcount == 1:
            session.add(WebhookAttempt(delivery_id=message_id, attempt=attempt, at=at,
                                       duration_ms=result.duration_ms, status_code=result.status_code,
                                       error=result.error, next_attempt_at=next_at))
            job = session.get(Job, job_id) if channel == "mlflow" and job_id else None
            if job is not None:
                jobstate.add_event(session, job, "log", event_message(result, state, attempt, next_at),
                                   stage=job.stage, data={"mlflow": state, "try": attempt})
        session.commit()
    log.info("%s %s try %d: %s -> %s", channel, message_id, attempt, result.status_code or result.error, state)
    return result


def _sign_and_post(settings: Settings, url: str, secret: str, message_id: str, at: dt.datetime,
                   body: str) -> Result:
    """Sign a webhook message afresh for this try and POST it."""
    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Signer(secret).sign(message_id, at, body),
    }
    return post(settings, url, body, headers)


def deliver_due(
    settings: Settings,
    sessions: sessionmaker[Session] | None = None,
    limit: int = PASS_LIMIT,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """One pass: claim and send due messages one by one until none is due (or ``limit``, or
    ``should_stop()``); returns how many tries were made."""
    sessions = sessions or session_factory(settings.db_url, settings.pool)
    tries = 0
    while tries < limit and not should_stop():
        claimed = claim_one(sessions, settings)
        if claimed is None:
            break
        deliver(sessions, settings, *claimed)
        tries += 1
    return tries


class WebhookDeliverer:
    """Runs :func:`deliver_due` at start and then every ``settings.webhooks_poll_s`` in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="midre-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        sessions = session_factory(self.settings.db_url, self.settings.pool)
        while not self._stop.is_set():
            try:
                deliver_due(self.settings, sessions, should_stop=self._stop.is_set)
            except Exception:  # noqa: BLE001 - never kill the process over a delivery pass
                log.exception("webhook delivery pass failed")
            self._stop.wait(self.settings.webhooks_poll_s)
