"""Print the API's OpenAPI document as YAML: ``uv run python -m services.gateway.openapi > api_spec/openapi.yaml``.

The committed ``api_spec/openapi.yaml`` is checked against this output by a test, so the spec and
the code cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from services.gateway.app import create_app
from services.settings import Settings

SPEC_PATH = Path(__file__).resolve().parents[2] / "api_spec" / "openapi.yaml"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (independent of the environment's settings)."""
    app = create_app(Settings(home=Path("/nonexistent/midre"), auto_migrate=False))
    return app.openapi()


def render() -> str:
    """The YAML text of the document (stable key order, no line wrapping)."""
    return yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True, width=1000)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
