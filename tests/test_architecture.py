"""The package's shape, checked: layers, the one settings module, the one door to Celery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "telemetry"

# Each folder of the package (top-level modules are the domain) and its layer;
# an import may point only to a lower layer or within its own folder.
LAYERS: dict[str, int] = {
    "domain": 0,
    "store": 1,
    "broker": 1,
    # Above the store: the readiness probe pings the database through the storage port.
    "observe": 2,
    "worker": 3,
    "ops": 4,
    "streamer": 4,
    "scraper": 4,
    "api": 5,
    "demo": 6,
    "cli": 7,
    # telemetry/__init__.py: `celery -A telemetry` finds the app there, lazily.
    "entry": 7,
}
DOMAIN_MODULES = {"config", "errors", "models", "dcgm", "exposition", "dcgm_exporter"}
SETTINGS_MODULE = PACKAGE / "config.py"
CELERY_DOOR = PACKAGE / "worker" / "celery_internals.py"
# Celery's public, documented API: the app, tasks, signals and custom control commands.
CELERY_PUBLIC = {"celery", "celery.worker.control"}
# kombu.pidbox is kombu's documented mailbox API, which a scraper uses to answer `telemetry stats`.
KOMBU_PUBLIC = {"kombu", "kombu.exceptions", "kombu.pidbox"}


def room(path: Path) -> str:
    """The folder (layer) a module of the package lives in."""
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return {"cli": "cli", "__init__": "entry"}.get(relative.stem, "domain")


def room_of_module(name: str) -> str | None:
    """The room a ``telemetry.…`` module name points to, or None outside the package."""
    parts = name.split(".")
    if parts[0] != "telemetry":
        return None
    if len(parts) == 1:
        return "entry"
    if parts[1] == "cli":
        return "cli"
    return "domain" if parts[1] in DOMAIN_MODULES else parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (at any depth, lazy imports included), with its line."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from telemetry.worker import runtime` names a module too.
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def test_the_layers_are_the_folders_and_every_folder_has_a_layer() -> None:
    rooms = {room(path) for path in MODULES}
    assert rooms <= set(LAYERS), rooms - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_import_points_from_a_lower_layer_to_a_higher_one(path: Path) -> None:
    here = room(path)
    wrong = []
    for line, name in imports(path):
        there = room_of_module(name)
        if there is None or there == here or there not in LAYERS:
            continue
        if LAYERS[there] >= LAYERS[here]:
            wrong.append(f"line {line}: {name} ({there}, layer {LAYERS[there]})")
    assert not wrong, f"{here} (layer {LAYERS[here]}) imports upward or sideways: {wrong}"


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in MODULES
        if path != SETTINGS_MODULE
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "os.environ" in line or "getenv" in line or "from os import environ" in line
    ]
    assert not readers


def test_only_the_door_touches_celery_and_kombu_internals() -> None:
    trespassers = []
    for path in MODULES:
        if path == CELERY_DOOR:
            continue
        for line, name in imports(path):
            top = name.split(".")[0]
            public = CELERY_PUBLIC if top == "celery" else KOMBU_PUBLIC
            if top in ("celery", "kombu") and not any(
                name == allowed or (name.startswith(allowed + ".") and allowed != top)
                for allowed in public
            ):
                # `from celery import signals` names celery.signals: a public module.
                if (
                    top == "celery"
                    and name.count(".") == 1
                    and name.split(".")[1]
                    in {
                        "Celery",
                        "Task",
                        "signals",
                        "current_task",
                    }
                ):
                    continue
                if top == "kombu" and name.count(".") == 1 and name.split(".")[1][0].isupper():
                    continue  # kombu's public classes: Connection, Queue, Exchange, Producer
                trespassers.append(f"{path.relative_to(PACKAGE)}:{line} {name}")
    assert not trespassers


@pytest.mark.parametrize("module", ["telemetry.models", "telemetry.dcgm", "telemetry.config"])
def test_the_domain_imports_without_celery(module: str) -> None:
    check = f"import {module}, sys; assert 'celery' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_celery_app_is_still_found_as_telemetry_app() -> None:
    check = "import telemetry; from celery import Celery; assert isinstance(telemetry.app, Celery)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
