"""What the outbox's channels share: a refused target, the outcome of one try, the target check's shape.

The deliverer in :mod:`services.integrations.webhooks` sends both kinds of outbox row, signed
webhooks and MLflow hand-offs (:mod:`services.integrations.mlflow`), so it imports the hand-off. The
hand-off in turn needs the webhooks' address filter for its tracking URI; it takes that filter as an
argument (a :data:`TargetCheck`) and these shared types from here, instead of importing the webhook
module back, so the two modules do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: ``check(url, allow_private, setting) -> addresses``: resolves the URL's host and returns its addresses, or
#: raises :class:`UnsafeTarget` naming ``setting`` for a private address
#: (:func:`services.integrations.webhooks.check_target`).
TargetCheck = Callable[..., list[str]]


class UnsafeTarget(ValueError):
    """A webhook URL that the service refuses to call (scheme, host, or a non-public address).

    ``private``: the refusal is for a non-public address, which the operator's setting for that channel
    (``MIDRE_WEBHOOKS_ALLOW_PRIVATE``, ``MIDRE_MLFLOW_ALLOW_PRIVATE``) would allow; the message names it.
    """

    def __init__(self, message: str, *, private: bool = False) -> None:
        super().__init__(message)
        self.private = private


def refuse_private(problem: str, setting: str) -> UnsafeTarget:
    """The refusal of a non-public address, naming the setting that allows it."""
    return UnsafeTarget(f"the host resolves to {problem}, not a public address; an operator whose service may "
                        f"call inside its network sets {setting}=true", private=True)


@dataclass(frozen=True)
class Result:
    """One try: the HTTP status (``None`` when no answer came) or the error, and its duration
    (``detail``: what a successful MLflow hand-off logged)."""

    status_code: int | None
    error: str | None
    duration_ms: float
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
