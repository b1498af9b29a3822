"""Keep server paths out of what a client sees: events, job messages, errors, dataset summaries.

A client names ids, never paths, and should never learn one either: the library's messages name
the files they are about (which is right for a library user), so the service rewrites those names
before they leave the server. The most specific folder wins: a file of an uploaded archive becomes
its member path inside the archive; anything else under the service's folders becomes
``<server>/...``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.settings import Settings

SERVER = "<server>"


class Redactor:
    """Replace folders (and everything under them) in text with client-safe names.

    Args:
        replacements: folder -> what a client sees instead (``""`` makes paths under it relative).

    Example:
        >>> r = Redactor({"/srv/midre": "<server>", "/srv/midre/data/ds_1": ""})
        >>> r("cannot decode /srv/midre/data/ds_1/alice/01.png")
        'cannot decode alice/01.png'
        >>> r("report in /srv/midre/data/work/job_1/out")
        'report in <server>/data/work/job_1/out'
    """

    def __init__(self, replacements: Mapping[str | os.PathLike[str], str]) -> None:
        pairs: dict[str, str] = {}
        for folder, name in replacements.items():
            for form in {os.fspath(folder), os.path.realpath(os.fspath(folder))}:
                if form and form != os.sep:
                    pairs[form.rstrip(os.sep)] = name
        self._pairs = sorted(pairs.items(), key=lambda p: len(p[0]), reverse=True)

    def __call__(self, text: str) -> str:
        for folder, name in self._pairs:
            if folder not in text:
                continue
            text = text.replace(folder + os.sep, f"{name}{os.sep}" if name else "")
            text = text.replace(folder, name or ".")
        return text

    def data(self, value: Any) -> Any:
        """The same for every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def server_redactor(settings: Settings, more: Mapping[str | os.PathLike[str], str] | None = None) -> Redactor:
    """The service's folders (``MIDRE_HOME``, the data folder, the operator's dataset folders) as
    ``<server>``, plus ``more`` (more specific folders win)."""
    folders: dict[str | os.PathLike[str], str] = {settings.home: SERVER, settings.storage_dir: f"{SERVER}/data"}
    folders.update({root: f"{SERVER}/datasets" for root in settings.dataset_paths})
    folders.update(more or {})
    return Redactor(folders)
