"""``midre jobs submit | status | wait | download | cancel | list | events``: jobs over REST."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from services.cli.rest import api_call, client, connection_options, load_json_object, print_list, when

#: Job states, for ``midre jobs list --status`` (services.ops.schemas.JobPublic.status).
JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``midre jobs ACTION``."""
    jobs = subparsers.add_parser("jobs", help="submit and follow jobs over REST").add_subparsers(
        dest="jobs_command", metavar="ACTION"
    )
    common = connection_options()
    p = jobs.add_parser("submit", parents=[common], help="submit a job spec (JSON file, '-' or inline JSON); "
                        "prints the job id alone on the last line")
    p.add_argument("spec", help="path to a JSON spec, '-' for stdin, or the JSON itself")
    p.add_argument("--idempotency-key")
    p.add_argument("--dry-run", action="store_true",
                   help="check the spec and print what it would run and cost; store and queue nothing")
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
    _register_listings(jobs, common)


def _register_listings(jobs: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """``midre jobs list`` and ``midre jobs events``."""
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


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    """Submit a job; prints it as JSON, a line saying what was submitted, then its id alone on the last
    line (``JOB=$(midre jobs submit spec.json | tail -n 1)``)."""
    spec = load_json_object(args.spec, "spec")
    if args.dry_run:
        return _dry_run(args, spec)
    with client(args) as api:
        job = api_call(lambda: api.submit(spec, args.idempotency_key))
    if job is None:
        return 1
    print(json.dumps(job, indent=2))
    print(f"submitted {job['status']} {job['kind']} job:")
    print(job["id"])
    return 0


def _dry_run(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    """Print what the spec would run and cost, then one line with the total."""
    with client(args) as api:
        answer = api_call(lambda: api.dry_run(spec))
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2))
    estimate = answer.get("estimate") or {}
    if "total_seconds" in estimate:
        unit = "GPU-seconds" if estimate.get("gpu_seconds") is not None else "CPU-seconds"
        print(f"dry run: a {answer['kind']} job of about {estimate['total_seconds']:.0f} {unit} on "
              f"{estimate['device']}; nothing stored")
    else:
        print(f"dry run: the {answer['kind']} spec is valid; nothing stored")
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    """Print a job as JSON."""
    with client(args) as api:
        job = api_call(lambda: api.job(args.job_id))
    if job is None:
        return 1
    print(json.dumps(job, indent=2))
    return 0


def follow(api: Any, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Poll a job, drawing ``midre``'s progress bar from its row and its epoch events."""
    from midre.commands.progress_bar import ProgressBar
    from midre.progress import ProgressEvent

    bar = ProgressBar()
    last_event: int | None = None
    epoch_info: dict[str, Any] = {}

    def update(job: dict[str, Any]) -> None:
        nonlocal last_event
        for event in api.events(job_id, after=last_event):
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

    job = api.wait(job_id, timeout=timeout, poll=1.0, on_update=update)
    if job["status"] != "succeeded":
        sys.stderr.write("\n")
    return job


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    """Follow a job to its end; exit 0 only if it succeeded."""
    with client(args) as api:
        job = api_call(lambda: follow(api, args.job_id, args.timeout))
    if job is None:
        return 1
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(f"job {job['id']} {job['status']}: {error.get('message', '')}", file=sys.stderr)
        return 1
    print(f"job {job['id']} succeeded; metrics: {json.dumps(job['metrics'])}")
    with client(args) as api:
        report = api_call(lambda: api.report(args.job_id))
    for line in report_lines(report or {}):
        print(line)
    return 0


def report_lines(report: dict[str, Any]) -> list[str]:
    """What a study's report decided: its recommendation (with caveats) or why there is none, and the
    leakage of the model an audit attacked."""
    lines = []
    rec = report.get("recommendation")
    if rec:
        lines.append(f"recommendation: {rec.get('defense')}: {rec.get('reason', '')}")
        lines += [f"  caveat: {c}" for c in rec.get("caveats") or []]
    elif report.get("recommendation_note"):
        lines.append(f"recommendation: none. {report['recommendation_note']}")
    lines += [f"leakage: {item.get('text')}" for item in report.get("leakage") or [] if "frontier" not in report]
    return lines


def cmd_jobs_download(args: argparse.Namespace) -> int:
    """Download artifacts; prints one path per line."""
    with client(args) as api:
        paths = api_call(lambda: api.download(args.job_id, args.dest, args.name))
    if paths is None:
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel a job."""
    with client(args) as api:
        job = api_call(lambda: api.cancel(args.job_id))
    if job is None:
        return 1
    print(f"job {job['id']} {job['status']}")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """A table of jobs (id, kind, status, progress, stage, created), newest first."""
    with client(args) as api:
        jobs = api_call(lambda: api.jobs(args.status, args.kind, args.limit or None))
    return print_list(jobs, args, "jobs", ["ID", "KIND", "STATUS", "PROGRESS", "STAGE", "CREATED"], lambda j: [
        j["id"], j["kind"], j["status"], f"{100 * float(j['progress']):.0f}%", j.get("stage") or "",
        when(j["created_at"])])


def _event_line(event: dict[str, Any]) -> str:
    stage = f" [{event['stage']}]" if event.get("stage") else ""
    return f"{when(event['created_at'])} #{event['id']} {event['type']}{stage} {event['message']}".rstrip()


def cmd_jobs_events(args: argparse.Namespace) -> int:
    """Print a job's events; ``--follow`` polls for new ones until the job ends."""
    from services.client import TERMINAL

    after: int | None = args.after

    def show() -> dict[str, Any]:
        nonlocal after
        for event in api.events(args.job_id, after=after):
            after = event["id"]
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
        return api.job(args.job_id)

    with client(args) as api:
        job = api_call(show)
        while job is not None and args.follow and job["status"] not in TERMINAL:
            time.sleep(1.0)
            job = api_call(show)
    return 0 if job is not None else 1
