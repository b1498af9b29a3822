"""What every store raises, and the one place that picks a store from the settings."""

from __future__ import annotations

from midre.errors import TransientError


class StoreUnavailable(TransientError):
    """The object store cannot be reached or keeps failing: a unit that meets it is retried, a request
    answers 503 with ``Retry-After``. Nothing stored is lost; the same call later may succeed."""
