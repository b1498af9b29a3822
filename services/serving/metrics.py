"""``/metrics`` for serving: the DB's query accounting, read at scrape time (all replicas' counts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.models import ModelUsage


class UsageCollector(Collector):
    """``midre_model_queries{job_id,key_id}`` and ``midre_model_queries_rejected{job_id,key_id}``.

    ``before`` runs first (writes this process's counted queries, so the scrape sees them).
    """

    def __init__(self, sessions: sessionmaker[Session], before: Callable[[], None] | None = None) -> None:
        self.sessions = sessions
        self.before = before

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queries = GaugeMetricFamily(
            "midre_model_queries", "Images each API key submitted to each served model", labels=["job_id", "key_id"]
        )
        rejected = GaugeMetricFamily(
            "midre_model_queries_rejected",
            "Predict requests refused (429) because the key spent the model's budget",
            labels=["job_id", "key_id"],
        )
        if self.before is not None:
            try:
                self.before()
            except Exception:  # noqa: BLE001 - the counts stay pending; report what the DB has
                pass
        try:
            with self.sessions() as session:
                rows = session.execute(
                    select(ModelUsage.job_id, ModelUsage.key_id, ModelUsage.queries, ModelUsage.rejected)
                ).all()
            for job_id, key_id, count, refused in rows:
                queries.add_metric([job_id, key_id], float(count))
                rejected.add_metric([job_id, key_id], float(refused))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blinked
            pass
        yield queries
        yield rejected
