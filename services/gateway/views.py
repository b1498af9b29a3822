"""Moved to :mod:`services.ops.views`; re-exported here while modules of the gateway still import it from
here."""

from services.ops.views import artifact_view, dataset_view, event_view, final_metrics, job_view, metrics_of  # noqa: F401
