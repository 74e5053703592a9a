"""Secrets from files (``<NAME>_FILE``), as Docker and Kubernetes mount them, and masking."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from telemetry.config import (
    FILE_ENV_NAMES,
    environment_value,
    flower_logins,
    load_settings,
    masked,
)
from telemetry.errors import ConfigError
from tools.launchers import REPO, clean_env, telemetry_command

SECRET = "s3cret-Hunter2"
BROKER = f"amqp://telemetry:{SECRET}@rabbitmq:5672//"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A path in a folder of the test's own, for a secret to be written to."""
    return tmp_path / "secret"


def one_line_error(env: dict[str, str]) -> str:
    """The message of the ConfigError these variables give, checked to be one line."""
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_exactly_the_four_secrets_take_a_file() -> None:
    assert FILE_ENV_NAMES == {
        "broker_url": "CELERY_BROKER_URL_FILE",
        "mongodb_uri": "MONGODB_URI_FILE",
        "api_token": "API_TOKEN_FILE",
        "flower_basic_auth": "FLOWER_BASIC_AUTH_FILE",
    }


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"], ids=["none", "lf", "crlf"])
def test_each_secret_is_read_from_its_file_without_the_trailing_newline(
    secret_file: Path, ending: str
) -> None:
    for field, variable in FILE_ENV_NAMES.items():
        value = {
            "broker_url": BROKER,
            "mongodb_uri": f"mongodb://telemetry:{SECRET}@mongo:27017/?authSource=admin",
            "api_token": SECRET,
            "flower_basic_auth": f"admin:{SECRET}",
        }[field]
        secret_file.write_bytes((value + ending).encode())
        settings = load_settings(env={variable: str(secret_file)})
        read = getattr(settings, field)
        assert (read if isinstance(read, str) else read.get_secret_value()) == value
        assert settings.given(field)


def test_only_one_trailing_newline_is_dropped_and_inner_spaces_are_kept(
    secret_file: Path,
) -> None:
    secret_file.write_text(" two words \n\n")
    settings = load_settings(env={"API_TOKEN_FILE": str(secret_file)})
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == " two words \n"


def test_setting_a_variable_and_its_file_is_one_line_naming_both(secret_file: Path) -> None:
    secret_file.write_text(BROKER)
    message = one_line_error(
        {"CELERY_BROKER_URL": BROKER, "CELERY_BROKER_URL_FILE": str(secret_file)}
    )
    assert message == (
        "CELERY_BROKER_URL and CELERY_BROKER_URL_FILE are both set: set only one of them"
    )


def test_both_set_is_refused_even_when_a_flag_would_win(secret_file: Path) -> None:
    # The flag would hide the conflict until the day it is dropped.
    secret_file.write_text("mongodb://db:27017")
    with pytest.raises(ConfigError, match="MONGODB_URI and MONGODB_URI_FILE are both set"):
        load_settings(
            env={"MONGODB_URI": "mongodb://a:27017", "MONGODB_URI_FILE": str(secret_file)},
            overrides={"mongodb_uri": "mongodb://flag:27017"},
        )


@pytest.mark.parametrize("content", ["", "\n", "\r\n", "   \n"], ids=repr)
def test_an_empty_file_is_one_line_naming_the_variable_and_the_path(
    secret_file: Path, content: str
) -> None:
    secret_file.write_text(content)
    message = one_line_error({"API_TOKEN_FILE": str(secret_file)})
    assert message == f"API_TOKEN_FILE={secret_file}: the file is empty"


def test_a_missing_file_is_one_line_naming_the_variable_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "not-there"
    message = one_line_error({"MONGODB_URI_FILE": str(path)})
    assert message == f"MONGODB_URI_FILE={path}: no such file"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        # A directory, and a file that even root cannot read (this suite runs as root here).
        (None, "is a directory, not a file"),
        ("/proc/self/mem", "cannot be read: Input/output error"),
    ],
    ids=["directory", "io-error"],
)
def test_an_unreadable_file_is_one_line_naming_the_variable_and_the_path(
    tmp_path: Path, path: str | None, problem: str
) -> None:
    target = path or str(tmp_path)
    if not Path(target).exists():
        pytest.skip(f"{target} does not exist on this system")
    message = one_line_error({"FLOWER_BASIC_AUTH_FILE": target})
    assert message == f"FLOWER_BASIC_AUTH_FILE={target}: {problem}"


def test_a_file_without_read_permission_is_one_line(
    secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads a file of mode 0 anyway, so the refusal is what the OS would raise.
    secret_file.write_text(SECRET)

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)
    message = one_line_error({"API_TOKEN_FILE": str(secret_file)})
    assert message == f"API_TOKEN_FILE={secret_file}: cannot be read: permission denied"


def test_a_file_that_is_not_text_is_refused_without_quoting_it(secret_file: Path) -> None:
    secret_file.write_bytes(b"\xffsecret-bytes")
    message = one_line_error({"API_TOKEN_FILE": str(secret_file)})
    assert message == f"API_TOKEN_FILE={secret_file}: is not UTF-8 text"


def test_a_bad_value_in_a_file_names_the_variable_and_path_but_never_the_content(
    secret_file: Path,
) -> None:
    secret_file.write_text(f"redis://telemetry:{SECRET}@cache:6379/0\n")
    message = one_line_error({"CELERY_BROKER_URL_FILE": str(secret_file)})
    assert message.startswith(
        f"invalid CELERY_BROKER_URL from CELERY_BROKER_URL_FILE={secret_file}: scheme must be"
    )
    assert SECRET not in message
    assert "redis" not in message.split(": ", 1)[1].split("got")[0]


def test_a_flag_wins_over_the_file_and_the_file_over_the_default(secret_file: Path) -> None:
    secret_file.write_text("mongodb://from-file:27017\n")
    env = {"MONGODB_URI_FILE": str(secret_file)}
    assert load_settings(env=env).mongodb_uri == "mongodb://from-file:27017"
    flagged = load_settings(env=env, overrides={"mongodb_uri": "mongodb://from-flag:27017"})
    assert flagged.mongodb_uri == "mongodb://from-flag:27017"
    # An empty _FILE variable counts as unset, as an empty variable does.
    assert load_settings(env={"MONGODB_URI_FILE": "  "}).mongodb_uri == "mongodb://localhost:27017"


def test_environment_value_reads_one_setting_by_the_same_rules(secret_file: Path) -> None:
    secret_file.write_text(BROKER + "\n")
    assert environment_value("broker_url", {"CELERY_BROKER_URL_FILE": str(secret_file)}) == BROKER
    assert environment_value("broker_url", {"CELERY_BROKER_URL": BROKER}) == BROKER
    assert environment_value("broker_url", {}) is None
    with pytest.raises(ConfigError, match="both set"):
        environment_value(
            "broker_url", {"CELERY_BROKER_URL": BROKER, "CELERY_BROKER_URL_FILE": str(secret_file)}
        )


# -- Flower's logins -------------------------------------------------------------------


def test_flower_logins_come_from_the_file_and_split_like_flower_does(secret_file: Path) -> None:
    secret_file.write_text(f"admin:{SECRET},viewer:other\n")
    assert flower_logins({"FLOWER_BASIC_AUTH_FILE": str(secret_file)}) == [
        f"admin:{SECRET}",
        "viewer:other",
    ]
    assert flower_logins({"FLOWER_BASIC_AUTH": "a:b"}) == ["a:b"]
    assert flower_logins({}) == []


@pytest.mark.parametrize("bad", [SECRET, f"admin:{SECRET},", f":{SECRET}", "admin:"])
def test_a_login_without_user_or_password_is_refused_without_quoting_it(
    secret_file: Path, bad: str
) -> None:
    secret_file.write_text(bad)
    with pytest.raises(ConfigError) as raised:
        flower_logins({"FLOWER_BASIC_AUTH_FILE": str(secret_file)})
    assert str(raised.value) == (
        f"invalid FLOWER_BASIC_AUTH from FLOWER_BASIC_AUTH_FILE={secret_file}: "
        "must be user:password, several separated by ','"
    )
    with pytest.raises(ConfigError, match=r"^invalid FLOWER_BASIC_AUTH=<hidden>: must be"):
        load_settings(env={"FLOWER_BASIC_AUTH": bad})


def test_flowerconfig_sets_basic_auth_from_the_file(
    secret_file: Path, tmp_env: pytest.MonkeyPatch
) -> None:
    secret_file.write_text(f"admin:{SECRET}\n")
    tmp_env.setenv("FLOWER_BASIC_AUTH_FILE", str(secret_file))
    config = runpy.run_path(str(REPO / "flowerconfig.py"))
    assert config["basic_auth"] == [f"admin:{SECRET}"]
    assert "result" in config["tasks_columns"]


def test_flowerconfig_stops_flower_with_one_line_and_exit_2(
    tmp_path: Path, tmp_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_env.setenv("FLOWER_BASIC_AUTH", f"admin:{SECRET}")
    tmp_env.setenv("FLOWER_BASIC_AUTH_FILE", str(tmp_path / "login"))
    with pytest.raises(SystemExit) as raised:
        runpy.run_path(str(REPO / "flowerconfig.py"))
    assert raised.value.code == 2
    assert capsys.readouterr().err == (
        "telemetry flower: FLOWER_BASIC_AUTH and FLOWER_BASIC_AUTH_FILE are both set: "
        "set only one of them\n"
    )


# -- through the commands ----------------------------------------------------------------


def test_the_cli_says_both_set_in_one_line_and_exits_2(secret_file: Path) -> None:
    secret_file.write_text(SECRET)
    result = telemetry_command(
        "dlq", "list", env=clean_env(API_TOKEN=SECRET, API_TOKEN_FILE=str(secret_file))
    )
    assert result.returncode == 2
    # Logs are JSON off a terminal; LOG_FORMAT cannot be trusted from settings that failed.
    (line,) = result.stderr.splitlines()
    assert json.loads(line)["message"] == (
        "API_TOKEN and API_TOKEN_FILE are both set: set only one of them"
    )
    assert SECRET not in result.stdout + result.stderr


def test_celery_commands_take_the_broker_url_from_its_file(secret_file: Path) -> None:
    # given: the URL only in a file, as a Docker secret
    secret_file.write_text(BROKER + "\n")
    env = clean_env(CELERY_BROKER_URL_FILE=str(secret_file))
    # when: the app's configuration is read, as every `celery -A telemetry` command does
    shown = subprocess.run(
        [sys.executable, "-c", "from telemetry import app; print(app.conf.broker_url)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    # then
    assert shown.stdout == BROKER + "\n", shown.stderr


def test_a_celery_command_with_a_missing_broker_url_file_stops_in_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broker_url"
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "telemetry", "inspect", "ping", "--timeout=1"],
        env=clean_env(CELERY_BROKER_URL_FILE=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr == f"telemetry: CELERY_BROKER_URL_FILE={path}: no such file\n"


# -- masking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:***@localhost:5672//"),
        ("amqps://telemetry:pw@rabbit:5671/prod", "amqps://telemetry:***@rabbit:5671/prod"),
        ("pyamqp://u:pw@h//", "pyamqp://u:***@h//"),
        (
            "amqp://u:pw1@r-1:5672//;amqp://u:pw2@r-2:5672//;amqp://r-3:5672//",
            "amqp://u:***@r-1:5672//;amqp://u:***@r-2:5672//;amqp://r-3:5672//",
        ),
        (
            "amqp://r-1:5672//; amqp://u:pw@r-2:5672//",
            "amqp://r-1:5672//; amqp://u:***@r-2:5672//",
        ),
        (
            "mongodb://app:pw@m-1:27017,m-2:27017/telemetry?authSource=admin&replicaSet=rs0",
            "mongodb://app:***@m-1:27017,m-2:27017/telemetry?authSource=admin&replicaSet=rs0",
        ),
        # MongoDB lets a password hold an unescaped ';' (and '?', '#'), but never '/' or '@'.
        ("mongodb://app:p;w?#x@m-1:27017/", "mongodb://app:***@m-1:27017/"),
        (
            "mongodb+srv://app:pw@cluster0.example.net/",
            "mongodb+srv://app:***@cluster0.example.net/",
        ),
        ("mongodb://:pw@m-1", "mongodb://:***@m-1"),
        ("mongodb://m-1:27017/?w=majority", "mongodb://m-1:27017/?w=majority"),
        (
            "mongodb://app@m-1/?authMechanism=MONGODB-X509",
            "mongodb://app@m-1/?authMechanism=MONGODB-X509",
        ),
        (
            "cannot use amqp://u:pw@h:5672// (refused); retry mongodb://a:b@m",
            "cannot use amqp://u:***@h:5672// (refused); retry mongodb://a:***@m",
        ),
        ("{'url': 'amqp://u:pw@h//'}", "{'url': 'amqp://u:***@h//'}"),
    ],
)
def test_masked_hides_the_password_of_every_url_form_the_settings_take(
    url: str, shown: str
) -> None:
    assert masked(url) == shown
