"""Everything derived from the settings declaration stays in step with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from telemetry.cli import SCRAPE_FLAGS, STREAM_FLAGS, scrape, stream
from telemetry.config import ENV_NAMES, flag_fields, flag_name, load_settings
from telemetry.errors import ConfigError
from tools import config_docs

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PEM = REPO / "tests" / "fixtures" / "tls" / "sample.pem"
README = REPO / "README.md"


def test_docs_configuration_page_is_generated_from_the_declaration() -> None:
    committed = config_docs.OUTPUT.read_text()
    assert committed == config_docs.render(), "docs/configuration.md is stale: make config-docs"


def test_every_variable_in_the_readme_table_is_declared_and_means_the_same() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    named = {match.group(1) for row in rows if (match := re.match(r"\| `([A-Z_]+)`", row))}
    assert named, "the README has no configuration table"
    assert named <= set(ENV_NAMES.values()), named - set(ENV_NAMES.values())


def test_the_worker_takes_exactly_the_flags_declared_for_it() -> None:
    from telemetry.worker.app import app

    options = {
        opt for option in app.user_options["worker"] for opt in option.opts if opt.startswith("--")
    }
    assert options == {flag_name(field) for field in flag_fields("worker")}


def test_the_stream_command_takes_exactly_the_flags_declared_for_it() -> None:
    assert set(STREAM_FLAGS) == set(flag_fields("stream"))
    by_name = {parameter.name: parameter for parameter in stream.params}
    for field, parameter in STREAM_FLAGS.items():
        assert flag_name(field) in by_name[parameter].opts


def test_the_scrape_command_takes_exactly_the_flags_declared_for_it() -> None:
    assert set(SCRAPE_FLAGS) == set(flag_fields("scrape"))
    by_name = {parameter.name: parameter for parameter in scrape.params}
    for field, parameter in SCRAPE_FLAGS.items():
        assert flag_name(field) in by_name[parameter].opts


def test_a_bad_flag_is_named_as_it_was_typed() -> None:
    with pytest.raises(ConfigError, match=r"^invalid --shard='3/3': must be i/N"):
        load_settings(env={}, overrides={"scrape_shard": "3/3"})


# A valid value for each setting that is not an int or a float, differing from its default.
TEXT_SAMPLES = {
    "instance_id": "sample",
    "broker_url": "amqp://u:p@rabbit-1:5672//;amqp://u:p@rabbit-2:5672//",
    "mongodb_uri": "mongodb://mongo-1:27017",
    "mongodb_db": "sample",
    "queue_name": "sample",
    "log_format": "json",
    "csv_path": "/data/sample.csv",
    "loop_mode": "true",
    "api_host": "0.0.0.0",
    "api_token": "sample-token",
    "flower_basic_auth": "sample:login",
    "mongo_timeout_ms": "700",
    "queue_type": "classic",
    "task_events": "failures",
    "scrape_targets_file": "/etc/telemetry/targets.yml",
    "scrape_honor_timestamps": "true",
    "scrape_max_body_bytes": "2048",
    "max_message_bytes": "2048",
    "scrape_shard": "1/3",
    "broker_tls_ca_file": str(SAMPLE_PEM),
    "broker_tls_cert_file": str(SAMPLE_PEM),
    "broker_tls_key_file": str(SAMPLE_PEM),
    "broker_tls_verify_hostname": "true",
}
# What a setting needs beside it to be valid at all: TLS files only go with amqps:// URLs,
# a client certificate with its key, a worker's shard numbers enough shards.
CONTEXT = {
    "worker_shards": {"QUEUE_SHARDS": "8"},
    "broker_tls_ca_file": {"CELERY_BROKER_URL": "amqps://rabbit-1//"},
    "broker_tls_cert_file": {
        "CELERY_BROKER_URL": "amqps://rabbit-1//",
        "BROKER_TLS_KEY_FILE": str(SAMPLE_PEM),
    },
    "broker_tls_key_file": {
        "CELERY_BROKER_URL": "amqps://rabbit-1//",
        "BROKER_TLS_CERT_FILE": str(SAMPLE_PEM),
    },
}


@pytest.mark.parametrize("field", sorted(ENV_NAMES))
def test_each_declared_variable_is_read_into_its_setting(field: str) -> None:
    raw = TEXT_SAMPLES.get(field, "7")
    context = CONTEXT.get(field, {})
    settings = load_settings(env={**context, ENV_NAMES[field]: raw})
    assert settings.given(field)
    value = getattr(settings, field)
    shown = value.get_secret_value() if isinstance(value, SecretStr) else value
    assert str(shown) in (raw, "7.0", "True", "700")
    blank = {**context, ENV_NAMES[field]: "  "}
    if field in ("broker_tls_cert_file", "broker_tls_key_file"):
        blank = {"CELERY_BROKER_URL": "amqps://rabbit-1//", ENV_NAMES[field]: "  "}
    assert not load_settings(env=blank).given(field)
