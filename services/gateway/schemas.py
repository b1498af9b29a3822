"""Moved to :mod:`services.ops.schemas`; re-exported here while modules of the gateway still import it
from here."""

from services.ops.schemas import (  # noqa: F401
    ArtifactList,
    ArtifactPublic,
    DatasetPage,
    DatasetPublic,
    DatasetRef,
    EventPage,
    EventPublic,
    Health,
    JobError,
    JobPage,
    JobPublic,
    JobSpec,
    ModelCard,
    UnitCounts,
    UnitList,
    UnitPublic,
)
