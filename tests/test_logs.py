"""Log lines: the JSON and text formats, and which one a process picks."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from telemetry.cli import main
from telemetry.config import load_settings
from telemetry.errors import ConfigError
from telemetry.observe.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    current_format,
    resolve_format,
)
from telemetry.observe.stats import COUNTERS, Stats, StatsReporter


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def record(**extra: object) -> logging.LogRecord:
    """A warning "stored 3 points" as ``logging`` would make it, with ``extra`` fields."""
    return logging.getLogger("telemetry.test").makeRecord(
        "telemetry.test", logging.WARNING, __file__, 1, "stored %d points", (3,), None, extra=extra
    )


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger and the statistics logger back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stats_level = logging.getLogger("telemetry.stats").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("telemetry.stats").setLevel(stats_level)


def test_json_line_has_utc_time_level_logger_message_and_instance() -> None:
    line = json.loads(JsonFormatter("collector-1").format(record()))
    assert list(line)[:5] == ["ts", "level", "logger", "message", "instance_id"]
    assert line["ts"].endswith("Z")
    stamp = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "telemetry.test",
        "stored 3 points",
    )
    assert line["instance_id"] == "collector-1"


def test_json_line_carries_extra_fields_and_never_lets_them_replace_the_base_ones() -> None:
    formatter = JsonFormatter("collector-1")
    line = json.loads(formatter.format(record(component="collector", retries=2, ts="forged")))
    assert (line["component"], line["retries"]) == ("collector", 2)
    assert line["ts"] != "forged"


def test_json_line_holds_the_traceback_and_survives_fields_json_cannot_hold() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failing = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info(), extra={"at": object()}
        )
    line = json.loads(JsonFormatter("c1").format(failing))
    assert "Traceback" in line["exception"] and "ValueError: boom" in line["exception"]
    assert line["at"].startswith("<object object")
    assert "\n" not in JsonFormatter("c1").format(failing)


def test_json_line_adds_the_context_fields() -> None:
    formatter = JsonFormatter("c1", context=lambda: {"task_id": "abc"})
    assert json.loads(formatter.format(record()))["task_id"] == "abc"


def test_text_line_names_the_instance_and_puts_extra_fields_after_the_message() -> None:
    line = TextFormatter("collector-1").format(record(retries=2, instance_id="collector-1"))
    assert " WARNING telemetry.test [collector-1]: stored 3 points retries=2" in line
    assert line.count("collector-1") == 1


@pytest.mark.parametrize(
    ("wanted", "stream", "chosen"),
    [
        ("auto", Terminal(), "text"),
        ("auto", io.StringIO(), "json"),
        ("auto", None, "json"),
        ("json", Terminal(), "json"),
        ("text", io.StringIO(), "text"),
    ],
)
def test_auto_is_text_on_a_terminal_and_json_elsewhere(
    wanted: str, stream: io.StringIO | None, chosen: str
) -> None:
    assert resolve_format(wanted, stream) == chosen  # type: ignore[arg-type]


def test_configure_logging_replaces_its_handler_and_always_shows_statistics(
    root_logging: None,
) -> None:
    # given: configured twice, the second time at WARNING onto a pipe
    configure_logging("first", "auto", logging.INFO, stream=Terminal())
    pipe = io.StringIO()
    chosen = configure_logging("second", "auto", logging.WARNING, stream=pipe)
    # when
    logging.getLogger("telemetry.worker").info("not shown")
    logging.getLogger("telemetry.worker").warning("shown")
    StatsReporter(Stats(), "second", interval_s=60).stop()
    # then
    assert chosen == current_format() == "json"
    lines = [json.loads(line) for line in pipe.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["shown", "Collector statistics"]
    assert {line["instance_id"] for line in lines} == {"second"}
    assert set(COUNTERS) <= set(lines[1]) and lines[1]["component"] == "collector"


def test_log_format_is_a_setting_with_three_values() -> None:
    assert load_settings(env={}).log_format == "auto"
    assert load_settings(env={"LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(ConfigError, match=r"^invalid LOG_FORMAT='xml'"):
        load_settings(env={"LOG_FORMAT": "xml"})


def test_a_failing_command_says_why_in_one_json_line_or_one_plain_line(
    root_logging: None, tmp_env: pytest.MonkeyPatch
) -> None:
    # given: no CSV to stream, and stderr is not a terminal
    runner = CliRunner()
    # when
    logged = runner.invoke(main, ["stream"])
    tmp_env.setenv("LOG_FORMAT", "text")
    plain = runner.invoke(main, ["stream"])
    # then
    (line,) = logged.stderr.splitlines()
    assert json.loads(line) | {"ts": None} == {
        "ts": None,
        "level": "ERROR",
        "logger": "telemetry.cli",
        "message": "no CSV file given: pass PATHS or set CSV_PATH",
        "instance_id": socket.gethostname(),
        "exit_code": 2,
    }
    assert plain.stderr == "telemetry: no CSV file given: pass PATHS or set CSV_PATH\n"
    assert logged.exit_code == plain.exit_code == 2
