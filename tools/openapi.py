"""``make openapi``: write the read API's OpenAPI document to ``docs/openapi.json``.

The document is generated from the application itself, so it cannot drift
from the code; ``tests/integration/test_api.py`` fails when the committed
file differs from what this writes. Building the app connects to nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from telemetry.api import create_app
from telemetry.config import load_settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The spec of an app on default settings: no setting changes the document."""
    spec: dict[str, Any] = create_app(load_settings(env={})).openapi()
    return spec


def render(spec: dict[str, Any]) -> str:
    """Stable text: two-space indent, key order as generated, a final newline."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    text = render(openapi_document())
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
