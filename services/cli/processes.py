"""``midre serve | migrate | worker | admin create-key``: the commands that run next to the database and
the broker, and the helpers that start and stop ``midre`` processes (also used by ``midre demo``, the
tests and the benchmarks).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre serve``, ``midre migrate``, ``midre worker`` and ``midre admin create-key``."""
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


def register_admin(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre admin create-key`` (listed after ``midre demo`` in ``midre --help``)."""
    admin = subparsers.add_parser("admin", help="administration").add_subparsers(dest="admin_command",
                                                                                 metavar="ACTION")
    p = admin.add_parser("create-key", help="create an API key for a tenant (printed once)")
    p.add_argument("--tenant", required=True, help="tenant name (created when new)")
    p.set_defaults(func=cmd_create_key)


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


def die_with_parent() -> None:
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
                subprocess.Popen(worker_command(), start_new_session=True, preexec_fn=die_with_parent, env=env)
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
