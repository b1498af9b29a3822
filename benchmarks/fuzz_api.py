"""Fuzz the live API with schemathesis: generated good and bad requests against every operation.

``midre serve --no-worker`` runs in a temporary MIDRE_HOME on a free loopback port (embedded mode:
SQLite + file-system broker). Real objects are seeded first through the API so that path parameters
can hit existing resources: the built-in ``digits`` data set, a small model trained by a worker that
is started only for it (then stopped, so fuzzed jobs stay queued and cost no CPU), a queued job and a
spare API key. The schema is loaded from the live ``/openapi.json``; every request carries
``Authorization: Bearer <admin key>``.

Each operation gets up to ``--per-operation`` requests, shared by these passes in this order (what
one pass cannot use goes to the passes after it):

* negative data (breaks the schema) with the seeded ids as path parameters, then with generated ones;
  not run for an operation that has nothing to negate (only unconstrained string path parameters);
* positive data (fits the schema) around a known-valid body, for the operations whose generated bodies
  almost never pass the server's own checks (``POST /v1/jobs``, ``/v1/datasets``, ``.../predict``);
* positive data with the seeded ids as path parameters, then with generated ones.

Operations that delete (``DELETE``) run last, so the seeds live until then. Each response is checked
for: no 5xx (``not_a_server_error``), a documented status code (``status_code_conformance``) and a
body that fits the documented schema (``response_schema_conformance``); a 5xx is counted once, as a
5xx, with the server's logged exception. Hypothesis stops a pass early when it runs out of new
examples (an operation with no parameters has only one request to send); every pass that could not
generate is listed with its reason. A run with the defaults sends about 1,200 requests in ~20 s, after
~1 minute of start-up and seed training on two CPU cores.

Run: ``uv run python benchmarks/fuzz_api.py`` (``--per-operation 60``, ``--seed 0``, ``--no-train``,
``--budget-s 300``). Exit status 1 when any response was a 5xx (or the server dropped a connection).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.cli.processes import stop_group

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: A tiny model: ``cnn-small`` on 1,000 digits at 16 px for one epoch (seconds on two cores).
TRAIN_SPEC: dict[str, Any] = {
    "kind": "train",
    "dataset": "digits",
    "arch": "cnn-small",
    "defense": {"name": "midre", "a_h": 0.4},
    "training": {"epochs": 1, "image_size": 16, "batch_size": 64, "seed": 0},
    "data": {"max_images_per_identity": 100},
    "device": "cpu",
}

REQUEST_TIMEOUT_S = 30.0
SHOWN = 300  # characters of a body / response shown in a reproduction


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``midre serve --no-worker`` on 127.0.0.1:<free port> with ``MIDRE_HOME=home``, ready when
    ``/readyz`` answers 200. Use as a context manager; :meth:`worker` starts a worker on demand."""

    def __init__(self, home: Path, ready_timeout: float = 120.0, database_url: str | None = None) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MIDRE_")}
        self.env |= {"MIDRE_HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        if database_url:
            self.env["MIDRE_DATABASE_URL"] = database_url
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "midre.cli", "serve", "--no-worker", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"midre serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"midre serve not ready after {ready_timeout:.0f}s:\n{self.log()}")
            time.sleep(0.3)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def create_key(self, tenant: str) -> str:
        """An admin key from ``midre admin create-key`` (the key is the last word it prints)."""
        out = subprocess.run(
            [sys.executable, "-m", "midre.cli", "admin", "create-key", "--tenant", tenant],
            env=self.env, capture_output=True, text=True, check=True, timeout=120,
        )
        return out.stdout.strip().split()[-1]

    def worker(self) -> subprocess.Popen[bytes]:
        """A ``midre worker`` process on this data folder (its own process group; log beside the server's)."""
        with open(self.home / "worker.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "midre.cli", "worker", "--queues", "gpu,cpu", "--concurrency", "1"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self) -> None:
        stop_group(self.proc, 20.0)


def _wait_job(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def seed_objects(base_url: str, key: str, *, start_worker: Callable[[], subprocess.Popen[bytes]] | None = None,
                 train_timeout: float = 240.0) -> dict[str, list[str]]:
    """Create real objects through the API; returns the seeded values of each path parameter.

    With ``start_worker``, a worker it starts trains a tiny model and is then stopped: ``job_id`` lists
    that succeeded job first and ``name`` its artifact names. ``job_id`` always lists a queued job (no
    worker runs afterwards); ``key_id`` is a spare ``predict`` key (never the key in use).
    """
    seeds: dict[str, list[str]] = {"dataset_id": [], "job_id": [], "key_id": [], "name": []}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        r = client.post("/v1/datasets", json={"name": "d", "source": "digits"})
        r.raise_for_status()
        seeds["dataset_id"].append(r.json()["id"])
        r = client.post("/v1/keys", json={"name": "spare", "scopes": ["predict"]})
        r.raise_for_status()
        seeds["key_id"].append(r.json()["id"])
        if start_worker is not None:
            worker = start_worker()
            try:
                job = client.post("/v1/jobs", json=TRAIN_SPEC).raise_for_status().json()
                job = _wait_job(client, job["id"], train_timeout)
            finally:
                stop_group(worker, 20.0)
            if job["status"] != "succeeded":
                raise RuntimeError(f"seed training {job['id']} is {job['status']}: {job.get('error')}")
            seeds["job_id"].append(job["id"])
            arts = client.get(f"/v1/jobs/{job['id']}/artifacts").raise_for_status().json()
            seeds["name"] += [a["name"] for a in arts["items"]][:4]
        # no worker runs from here on: this job (and every fuzzed one) stays queued
        queued = client.post("/v1/jobs", json=TRAIN_SPEC).raise_for_status().json()
        seeds["job_id"].append(queued["id"])
    return seeds


@dataclass
class FuzzFailure:
    """One distinct failure: first occurrence, with how often it was seen."""

    method: str
    path: str
    status: int | None
    kind: str  # "5xx", "status code", "schema", "transport", ...
    title: str
    message: str
    reproduction: str
    response: str
    server_log: str = ""
    count: int = 1


@dataclass
class FuzzReport:
    requests: Counter[str] = field(default_factory=Counter)  # operation label -> requests sent
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    server_errors: int = 0  # 5xx responses (plus dropped connections)
    violations: int = 0  # responses failing the status-code or response-schema check
    failures: dict[tuple[str, ...], FuzzFailure] = field(default_factory=dict)
    not_generated: list[str] = field(default_factory=list)  # "label [pass]: reason"
    operations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def unfuzzed(self) -> list[str]:
        return [op for op in self.operations if self.requests[op] == 0]


def _short(value: Any, limit: int = SHOWN) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def reproduction(case: Any, key: str) -> str:
    """Method, URL path, query, headers (the key redacted), media type and body of a case, plus curl."""
    parts = [f"{case.method.upper()} {case.formatted_path}"]
    if case.query:
        parts.append(f"query={_short(dict(case.query))}")
    extra = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if extra:
        parts.append(f"headers={_short(extra)}")
    if case.media_type:
        parts.append(f"media_type={case.media_type}")
    body = getattr(case, "body", None)
    if body is not None and type(body).__name__ != "NotSet":
        parts.append(f"body={_short(body)}")
    try:
        curl = case.as_curl_command().replace(key, "$MIDRE_KEY")
        parts.append("curl: " + _short(curl, 600))
    except Exception as exc:  # a case the curl renderer cannot express is still reproduced above
        parts.append(f"(no curl: {type(exc).__name__})")
    return "\n      ".join(parts)


def _log_excerpt(text: str) -> str:
    """The last exception line (and the frame above it) of a server log slice."""
    lines = [line for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if ("Error" in line or "Exception" in line) and not line.lstrip().startswith(("INFO:", "File ")):
            above = [x.strip() for x in lines[max(0, i - 3):i] if x.strip().startswith("File ")]
            return (above[-1] + " -> " if above else "") + line.strip()
    return ""


def _png_base64(size: int = 16) -> str:
    """A small grey-gradient PNG, base64-encoded: a valid image for ``predict``."""
    import base64
    import io

    from PIL import Image

    image = Image.new("L", (size, size))
    image.putdata([(x * 16 + y * 4) % 256 for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def valid_bodies() -> dict[str, dict[str, Any]]:
    """A valid JSON body for operations whose generated bodies almost never pass the server's own checks
    (a job spec, a known data set source, decodable images): the other parts of the request are still
    generated around it."""
    return {
        "POST /v1/jobs": TRAIN_SPEC,
        "POST /v1/datasets": {"name": "fuzz-digits", "source": "digits"},
        "POST /v1/models/{job_id}/predict": {"images": [_png_base64(), {"name": "b.png", "data": _png_base64(8)}]},
    }


def negatable(op: Any) -> bool:
    """Whether schemathesis can make a request to ``op`` that breaks its schema: there is a query,
    cookie or body, a header other than the (fixed) Authorization, or a path parameter with constraints
    (a plain string path parameter accepts every value, so it has no negative form)."""
    headers = [p for p in op.headers if p.name.lower() != "authorization"]
    constrained = [
        p for p in op.path_parameters
        if p.definition.get("schema", {}).get("type") != "string"
        or set(p.definition.get("schema", {})) - {"type", "title", "description"}
    ]
    return bool(len(op.query) or len(op.cookies) or len(op.body) or headers or constrained)


def _passes(op: Any, seeds: dict[str, list[str]], auth: dict[str, str]) -> list[tuple[str, Any]]:
    """(name, strategy) of each pass for ``op``, in order: negative passes first, so that the examples
    they cannot use (nothing to negate) go to the positive passes after them."""
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    pos, neg = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
    names = [p.name for p in op.path_parameters]
    combos: list[dict[str, str]] = [{}]
    if names and all(seeds.get(name) for name in names):
        values = [seeds[name] for name in names]
        combos = [dict(zip(names, combo, strict=True)) for combo in itertools.islice(itertools.product(*values), 6)]

    def seeded(mode: Any, **fixed: Any) -> Any:
        return st.one_of([op.as_strategy(generation_mode=mode, headers=auth, path_parameters=c or None, **fixed)
                          for c in combos])

    passes: list[tuple[str, Any]] = []
    if negatable(op):
        if combos != [{}]:
            passes.append(("negative, seeded ids", seeded(neg)))
        passes.append(("negative", op.as_strategy(generation_mode=neg, headers=auth)))
    body = valid_bodies().get(op.label)
    if body is not None:
        passes.append(("positive, valid body", seeded(pos, body=body, media_type="application/json")))
    if combos != [{}]:
        passes.append(("positive, seeded ids", seeded(pos)))
    passes.append(("positive", op.as_strategy(generation_mode=pos, headers=auth)))
    return passes


@dataclass
class _State:
    report: FuzzReport
    base_url: str
    key: str
    deadline: float
    log_reader: Any
    check_kinds: dict[Any, str]


def _given(strategy: Any, examples: int, seed: int, body: Any) -> Any:
    """A Hypothesis test that calls ``body(case)`` for up to ``examples`` generated cases (no shrinking)."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings

    @hypothesis.seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=strategy)
    def send(case: Any) -> None:
        body(case)

    return send


def _send(state: _State, op: Any, case: Any) -> None:
    """Send one case, count it and run each check on the response; failures are recorded, never raised."""
    report, label = state.report, op.label
    if time.monotonic() > state.deadline:
        report.stopped_early = True
        return
    mark = state.log_reader[0]() if state.log_reader else 0
    report.requests[label] += 1
    try:
        response = case.call(base_url=state.base_url, timeout=REQUEST_TIMEOUT_S)
    except Exception as exc:  # refused / reset / timed out: the server failed this request
        report.server_errors += 1
        _record(report, ("transport", label, type(exc).__name__), FuzzFailure(
            op.method.upper(), op.path, None, "transport", type(exc).__name__, _short(str(exc), 200),
            reproduction(case, state.key), ""))
        return
    report.statuses[label][response.status_code] += 1
    server_error = response.status_code >= 500
    if server_error:
        report.server_errors += 1
    for check, kind in state.check_kinds.items():
        if server_error and kind != "5xx":
            continue  # a 5xx is counted once, as a 5xx, not again as a conformance violation
        try:
            case.validate_response(response, checks=[check])
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a FailureGroup
            for failure in getattr(exc, "exceptions", [exc]):
                if kind != "5xx":
                    report.violations += 1
                title = getattr(failure, "title", type(failure).__name__)
                message = getattr(failure, "message", str(failure))
                detail = message.splitlines()[0] if message else ""
                key = (kind, label, str(response.status_code), title, detail[:120])
                log = ""
                if kind == "5xx" and key not in report.failures and state.log_reader:
                    log = _server_exception(state.log_reader, mark)
                _record(report, key, FuzzFailure(
                    op.method.upper(), op.path, response.status_code, kind, title, _short(message, 600),
                    reproduction(case, state.key), _short(response.text), log))


def _server_exception(log_reader: Any, mark: int, wait_s: float = 2.0) -> str:
    """The exception the server logged after byte ``mark`` of its log (it may log it just after answering)."""
    deadline = time.monotonic() + wait_s
    while True:
        excerpt = _log_excerpt(log_reader[1](mark))
        if excerpt or time.monotonic() > deadline:
            return excerpt
        time.sleep(0.1)


def _generation_error(exc: BaseException) -> str:
    from hypothesis.errors import Unsatisfiable

    if isinstance(exc, Unsatisfiable):
        return ("no case exists in this mode (Hypothesis: Unsatisfiable): nothing to negate, e.g. only path "
                "parameters, which accept any string, or these are fixed to the seeded ids")
    text = str(exc).strip()
    return f"{type(exc).__name__}: {_short(text.splitlines()[0] if text else '', 200)}"


def fuzz(
    base_url: str,
    key: str,
    *,
    per_operation: int = 60,
    seeds: dict[str, list[str]] | None = None,
    seed: int = 0,
    budget_s: float = 300.0,
    log_reader: Any = None,
    progress: bool = False,
) -> FuzzReport:
    """Send generated requests to every operation of ``base_url``'s ``/openapi.json``; see the module doc.

    ``log_reader`` (optional) is ``(size_fn, read_fn)`` over the server log, used to attach the
    server's exception to each 5xx. No request is sent after ``budget_s`` seconds.
    """
    import schemathesis
    from schemathesis import checks

    report = FuzzReport()
    started = time.monotonic()
    deadline = started + budget_s
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=schemathesis.Config(), timeout=30)
    auth = {"Authorization": f"Bearer {key}"}
    state = _State(report, base_url, key, deadline, log_reader, {
        checks.not_a_server_error: "5xx",
        checks.status_code_conformance: "status code",
        checks.response_schema_conformance: "schema",
    })
    operations: list[Any] = []
    for result in schema.get_all_operations():
        try:
            operations.append(result.ok())
        except Exception as exc:  # an operation schemathesis cannot parse: listed, never silently dropped
            report.not_generated.append(f"(unparsable operation): {type(exc).__name__}: {_short(str(exc), 200)}")
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: seeds live until then
    report.operations = [op.label for op in operations]
    seeds = seeds or {}

    for op in operations:
        report.statuses.setdefault(op.label, Counter())
        if not negatable(op):
            report.not_generated.append(f"{op.label} [negative]: not run, nothing to negate (no query, header, "
                                        "cookie or body; path parameters are unconstrained strings)")
        for skipped in op.skipped_parameters:
            report.not_generated.append(f"{op.label}: schemathesis skipped a parameter: {_short(skipped, 200)}")
        passes = _passes(op, seeds, auth)
        for i, (pass_name, strategy) in enumerate(passes):
            # what earlier passes could not use is shared by the passes left
            examples = max(1, (per_operation - report.requests[op.label]) // (len(passes) - i))
            send = _given(strategy, examples, seed, functools.partial(_send, state, op))
            t0 = time.monotonic()
            before = report.requests[op.label]
            try:
                send()
            except (Exception, BaseExceptionGroup) as exc:  # generation failed: listed, with the reason
                report.not_generated.append(f"{op.label} [{pass_name}]: {_generation_error(exc)}")
            else:
                if report.requests[op.label] == before and not report.stopped_early:
                    report.not_generated.append(f"{op.label} [{pass_name}]: no case generated (nothing in this "
                                                "operation is left to vary in this mode)")
            if progress:
                print(f"  {op.label:45s} {pass_name:22s} {report.requests[op.label] - before:4d} requests "
                      f"{time.monotonic() - t0:6.1f} s", flush=True)
    report.seconds = time.monotonic() - started
    return report


def _record(report: FuzzReport, key: tuple[str, ...], failure: FuzzFailure) -> None:
    if key in report.failures:
        report.failures[key].count += 1
    else:
        report.failures[key] = failure


def summary(report: FuzzReport) -> str:
    lines = [
        f"requests sent: {report.total} in {report.seconds:.1f} s over {len(report.operations)} operations"
        + (" (stopped at the time budget)" if report.stopped_early else ""),
        "",
        f"  {'operation':48s} {'requests':>8s}  statuses",
    ]
    for op in report.operations:
        statuses = ", ".join(f"{code}x{n}" for code, n in sorted(report.statuses.get(op, Counter()).items()))
        lines.append(f"  {op:48s} {report.requests[op]:8d}  {statuses}")
    lines += [
        "",
        f"5xx responses (goal 0): {report.server_errors}",
        f"status-code / response-schema violations (goal 0): {report.violations}",
        f"distinct failures: {len(report.failures)}",
    ]
    for i, failure in enumerate(report.failures.values(), 1):
        lines += [
            "",
            f"[{i}] {failure.kind}: {failure.method} {failure.path} -> {failure.status} "
            f"(seen {failure.count}x): {failure.title}",
            f"    check says: {failure.message.strip() or failure.title}".replace("\n", "\n      "),
            f"    request: {failure.reproduction}",
            f"    response: {failure.response}",
        ]
        if failure.server_log:
            lines.append(f"    server log: {failure.server_log}")
    unfuzzed = report.unfuzzed()
    lines += ["", f"operations with no request sent: {', '.join(unfuzzed) if unfuzzed else 'none'}"]
    if report.not_generated:
        lines.append("passes that generated nothing or stopped on a generation error:")
        lines += [f"  {note}" for note in report.not_generated]
    return "\n".join(lines)


def _log_reader(service: Service) -> tuple[Any, Any]:
    def read_from(offset: int) -> str:
        with open(service.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    return service.log_size, read_from


@dataclass
class Run:
    report: FuzzReport
    seeds: dict[str, list[str]]
    setup_s: float


def run(home: Path, *, per_operation: int, seed: int, train: bool, budget_s: float,
        progress: bool = False, database_url: str | None = None) -> Run:
    """Start the service in ``home`` (on ``database_url``, default SQLite), seed it, fuzz it, stop it."""
    t0 = time.monotonic()
    with Service(home, database_url=database_url) as service:
        key = service.create_key("fuzz")
        seeds = seed_objects(service.url, key, start_worker=service.worker if train else None)
        setup_s = time.monotonic() - t0
        report = fuzz(service.url, key, per_operation=per_operation, seeds=seeds, seed=seed, budget_s=budget_s,
                      log_reader=_log_reader(service), progress=progress)
    return Run(report, seeds, setup_s)


def iter_json_failures(report: FuzzReport) -> Iterator[dict[str, Any]]:
    for failure in report.failures.values():
        yield {k: v for k, v in vars(failure).items()}


@contextlib.contextmanager
def scratch_database(admin_url: str | None) -> Iterator[str | None]:
    """A throw-away PostgreSQL database next to ``admin_url``'s (None: no database, SQLite is used)."""
    if not admin_url:
        yield None
        return
    import secrets

    import sqlalchemy as sa

    name = f"midre_fuzz_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-operation", type=int, default=60, help="examples per operation (all passes)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed")
    parser.add_argument("--no-train", action="store_true", help="seed no trained model (faster; serving "
                        "operations then see only a queued job)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="send no request after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the figures and failures to this file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-pass progress lines")
    parser.add_argument("--postgres", metavar="ADMIN_URL", help="run on a fresh PostgreSQL database created (and "
                        "dropped afterwards) through this admin URL, e.g. postgresql+psycopg://postgres@127.0.0.1/test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="midre-fuzz-") as tmp, scratch_database(args.postgres) as url:
        result = run(Path(tmp) / "home", per_operation=args.per_operation, seed=args.seed, train=not args.no_train,
                     budget_s=args.budget_s, progress=not args.quiet, database_url=url)
    report = result.report
    print(f"setup (serve + seed{'' if args.no_train else ' + train'}): {result.setup_s:.1f} s; "
          f"seeded path parameters: {json.dumps(result.seeds)}")
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps({
            "requests": report.total, "per_operation": dict(report.requests), "server_errors": report.server_errors,
            "violations": report.violations, "seconds": report.seconds, "unfuzzed": report.unfuzzed(),
            "not_generated": report.not_generated, "failures": list(iter_json_failures(report)),
        }, indent=2, default=str))
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
