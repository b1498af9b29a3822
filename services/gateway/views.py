"""Moved to :mod:`services.ops.views`. Re-exported here only for ``routers/jobs.py``, which imports it
from here still; delete this module once it imports the application layer's."""

from services.ops.views import event_view, job_view, metrics_of  # noqa: F401
