"""Moved to :mod:`services.ops.schemas`. Re-exported here only for ``routers/jobs.py`` and
``routers/health.py``, which import it from here still; delete this module once they import the
application layer's."""

from services.ops.schemas import (  # noqa: F401
    EventPage,
    Health,
    JobPage,
    JobPublic,
    JobSpec,
    UnitCounts,
    UnitList,
    UnitPublic,
)
