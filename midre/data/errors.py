"""Errors and small records shared by the data loaders."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from midre.errors import ConfigError


class DatasetError(ConfigError):
    """A data set, archive or `DatasetSpec` field that cannot be used (a :class:`ConfigError` when
    ``field`` is set).

    The message always names the offending file (as a path or archive member) or spec field, so a
    service can show it to the user verbatim. The same name is kept on the exception for callers that
    want to map it to a structured error (e.g. an RFC 9457 problem's ``instance``/``field``).

    Attributes:
        path: The offending file, folder or archive member, when the error is about one.
        field: The offending `DatasetSpec` field or function argument, when the error is about one.
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        ValueError.__init__(self, message)  # the message already names the file or field
        self.message = message
        self.path = path
        self.field = field  # type: ignore[assignment]


@dataclass(frozen=True)
class RejectedFile:
    """A file that was skipped (not loaded, not extracted) and why.

    Attributes:
        path: The file's path, or ``"<archive>!<member>"`` for an archive member.
        reason: A short human-readable reason, e.g. ``"not an image file (.md)"``.
    """

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Return a JSON-ready ``{"path": ..., "reason": ...}`` dict."""
        return asdict(self)
