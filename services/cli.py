"""Service commands of the ``midre`` CLI: serve, worker, migrate, demo, admin, jobs, datasets, models, predict.

``midre/cli.py`` finds :func:`register` through the ``midre.commands`` entry point; each parser
sets ``func(args) -> int``. This module imports only the standard library at load time: the
wheel ships ``services/`` with the core, and without the ``service`` extra the commands must
still show in ``midre --help`` and answer with one line that says what to install.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

#: Import names of the ``service`` extra's packages (pyproject ``[project.optional-dependencies]``).
SERVICE_MODULES = (
    "fastapi", "fastapi_offline", "uvicorn", "python_multipart", "pydantic", "pydantic_settings", "sqlalchemy",
    "alembic", "psycopg", "celery", "redis", "httpx", "prometheus_client", "yaml", "standardwebhooks",
)

#: Job states, for ``midre jobs list --status`` (services.gateway.schemas.JobPublic.status).
JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")

#: Environment variables that select production servers; ``midre demo`` removes them so it always
#: runs the self-contained embedded stack.
PRODUCTION_ENV = ("MIDRE_DATABASE_URL", "MIDRE_BROKER_URL", "MIDRE_DATA_DIR")


def missing_service_modules() -> list[str]:
    """The ``service`` extra's modules that are not installed (cheap: nothing is imported)."""
    return [name for name in SERVICE_MODULES if find_spec(name) is None]


def _needs_service_extra(command: str, func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Wrap ``func`` so that, without the ``service`` extra, it prints one line instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        missing = missing_service_modules()
        if missing:
            print(f"midre {command}: needs the 'service' extra (missing: {', '.join(missing)}); "
                  "install it with: pip install 'midre[service]'", file=sys.stderr)
            return 2
        return func(args)

    run.__doc__ = func.__doc__
    return run


def _guard(parser: argparse.ArgumentParser, command: str) -> None:
    """Put :func:`_needs_service_extra` around every ``func`` of ``parser`` and its sub-parsers."""
    func = parser.get_default("func")
    if func is not None:
        parser.set_defaults(func=_needs_service_extra(command, func))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _guard(sub, f"{command} {name}")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the service sub-commands to the ``midre`` parser (each one checks the extra first)."""
    before = set(subparsers.choices)
    _register(subparsers)
    for name, parser in subparsers.choices.items():
        if name not in before:
            _guard(parser, name)


def _register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("serve", help="run the API and a worker (embedded: SQLite + file broker)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="worker processes to start (default 1)")
    p.add_argument("--no-worker", action="store_true", help="start only the API")
    p.add_argument("--role", choices=("all", "api"), default="all",
                   help="all: API + workers; api: a serving/API replica without workers (= --no-worker)")
    p.add_argument("--home", help="data folder (sets MIDRE_HOME; default ~/.midre)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log debug messages, Alembic's migration log included (same as `midre -v serve`)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("migrate", help="apply the database migrations (MIDRE_DATABASE_URL) and exit")
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.set_defaults(func=cmd_migrate)

    p = subparsers.add_parser("worker", help="run a Celery worker that executes jobs")
    p.add_argument("--queues", help="comma-separated: gpu,cpu (default: both if a GPU is present or in "
                   "embedded mode, else cpu)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs run at once (default 1 per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", help="Celery node name (default midre-<pid>@<host>; %%h is the host name)")
    p.add_argument("--ping", action="store_true",
                   help="do not start a worker: exit 0 if the worker named --hostname answers a Celery ping "
                   "(the compose healthcheck)")
    p.add_argument("--ping-timeout", type=float, default=5.0, help="seconds to wait for the ping's reply")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("demo", help="start the embedded service, run a digits job over REST, "
                              "download the checkpoint and report")
    p.add_argument("--home", help="data folder (sets MIDRE_HOME; default ~/.midre)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.set_defaults(func=cmd_demo)

    admin = subparsers.add_parser("admin", help="administration").add_subparsers(dest="admin_command",
                                                                                 metavar="ACTION")
    p = admin.add_parser("create-key", help="create an API key for a tenant (printed once)")
    p.add_argument("--tenant", required=True, help="tenant name (created when new)")
    p.set_defaults(func=cmd_create_key)

    jobs = subparsers.add_parser("jobs", help="submit and follow jobs over REST").add_subparsers(
        dest="jobs_command", metavar="ACTION"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("MIDRE_URL", "http://127.0.0.1:8000"),
                        help="service URL (default $MIDRE_URL or http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=os.environ.get("MIDRE_API_KEY"),
                        help="API key (default $MIDRE_API_KEY)")
    p = jobs.add_parser("submit", parents=[common], help="submit a job spec (JSON file, '-' or inline JSON)")
    p.add_argument("spec", help="path to a JSON spec, '-' for stdin, or the JSON itself")
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_jobs_submit)
    p = jobs.add_parser("status", parents=[common], help="print a job as JSON")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_status)
    p = jobs.add_parser("wait", parents=[common], help="follow a job with a progress bar until it ends")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="seconds")
    p.set_defaults(func=cmd_jobs_wait)
    p = jobs.add_parser("download", parents=[common], help="download a job's artifacts (sha256 checked)")
    p.add_argument("job_id")
    p.add_argument("--dest", default=".", help="folder (default: current folder)")
    p.add_argument("--name", action="append", help="only this artifact (repeatable)")
    p.set_defaults(func=cmd_jobs_download)
    p = jobs.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_cancel)
    p = jobs.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    p.add_argument("--kind", help="only jobs of this kind (train, attack_eval, pipeline, ...)")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("events", parents=[common], help="print a job's events (log, stages, epochs)")
    p.add_argument("job_id")
    p.add_argument("--after", type=int, help="only events after this event id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the job ends")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_jobs_events)

    datasets = subparsers.add_parser("datasets", help="upload and list datasets over REST").add_subparsers(
        dest="datasets_command", metavar="ACTION"
    )
    p = datasets.add_parser("upload", parents=[common],
                            help="upload an ImageFolder archive (.zip/.tar[.gz]); prints the dataset id last")
    p.add_argument("file", help="archive with one folder of images per identity")
    p.add_argument("--name", help="dataset name (default: the file name)")
    p.set_defaults(func=cmd_datasets_upload)
    p = datasets.add_parser("list", parents=[common], help="list datasets, newest first")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print the datasets as JSON")
    p.set_defaults(func=cmd_datasets_list)

    models = subparsers.add_parser("models", help="list, govern and export trained models over REST").add_subparsers(
        dest="models_command", metavar="ACTION"
    )
    p = models.add_parser("list", parents=[common], help="list servable models, newest first")
    p.add_argument("--json", action="store_true", help="print the models as JSON")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("policy", parents=[common],
                          help="show a model's output policy and budget, or change the fields given")
    p.add_argument("model", metavar="MODEL", help="job id of the trained model")
    p.add_argument("--policy", choices=("full", "top-k", "label-only", "rounded"),
                   help="what answers reveal")
    p.add_argument("--top-k", type=int, help="most identities a top-k / rounded answer lists")
    p.add_argument("--decimals", type=int, help="rounding of a rounded answer")
    p.add_argument("--budget", type=_budget, metavar="N|unlimited", default=argparse.SUPPRESS,
                   help="most images one API key may submit ('unlimited' removes the budget)")
    p.add_argument("--reset-usage", action="store_true", help="zero every key's query count")
    p.add_argument("--json", action="store_true", help="print the policy as JSON")
    p.set_defaults(func=cmd_models_policy)
    p = models.add_parser("export", parents=[common], help="download the model as ONNX or TorchScript")
    p.add_argument("model", metavar="MODEL", help="job id of the trained model")
    p.add_argument("--out", required=True, help="file to write (.onnx, or .pt/.ts for TorchScript)")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from the --out extension (.pt/.ts/.torchscript: torchscript; else onnx)")
    p.set_defaults(func=cmd_models_export)

    from services.serving.cli import register as register_serving

    register_serving(subparsers)


# -- serve / worker ------------------------------------------------------------------------------
def _gpu_present() -> bool:
    """A cheap GPU check that does not initialise CUDA in the parent of forked workers."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def worker_command(concurrency: int = 1) -> list[str]:
    """The command line of a worker process (same interpreter, same environment)."""
    return [sys.executable, "-m", "midre.cli", "worker", "--concurrency", str(concurrency)]


def worker_env(workers: int) -> dict[str, str]:
    """The environment of ``midre serve``'s worker processes: unless ``MIDRE_WORKER_THREADS`` is set,
    each gets the machine's cores divided by ``workers`` (at least 1), so N workers on one machine
    do not oversubscribe it."""
    env = dict(os.environ)
    if not env.get("MIDRE_WORKER_THREADS"):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        env["MIDRE_WORKER_THREADS"] = str(max(1, cores // max(workers, 1)))
    return env


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux), so no worker is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session; Celery's warm shutdown),
    SIGKILL it after ``grace``. Also used by the tests and benchmarks that start ``midre`` processes."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def cmd_serve(args: argparse.Namespace) -> int:
    """API (uvicorn, in this process) + worker processes; one data folder in embedded mode."""
    import uvicorn

    from services.db.migrate import upgrade
    from services.gateway.app import create_app
    from services.settings import Settings

    if args.home:
        os.environ["MIDRE_HOME"] = str(Path(args.home).expanduser().resolve())
    settings = Settings()
    settings.ensure_dirs()
    upgrade(settings.db_url)
    mode = "embedded (SQLite + file-system broker)" if settings.embedded else "production"
    print(f"midre serve: {mode}; data in {settings.storage_dir}", file=sys.stderr)
    workers: list[subprocess.Popen[bytes]] = []
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; turning it into SystemExit
    # lets the `finally` below stop the workers and the command exit 0.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not args.no_worker and args.role != "api":
        env = worker_env(max(args.workers, 1))
        for _ in range(max(args.workers, 0)):
            workers.append(
                subprocess.Popen(worker_command(), start_new_session=True, preexec_fn=_die_with_parent, env=env)
            )
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info",
                    timeout_graceful_shutdown=5)
    except SystemExit:
        pass
    finally:
        for proc in workers:
            stop_group(proc)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the migrations and exit: compose's one-shot ``migrate`` service runs this before the
    API and the workers start, so no replica migrates concurrently with another."""
    from services.db.migrate import upgrade
    from services.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    upgrade(settings.db_url, args.revision)
    print(f"midre migrate: database at revision {args.revision}", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker (blocks), or with ``--ping`` check that one is alive."""
    if args.ping:
        return ping_worker(args.hostname, args.ping_timeout)
    from services.worker import app as worker_app
    from services.worker.app import celery_app, settings

    worker_app.threads_per_process = worker_app.worker_threads(settings, args.concurrency)
    if args.queues:
        logical = [q.strip() for q in args.queues.split(",") if q.strip()]
    elif settings.embedded or _gpu_present():
        logical = ["gpu", "cpu"]
    else:
        logical = ["cpu"]
    bad = [q for q in logical if q not in ("gpu", "cpu")]
    if bad:
        raise ValueError(f"--queues: unknown queue {bad[0]!r}; use gpu and/or cpu")
    queues = ",".join(settings.queue_name(q) for q in logical)  # type: ignore[arg-type]
    argv = [
        "worker",
        f"--loglevel={args.loglevel}",
        f"--queues={queues}",
        f"--concurrency={args.concurrency}",
        "--pool=prefork",
        f"--hostname={args.hostname or f'midre-{os.getpid()}@%h'}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    _preload()
    celery_app.worker_main(argv)
    return 0


def ping_worker(hostname: str | None, timeout: float) -> int:
    """Exit status 0 if the Celery node ``hostname`` answers a ping over the broker.

    A worker's process can be up while its consumer is stuck (lost broker connection, a wedged
    pool); a ping goes through the broker and the worker's control loop, so it checks what a job
    needs. Only the broker is touched: no torch import, no database.
    """
    from celery.utils.nodenames import host_format

    from services.queue.celery_app import make_celery
    from services.settings import Settings

    if not hostname:
        raise ValueError("--ping needs --hostname (the node name the worker was started with)")
    settings = Settings()
    if settings.embedded:
        raise ValueError("--ping needs a production broker (MIDRE_BROKER_URL); the embedded broker has no "
                         "remote control")
    node = host_format(hostname)
    app = make_celery(settings)
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    finally:
        app.close()
    if any(node in reply for reply in replies):
        print(f"{node}: pong")
        return 0
    print(f"{node}: no reply within {timeout:g}s", file=sys.stderr)
    return 1


def _preload() -> None:
    """Import torch and the trainer once in the worker's main process.

    Pool children are forked from it, so each job (and each child recycled by
    ``max_tasks_per_child``) starts without paying the imports again. Importing torch does not
    initialise CUDA, so forking afterwards is safe.
    """
    import importlib

    for name in ("midre.train", "midre.data", "midre.study", "sklearn.datasets"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


# -- admin -------------------------------------------------------------------------------------
def cmd_create_key(args: argparse.Namespace) -> int:
    """Create a tenant's API key; the key is the last word of the last line printed."""
    from services.db.keys import create_api_key
    from services.db.migrate import upgrade
    from services.db.session import session_scope
    from services.settings import Settings

    settings = Settings()
    settings.ensure_dirs()
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        key = create_api_key(session, args.tenant)
    print(f"Created an API key for tenant {args.tenant!r}; it is shown only once.")
    print(f"api key: {key}")
    return 0


# -- jobs --------------------------------------------------------------------------------------
def _quiet_http_logs() -> None:
    """One log line per poll would drown the progress bar; keep httpx's to warnings."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)


def _client(args: argparse.Namespace) -> Any:
    from services.client import Client

    _quiet_http_logs()
    return Client(args.url, args.api_key)


def _load_spec(text: str) -> dict[str, Any]:
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip().startswith("{"):
        raw = text
    else:
        raw = Path(text).read_text()
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"spec: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise ValueError("spec: must be a JSON object")
    return spec


def problem_line(exc: Any) -> str:
    """One line for an error answer: status, title, stable code, detail, and the field errors the detail left out.

    The gateway's validation detail already lists the first field errors ("spec.x: bad"), so they are
    added only when the detail does not contain them: each message is printed once.
    """
    problem = exc.problem
    title = problem.get("title") or "error"
    code = problem.get("code")
    detail = problem.get("detail") or ""
    text = f"{exc.status} {title}" + (f" ({code})" if code else "")
    if detail and detail != title:
        text += f": {detail}"
    extra = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors", [])
             if f"{e.get('field')}: {e.get('message')}" not in detail]
    return text + ("; " + "; ".join(extra) if extra else "")


def _api_call(fn: Any) -> Any:
    """Run ``fn``; an error answer or an unreachable service becomes one line on stderr and ``None``.

    Callers turn ``None`` into exit status 1. No traceback: the user can act on the line (start the
    service, fix the URL or key, fix the field).
    """
    from services.client import ApiError, ServiceUnreachable

    try:
        return fn()
    except ApiError as exc:
        print(f"error: {problem_line(exc)}", file=sys.stderr)
    except ServiceUnreachable as exc:
        print(f"error: {exc}; start it with `midre serve` (or set --url / MIDRE_URL)", file=sys.stderr)
    return None


def _budget(text: str) -> int | None:
    """``--budget``: a count of images, or ``unlimited`` / ``none`` for no budget."""
    if text.lower() in ("unlimited", "none"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'unlimited'")
    return value


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    """Submit a job; prints it as JSON, then its id as the last word of the last line."""
    spec = _load_spec(args.spec)
    with _client(args) as client:
        job = _api_call(lambda: client.submit(spec, args.idempotency_key))
    if job is None:
        return 1
    print(json.dumps(job, indent=2))
    print(f"submitted {job['status']} job {job['id']}")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """Print a job as JSON."""
    with _client(args) as client:
        job = _api_call(lambda: client.job(args.job_id))
    if job is None:
        return 1
    print(json.dumps(job, indent=2))
    return 0


def follow(client: Any, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Poll a job, drawing ``midre``'s progress bar from its row and its epoch events."""
    from midre.commands.progress_bar import ProgressBar
    from midre.progress import ProgressEvent

    bar = ProgressBar()
    last_event: int | None = None
    epoch_info: dict[str, Any] = {}

    def update(job: dict[str, Any]) -> None:
        nonlocal last_event
        for event in client.events(job_id, after=last_event):
            last_event = event["id"]
            if event["data"].get("epoch") is not None:
                epoch_info.update(epoch=event["data"]["epoch"], epochs=event["data"].get("epochs"))
        fraction = 1.0 if job["status"] == "succeeded" else float(job["progress"])
        stage = job["stage"] or job["status"]
        if job["status"] in ("failed", "cancelled", "cancelling"):
            stage = job["status"]
        training = stage in ("train", "epoch")
        bar(ProgressEvent(stage=stage, fraction=fraction, message=job.get("message") or "",
                          epoch=epoch_info.get("epoch") if training else None,
                          epochs=epoch_info.get("epochs") if training else None))

    job = client.wait(job_id, timeout=timeout, poll=1.0, on_update=update)
    if job["status"] != "succeeded":
        sys.stderr.write("\n")
    return job


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    """Follow a job to its end; exit 0 only if it succeeded."""
    with _client(args) as client:
        job = _api_call(lambda: follow(client, args.job_id, args.timeout))
    if job is None:
        return 1
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
        return 1
    print(f"job {job['id']} succeeded; metrics: {json.dumps(job['metrics'])}")
    return 0


def cmd_jobs_download(args: argparse.Namespace) -> int:
    """Download artifacts; prints one path per line."""
    with _client(args) as client:
        paths = _api_call(lambda: client.download(args.job_id, args.dest, args.name))
    if paths is None:
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel a job."""
    with _client(args) as client:
        job = _api_call(lambda: client.cancel(args.job_id))
    if job is None:
        return 1
    print(f"job {job['id']} {job['status']}")
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns, two spaces apart (no third-party table library in the CLI)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _when(stamp: str | None) -> str:
    """``2026-11-30T11:07:00.123+00:00`` -> ``2026-11-30 11:07:00`` (UTC, seconds)."""
    return (stamp or "").replace("T", " ")[:19]


def _print_list(items: list[dict[str, Any]] | None, args: argparse.Namespace, what: str,
                headers: list[str], row: Callable[[dict[str, Any]], list[str]]) -> int:
    """The shared tail of the ``list`` commands: exit 1 after an error already printed, JSON with
    ``--json``, a line when there is nothing, else a table of ``row(item)``."""
    if items is None:
        return 1
    if args.json:
        print(json.dumps(items, indent=2))
    elif not items:
        print(f"no {what}")
    else:
        print(_table([row(item) for item in items], headers))
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """A table of jobs (id, kind, status, progress, stage, created), newest first."""
    with _client(args) as client:
        jobs = _api_call(lambda: client.jobs(args.status, args.kind, args.limit or None))
    return _print_list(jobs, args, "jobs", ["ID", "KIND", "STATUS", "PROGRESS", "STAGE", "CREATED"], lambda j: [
        j["id"], j["kind"], j["status"], f"{100 * float(j['progress']):.0f}%", j.get("stage") or "",
        _when(j["created_at"])])


def _event_line(event: dict[str, Any]) -> str:
    stage = f" [{event['stage']}]" if event.get("stage") else ""
    return f"{_when(event['created_at'])} #{event['id']} {event['type']}{stage} {event['message']}".rstrip()


def cmd_jobs_events(args: argparse.Namespace) -> int:
    """Print a job's events; ``--follow`` polls for new ones until the job ends."""
    from services.client import TERMINAL

    after: int | None = args.after

    def show() -> dict[str, Any]:
        nonlocal after
        for event in client.events(args.job_id, after=after):
            after = event["id"]
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
        return client.job(args.job_id)

    with _client(args) as client:
        job = _api_call(show)
        while job is not None and args.follow and job["status"] not in TERMINAL:
            time.sleep(1.0)
            job = _api_call(show)
    return 0 if job is not None else 1


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    """Upload an archive; prints its validation summary, then its id as the last word."""
    if not os.path.isfile(args.file):
        raise FileNotFoundError(f"no such file: {args.file}")
    with _client(args) as client:
        dataset = _api_call(lambda: client.upload_dataset(args.file, args.name))
    if dataset is None:
        return 1
    summary = dataset.get("summary") or {}
    print(json.dumps(summary, indent=2))
    print(f"uploaded dataset {dataset['name']!r} ({summary.get('identities', '?')} identities, "
          f"{summary.get('images', '?')} images): {dataset['id']}")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    """A table of datasets (id, name, source, identities, images, size, created)."""
    with _client(args) as client:
        datasets = _api_call(lambda: client.datasets(args.limit or None))
    headers = ["ID", "NAME", "SOURCE", "IDENTITIES", "IMAGES", "SIZE", "CREATED"]
    return _print_list(datasets, args, "datasets", headers, lambda d: [
        d["id"], d["name"], d["source_type"], str((d.get("summary") or {}).get("identities", "")),
        str((d.get("summary") or {}).get("images", "")),
        "" if d.get("size_bytes") is None else f"{d['size_bytes'] / 1e6:.1f} MB", _when(d["created_at"])])


def cmd_models_list(args: argparse.Namespace) -> int:
    """A table of servable models (job id, arch, classes, defense, policy, budget, Acc)."""
    with _client(args) as client:
        models = _api_call(client.models)

    def row(m: dict[str, Any]) -> list[str]:
        defense = (m.get("defense") or {}).get("name", "") if isinstance(m.get("defense"), dict) else ""
        acc = m.get("metrics", {}).get("acc")
        return [m["job_id"], m["kind"], m.get("arch") or "", str(m.get("num_classes") or ""), defense,
                m["policy"]["name"], "unlimited" if m.get("budget") is None else str(m["budget"]),
                "" if acc is None else f"{acc:.1f}", _when(m["created_at"])]

    headers = ["MODEL", "KIND", "ARCH", "CLASSES", "DEFENSE", "POLICY", "BUDGET", "ACC %", "CREATED"]
    return _print_list(models, args, "models", headers, row)


def _policy_text(view: dict[str, Any]) -> str:
    lines = [f"model {view['job_id']}: policy {view['policy']}"
             + (f", top_k {view['top_k']}" if view.get("top_k") is not None else "")
             + (f", decimals {view['decimals']}" if view.get("decimals") is not None else "")
             + f", budget {'unlimited' if view.get('budget') is None else view['budget']}"]
    for usage in view.get("usage") or []:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in usage.items()))
    return "\n".join(lines)


def cmd_models_policy(args: argparse.Namespace) -> int:
    """Show the policy, or ``PATCH`` only the options given (the rest keep their values)."""
    changes: dict[str, Any] = {}
    for field in ("policy", "top_k", "decimals"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    if "budget" in vars(args):  # given (SUPPRESS default): a count, or None for unlimited
        changes["budget"] = args.budget
    if args.reset_usage:
        changes["reset_usage"] = True
    with _client(args) as client:
        view = _api_call(lambda: client.update_policy(args.model, **changes) if changes else client.policy(args.model))
    if view is None:
        return 1
    print(json.dumps(view, indent=2) if args.json else _policy_text(view))
    return 0


def _export_format(out: str, given: str | None) -> str:
    if given:
        return given
    return "torchscript" if Path(out).suffix.lower() in (".pt", ".ts", ".torchscript", ".pth") else "onnx"


def cmd_models_export(args: argparse.Namespace) -> int:
    """Download the exported model to ``--out``; prints its path."""
    fmt = _export_format(args.out, args.format)
    Path(args.out).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        path = _api_call(lambda: client.export(args.model, args.out, fmt))
    if path is None:
        return 1
    print(f"exported model {args.model} as {fmt} ({path.stat().st_size / 1e6:.1f} MB): {path}")
    return 0


# -- demo --------------------------------------------------------------------------------------
def demo_spec(epochs: int) -> dict[str, Any]:
    """The demo's job: a ``pipeline`` study.

    It runs on the built-in ``digits`` data with the small CNN at 32x32 (600 images), sized so the
    demo finishes in a couple of minutes on two CPU cores: NoDef vs MIDRE (a_h 0.4), one seed,
    MI-Face and DeepInversion with short budgets, a ResNet-18 evaluation model trained for 2
    epochs. The numbers show the mechanics, not the paper's effect sizes (see docs/attacks.md).
    """
    common: dict[str, Any] = {
        "dataset": "digits",
        "arch": "cnn-small",
        "defense": {"name": "midre", "a_h": 0.4},
        "training": {"epochs": epochs, "image_size": 32, "batch_size": 64, "seed": 0},
        "data": {"channels": 1, "max_images_per_identity": 60},
        "device": "auto",
    }
    return {
        "kind": "pipeline",
        **common,
        "attacks": ["mi-face", "deepinversion"],
        "evaluation": {"arch": "resnet18", "epochs": 2, "per_identity": 1},
        "attack_budgets": {"mi-face": {"steps": 60}, "deepinversion": {"steps": 60}},
    }


def _metric_lines(metrics: dict[str, float]) -> list[str]:
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
        text = f"{attack:>14} vs {defense:<14} Acc {values.get('acc', float('nan')):6.2f}%  " \
               f"AttAcc top-1 {values.get('attacc_top1', float('nan')):6.2f}%"
        if "tradeoff_delta" in values:
            text += f"  Δ {values['tradeoff_delta']:.2f}"
        lines.append(text)
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Start the embedded service, run one digits job over REST, download its results, stop."""
    from services.client import Client
    from services.db.keys import create_api_key
    from services.db.session import session_scope
    from services.settings import Settings

    _quiet_http_logs()
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION_ENV}
    if args.home:
        env["MIDRE_HOME"] = str(Path(args.home).expanduser().resolve())
    for key in PRODUCTION_ENV:
        os.environ.pop(key, None)
    if "MIDRE_HOME" in env:
        os.environ["MIDRE_HOME"] = env["MIDRE_HOME"]
    settings = Settings()
    settings.ensure_dirs()
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"[1/5] starting the embedded service on {url} (data in {settings.home}; log in "
          f"{log_dir / 'demo-serve.log'})")
    with open(log_dir / "demo-serve.log", "ab") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "midre.cli", "serve", "--port", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_ready(url, server, timeout=120)
        with session_scope(settings.db_url) as session:
            key = create_api_key(session, "demo")
        print("[2/5] created an API key for tenant 'demo'")
        spec = demo_spec(args.epochs)
        with Client(url, key) as client:
            job = client.submit(spec)
            print(f"[3/5] submitted a {spec['kind']} job {job['id']} "
                  f"({spec['arch']}, {spec['defense']['name']} a_h={spec['defense']['a_h']}, digits)")
            job = follow(client, job["id"], timeout=args.timeout)
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
                return 1
            dest = settings.home / "demo" / job["id"]
            paths = client.download(job["id"], dest)
            print(f"[4/5] downloaded {len(paths)} artifacts (sha256 verified) to {dest}")
            card = client.model_card(job["id"])
            checkpoint = dest / card["checkpoint"]["name"] if card.get("checkpoint") else None
            names = {p.relative_to(dest).as_posix(): p for p in paths}
            report = names.get("report.html") or names.get("report.json") or names.get("model.json")
            print(f"      model: {card['arch']}, {card['num_classes']} classes, defense {card['defense']}")
            for line in _metric_lines(job["metrics"]):
                print(f"      {line}")
            if checkpoint:
                print(f"      checkpoint: {checkpoint}")
            if report:
                print(f"      report: {report}")
        print("[5/5] stopping the service")
    finally:
        stop_group(server, grace=15)
    print(f"done: results in {dest}")
    return 0
