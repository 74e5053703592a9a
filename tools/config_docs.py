"""Write docs/configuration.md from the settings declaration in telemetry/config.py.

``make config-docs`` runs it; tests/test_settings_declaration.py fails when
the committed page differs from what this prints, so the reference cannot
drift from the code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from telemetry.config import Settings, env_name, file_env_name, flag_name

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting is an environment variable; the commands that take it as a flag
say so, and a flag wins over the variable. An empty variable counts as unset.
A bad value stops the command with one line naming the variable (or flag) and
exit code 2. Secrets (`API_TOKEN`, `FLOWER_BASIC_AUTH`, passwords in URLs) are
never printed.

A variable listed with a `_FILE` twin may instead be given as the path of a
file holding the value, as Docker and Kubernetes mount secrets
(`CELERY_BROKER_URL_FILE=/run/secrets/broker_url`). One trailing newline
(`\\n` or `\\r\\n`) is dropped. Setting both the variable and its `_FILE`, or
naming a file that is missing, unreadable or empty, stops the command with
one line naming the variable and the path, never the content. A flag still
wins over either. See [security.md](security.md#secrets).

This page is generated from `telemetry/config.py` by `make config-docs`;
a test fails when it is out of date.

| variable | default | flag of | meaning |
|---|---|---|---|
"""

FLAG_NAMES = {"worker": "`celery -A telemetry worker`", "stream": "`telemetry stream`"}


def default_text(field: str) -> str:
    """The default as a reader wants to see it."""
    info = Settings.model_fields[field]
    if info.default_factory is not None:
        return "(see meaning)"
    if info.default is None:
        return "unset"
    return f"`{info.default}`"


def render() -> str:
    """The whole page."""
    rows = []
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flags = extra.get("flags") or []
        assert isinstance(flags, list)
        takers = ", ".join(
            FLAG_NAMES.get(str(command), f"`telemetry {command}`") for command in flags
        )
        flag = f"`{flag_name(field)}` ({takers})" if takers else ""
        twin = file_env_name(field)
        variable = f"`{env_name(field)}`" + (f" or `{twin}`" if twin else "")
        rows.append(f"| {variable} | {default_text(field)} | {flag} | {info.description} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> None:
    """Write the page, or with --check say whether it is current (exit 1 if not)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    options = parser.parse_args()
    text = render()
    if options.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        raise SystemExit(0 if current == text else 1)
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
