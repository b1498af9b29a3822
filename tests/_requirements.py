"""What some tests need from the machine, and what happens when it is missing.

Two kinds of test need more than ``uv sync``: the ones that read the real face data sets
(``../shared/datasets`` next to the checkout, or ``$MIDRE_SHARED_DATASETS``) and the ones that talk
to the local PostgreSQL / Redis / RabbitMQ servers (``$MIDRE_TEST_PG_ADMIN``, ``$MIDRE_TEST_REDIS``,
``$MIDRE_TEST_AMQP``). On a machine without them those tests are skipped with one line that says how
to enable them, so ``uv run pytest`` passes on a fresh clone. Where they must be present (CI sets
``MIDRE_REQUIRE_FACES=1`` and ``MIDRE_REQUIRE_SERVERS=1``), a missing one fails the test instead.

The dashboard's browser tests drive Debian's Chromium (``/usr/bin/chromium``) through Playwright; without
it they are skipped, and with ``MIDRE_REQUIRE_BROWSER=1`` (CI installs the package and sets it) they fail.

Every fixture that needs faces, a server or the browser decides through :func:`need_faces` /
:func:`need_server` / :func:`need_browser`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]

REQUIRE_FACES = "MIDRE_REQUIRE_FACES"
REQUIRE_SERVERS = "MIDRE_REQUIRE_SERVERS"

#: The real face data sets the tests use, each an ImageFolder-style folder (one sub-folder per identity).
FACE_DATASETS = ("att_faces", "extended_yale_b_cropped", "yalefaces")


def required(variable: str) -> bool:
    """True when ``$variable`` is set to something other than empty, ``0``, ``false`` or ``no``."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str, variable: str) -> NoReturn:
    """Skip the test (``what`` is missing), or fail it when ``$variable`` requires it."""
    if required(variable):
        pytest.fail(f"{what}; it is required because {variable} is set", pytrace=False)
    pytest.skip(f"{what}; set {variable}=1 to make this an error")


def shared_datasets_dir() -> Path:
    """``../shared/datasets`` next to the checkout, or ``$MIDRE_SHARED_DATASETS``."""
    env = os.environ.get("MIDRE_SHARED_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def need_faces(*names: str) -> Path:
    """The folder holding the face data sets ``names`` (default: ``att_faces``); skips or fails without them."""
    root = shared_datasets_dir()
    absent = [name for name in names or ("att_faces",) if not (root / name).is_dir()]
    if absent:
        folders = ", ".join(str(root / name) for name in absent)
        missing(f"needs the face data sets {folders} (in ../shared/datasets, or set MIDRE_SHARED_DATASETS)",
                REQUIRE_FACES)
    return root.resolve()


def server_up(url: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections at the host and port of ``url``."""
    parsed = urlparse(url.replace("+psycopg", ""))
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=timeout):
            return True
    except OSError:
        return False


def need_server(name: str, url: str, variable: str) -> None:
    """Skip (or fail) unless server ``name`` listens at ``url``; ``variable`` is the env var that sets the URL."""
    if not server_up(url):
        missing(f"needs {name} at {url} (set {variable} to point elsewhere)", REQUIRE_SERVERS)


REQUIRE_BROWSER = "MIDRE_REQUIRE_BROWSER"
#: Debian's ``chromium`` package (``apt-get install -y chromium``); the browser tests never download one.
CHROMIUM = Path(os.environ.get("MIDRE_CHROMIUM", "/usr/bin/chromium"))


def need_browser() -> Path:
    """The Chromium executable the browser tests drive; skips (or fails under ``MIDRE_REQUIRE_BROWSER=1``)
    when it or the Playwright client is missing."""
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        missing(f"needs Chromium at {CHROMIUM} (`apt-get install -y chromium`, or set MIDRE_CHROMIUM)", REQUIRE_BROWSER)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("needs the Playwright client (`uv sync` installs it with the dev group)", REQUIRE_BROWSER)
    return CHROMIUM
