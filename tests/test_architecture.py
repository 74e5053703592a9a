"""The package's shape, checked: layers, one settings module, the doors to library internals,
the worker's module sizes and no process globals but the allowed ones."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
# The doors: the only modules that touch a library's internals, each entered only
# from its own folder.
CELERY_DOOR = PACKAGE / "worker" / "celery"
AMQP_DOOR = PACKAGE / "broker" / "amqp_door.py"
PROMETHEUS_DOOR = PACKAGE / "observe" / "prometheus_door.py"
DOORS = (CELERY_DOOR, AMQP_DOOR, PROMETHEUS_DOOR)
# Which doors may import a library's internals.
LIBRARY_DOORS: dict[str, tuple[Path, ...]] = {
    "celery": (CELERY_DOOR,),
    "kombu": (CELERY_DOOR,),
    # The celery door reads the consumer's socket through py-amqp's transport.
    "amqp": (CELERY_DOOR, AMQP_DOOR),
    "prometheus_client": (PROMETHEUS_DOOR,),
}
# The libraries' public, documented modules; a name imported from one of them is public
# too. Celery's: the app, tasks, signals and custom control commands. kombu.pidbox is
# kombu's documented mailbox API, which a scraper uses to answer `telemetry stats`. Of
# py-amqp only its exceptions: its top level is the protocol itself, beneath kombu.
PUBLIC_MODULES = {
    "celery",
    "celery.signals",
    "celery.worker.control",
    "kombu",
    "kombu.exceptions",
    "kombu.pidbox",
    "amqp.exceptions",
    "prometheus_client",
    "prometheus_client.exposition",
    "prometheus_client.multiprocess",
    "prometheus_client.parser",
}


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


def inside(path: Path, door: Path) -> bool:
    """Whether module ``path`` is the door ``door`` or in its folder."""
    return path == door or door in path.parents


def is_module(name: str) -> bool:
    """Whether ``name`` is a module (``from kombu import pidbox``), not a name in one."""
    if "." not in name or isinstance(sys.modules.get(name), ModuleType):
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):  # ValueError: a lazy module without a spec
        return False


def is_public(name: str) -> bool:
    """Whether an imported ``name`` of a library is its public API."""
    module = name if is_module(name) else name.rpartition(".")[0]
    return module in PUBLIC_MODULES


def test_only_the_doors_import_library_internals() -> None:
    trespassers = []
    for path in MODULES:
        for line, name in imports(path):
            doors = LIBRARY_DOORS.get(name.split(".")[0])
            if doors is None or any(inside(path, door) for door in doors):
                continue
            if not is_public(name):
                trespassers.append(f"{path.relative_to(PACKAGE)}:{line} {name}")
    assert not trespassers


@pytest.mark.parametrize(
    ("name", "public"),
    [
        ("celery.Celery", True),
        ("celery.signals", True),
        ("celery.worker.control.inspect_command", True),
        ("kombu.Connection", True),
        ("kombu.pidbox", True),
        ("amqp.exceptions.AccessRefused", True),
        ("prometheus_client.Histogram", True),
        ("celery.worker.strategy", False),
        ("celery.worker.consumer.Consumer", False),
        ("kombu.message.Message", False),
        ("amqp", False),
        ("amqp.Message", False),
        ("amqp.transport.TCPTransport", False),
        ("prometheus_client.values", False),
    ],
)
def test_library_internals_are_told_from_the_public_api(name: str, public: bool) -> None:
    assert is_public(name) is public


def foreign_private_attributes(source: str) -> list[str]:
    """Private attributes used on something other than ``self`` or ``cls`` whose name the
    module does not define itself: another library's private parts."""
    tree = ast.parse(source)
    own = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("self", "cls")
    }
    own |= {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    own |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return [
        f"{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in own
    ]


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("histogram._upper_bounds", True),
        ("values.ValueClass._lock", True),
        ("transport._quick_recv = read", True),
        ("self._transport._quick_recv = read", True),
        ("message._state = 'ACK'", True),
        ("self._state = 'ACK'", False),
        ("class Settings:\n    _given = 1\ndef given(s):\n    return s._given", False),
        ("def _helper(): pass\nmodule._helper()", False),
        ("value.__class__", False),
    ],
)
def test_a_private_attribute_of_another_library_is_told_from_our_own(
    source: str, caught: bool
) -> None:
    assert bool(foreign_private_attributes(source)) is caught


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_the_doors_use_private_attributes_of_libraries(path: Path) -> None:
    if any(inside(path, door) for door in DOORS):
        return
    assert not foreign_private_attributes(path.read_text())


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_a_door_is_entered_only_from_its_own_folder(path: Path) -> None:
    wrong = []
    for door in DOORS:
        module = ".".join(door.relative_to(PACKAGE.parent).with_suffix("").parts)
        if door.parent in path.parents:  # the folder the door is in
            continue
        wrong.extend(
            f"line {line}: {name}"
            for line, name in imports(path)
            if name == module or name.startswith(module + ".")
        )
    assert not wrong


@pytest.mark.parametrize("module", ["telemetry.models", "telemetry.dcgm", "telemetry.config"])
def test_the_domain_imports_without_celery(module: str) -> None:
    check = f"import {module}, sys; assert 'celery' not in sys.modules, sorted(sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_celery_app_is_still_found_as_telemetry_app() -> None:
    check = "import telemetry; from celery import Celery; assert isinstance(telemetry.app, Celery)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


WORKER = PACKAGE / "worker"
WORKER_MODULE_MAX_LINES = 300


@pytest.mark.parametrize(
    "path",
    [path for path in MODULES if WORKER in path.parents],
    ids=lambda path: str(path.relative_to(PACKAGE)),
)
def test_no_module_of_the_worker_is_over_300_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= WORKER_MODULE_MAX_LINES, f"{lines} lines: split it by job"


# Process-wide state the worker and observe layers keep on purpose, by module and name.
ALLOWED_PROCESS_GLOBALS = {
    # `celery -A telemetry` finds the app as a module attribute; it is Celery's own object.
    ("worker/app.py", "app"),
    # Celery's signals are process-wide: the app's start and stop hooks connect once.
    ("worker/app.py", "hooks"),
    # A process has one signal wake-up descriptor (signal.set_wakeup_fd).
    ("worker/signal_wakeup.py", "SIGNAL_WAKEUP"),
    # Mirrors prometheus_client's own process-wide choice of value class (multiprocess mode).
    ("observe/metrics.py", "_multiprocess_dir"),
    # os.register_at_fork is process-wide and cannot be undone: register the hook once.
    ("observe/health.py", "_fork_hook_registered"),
}


def immutable(node: ast.ClassDef) -> bool:
    """Whether instances of the class cannot change: a frozen dataclass, named tuple or enum."""
    frozen = any(
        isinstance(decorator, ast.Call)
        and any(
            keyword.arg == "frozen" and getattr(keyword.value, "value", False) is True
            for keyword in decorator.keywords
        )
        for decorator in node.decorator_list
    )
    bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
    return frozen or bool(bases & {"NamedTuple", "Enum", "StrEnum", "IntEnum"})


def stateful_classes(sources: list[str]) -> set[str]:
    """The names of the classes defined in ``sources`` whose instances can change."""
    return {
        node.name
        for source in sources
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef) and not immutable(node)
    }


def process_globals(source: str, stateful: set[str]) -> dict[str, int]:
    """Module-level state of ``source``, by name and line: names a ``global`` statement
    rebinds, names bound more than once at module level, and module-level instances of
    ``stateful`` classes (a process-wide object)."""
    tree = ast.parse(source)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.update(dict.fromkeys(node.names, node.lineno))
    seen: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets = statement.targets
        elif isinstance(statement, ast.AnnAssign | ast.AugAssign):
            targets = [statement.target]
        else:
            continue
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        for name in names:
            if name in seen or isinstance(statement, ast.AugAssign):
                found.setdefault(name, statement.lineno)
            seen.add(name)
        value = statement.value
        if isinstance(value, ast.Call) and ast.unparse(value.func).rpartition(".")[2] in stateful:
            found.update(dict.fromkeys(names, statement.lineno))
    return found


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("_state = None\ndef set_it(value):\n    global _state\n    _state = value", ["_state"]),
        ("current = 1\ncurrent = 2", ["current"]),
        ("count = 0\ncount += 1", ["count"]),
        ("class Registry:\n    pass\nREGISTRY = Registry()", ["REGISTRY"]),
        ("import threading\n_lock = threading.Lock()", []),
        ("LIMIT = 64\ndef use():\n    limit = LIMIT\n    limit = 2", []),
        (
            "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass Outcome:\n"
            "    kind: str\nSTORED = Outcome('stored')",
            [],
        ),
    ],
)
def test_a_process_global_is_told_from_a_constant(source: str, caught: list[str]) -> None:
    assert sorted(process_globals(source, stateful_classes([source]))) == caught


STATEFUL_CLASSES = stateful_classes([path.read_text() for path in MODULES])


@pytest.mark.parametrize(
    "path",
    [path for path in MODULES if {WORKER, PACKAGE / "observe"} & set(path.parents)],
    ids=lambda path: str(path.relative_to(PACKAGE)),
)
def test_the_worker_and_observe_keep_no_process_globals_but_the_allowed_ones(path: Path) -> None:
    module = str(path.relative_to(PACKAGE))
    found = process_globals(path.read_text(), STATEFUL_CLASSES)
    unexpected = [
        f"line {line}: {name}"
        for name, line in found.items()
        if (module, name) not in ALLOWED_PROCESS_GLOBALS
    ]
    # State a worker needs goes in its context (telemetry/worker/context.py), passed down.
    assert not unexpected


def test_every_allowed_process_global_is_still_there() -> None:
    stale = [
        (module, name)
        for module, name in sorted(ALLOWED_PROCESS_GLOBALS)
        if name not in process_globals((PACKAGE / module).read_text(), STATEFUL_CLASSES)
    ]
    assert not stale, "drop these from ALLOWED_PROCESS_GLOBALS"
