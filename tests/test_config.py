"""Settings: defaults, environment, flags, and one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from telemetry.config import load_settings
from telemetry.errors import ConfigError


def test_defaults_match_the_documented_ones() -> None:
    settings = load_settings(env={})
    assert settings.instance_id == socket.gethostname()
    assert (
        settings.batch_size,
        settings.flush_interval_ms,
        settings.max_concurrent_handlers,
        settings.queue_buffer_size,
        settings.queue_workers,
    ) == (200, 200, 10, 1000, 10)
    assert settings.broker_url == "amqp://guest:guest@localhost:5672//"
    assert settings.mongodb_uri == "mongodb://localhost:27017"
    assert settings.mongodb_db == "telemetry"
    assert settings.queue_name == "telemetry"


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"INSTANCE_ID": "from-env", "BATCH_SIZE": "50", "QUEUE_WORKERS": "4"}
    settings = load_settings(env=env, overrides={"instance_id": "from-flag", "queue_workers": None})
    assert settings.instance_id == "from-flag"
    assert settings.batch_size == 50
    assert settings.queue_workers == 4


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BATCH_SIZE": "-1"},
            "invalid BATCH_SIZE='-1': Input should be greater than or equal to 1",
        ),
        ({"QUEUE_BUFFER_SIZE": "lots"}, "invalid QUEUE_BUFFER_SIZE='lots'"),
        ({"MONGODB_URI": "http://db"}, "invalid MONGODB_URI='http://db': must start with"),
        ({"MONGODB_URI": "mongodb://"}, "invalid MONGODB_URI='mongodb://'"),
        ({"CELERY_BROKER_URL": "redis:/x"}, "invalid CELERY_BROKER_URL='redis:/x': scheme"),
        ({"MONGODB_DB": "a.b"}, "invalid MONGODB_DB='a.b'"),
    ],
)
def test_bad_value_gives_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"^invalid --batch-size=0:"):
        load_settings(env={}, overrides={"batch_size": 0})


def test_worker_with_bad_setting_stops_with_one_line_and_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "telemetry", "worker", "--queue-buffer-size=-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "telemetry worker: invalid --queue-buffer-size=-5: "
        "Input should be greater than or equal to 1"
    )
