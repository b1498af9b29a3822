"""``/metrics`` for serving: the DB's query accounting, read at scrape time (all replicas' counts)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.models import ModelUsage


class UsageCollector(Collector):
    """``midre_model_queries{job_id,key_id}`` and ``midre_model_queries_rejected{job_id,key_id}``."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queries = GaugeMetricFamily(
            "midre_model_queries", "Images each API key submitted to each served model", labels=["job_id", "key_id"]
        )
        rejected = GaugeMetricFamily(
            "midre_model_queries_rejected",
            "Predict requests refused (429) because the key spent the model's budget",
            labels=["job_id", "key_id"],
        )
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
