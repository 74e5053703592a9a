"""TLS settings and the per-host TLS options of broker connections (no server needed)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from telemetry.broker.connect import Broker, BrokerConnection, BrokerTls, describe, is_refusal
from telemetry.config import load_settings
from telemetry.errors import ConfigError

SAMPLE_PEM = Path(__file__).resolve().parent / "fixtures" / "tls" / "sample.pem"
FAILOVER = "amqps://u:p@rabbit-1:5671//;amqps://u:p@rabbit-2:5671//"


def test_tls_files_with_a_plain_url_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BROKER_TLS_CA_FILE is set but CELERY_BROKER_URL"):
        load_settings(env={"BROKER_TLS_CA_FILE": str(SAMPLE_PEM)})


def test_a_failover_list_mixing_amqps_and_amqp_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mixes amqps:// with plain URLs"):
        load_settings(env={"CELERY_BROKER_URL": "amqps://a//;amqp://b//"})


def test_a_client_certificate_without_its_key_is_a_config_error() -> None:
    env = {"CELERY_BROKER_URL": "amqps://a//", "BROKER_TLS_CERT_FILE": str(SAMPLE_PEM)}
    with pytest.raises(ConfigError, match="go together"):
        load_settings(env=env)


def test_a_missing_or_encrypted_key_is_a_config_error_in_words(tmp_path: Path) -> None:
    encrypted = tmp_path / "key.pem"
    encrypted.write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    env = {
        "CELERY_BROKER_URL": "amqps://a//",
        "BROKER_TLS_CERT_FILE": str(SAMPLE_PEM),
        "BROKER_TLS_KEY_FILE": str(encrypted),
    }
    with pytest.raises(ConfigError, match="is encrypted; the broker client cannot use a key"):
        load_settings(env=env)
    env["BROKER_TLS_KEY_FILE"] = str(tmp_path / "absent.pem")
    with pytest.raises(ConfigError, match=r"absent\.pem cannot be read"):
        load_settings(env=env)


def test_plain_urls_get_no_tls_and_amqps_urls_verify_chain_and_name_by_default() -> None:
    assert Broker.of(load_settings(env={})).tls is None
    broker = Broker.of(load_settings(env={"CELERY_BROKER_URL": "amqps://u:p@rabbit-1//"}))
    assert broker.tls == BrokerTls()
    with broker.connection() as connection:
        assert connection.ssl == {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "rabbit-1"}


def test_each_failover_host_gets_options_of_its_own_for_its_own_name() -> None:
    tls = BrokerTls(ca_file=SAMPLE_PEM)
    connection = Broker(FAILOVER, tls).connection()
    first = connection.ssl
    assert first["server_hostname"] == "rabbit-1" and first["ca_certs"] == str(SAMPLE_PEM)
    # kombu fills in or changes what it is given; the next read is built afresh
    first["server_hostname"] = "tampered"
    connection.maybe_switch_next()
    assert connection.hostname == "rabbit-2"
    assert connection.ssl["server_hostname"] == "rabbit-2"
    # a copy (kombu's clone, as the publisher reconnects) builds them per host too
    copy = connection.clone()
    assert isinstance(copy, BrokerConnection)
    assert copy.ssl["server_hostname"] == "rabbit-2"
    copy.switch(FAILOVER.split(";")[0])
    assert copy.ssl["server_hostname"] == "rabbit-1"


def test_hostname_verification_can_be_turned_off_but_the_chain_is_still_checked() -> None:
    connection = Broker(FAILOVER, BrokerTls(verify_hostname=False)).connection()
    assert connection.ssl == {"cert_reqs": ssl.CERT_REQUIRED}


def test_a_client_certificate_and_no_password_logs_in_by_the_certificate() -> None:
    tls = BrokerTls(cert_file=SAMPLE_PEM, key_file=SAMPLE_PEM)
    assert Broker("amqps://rabbit-1//", tls).login_method() == "EXTERNAL"
    assert Broker("amqps://u:p@rabbit-1//", tls).login_method() is None
    assert Broker("amqps://rabbit-1//", BrokerTls()).login_method() is None


def test_the_celery_app_connects_with_the_same_tls_options() -> None:
    from telemetry.worker.app import app, configure_broker

    settings = load_settings(
        env={"CELERY_BROKER_URL": FAILOVER, "BROKER_TLS_CA_FILE": str(SAMPLE_PEM)}
    )
    configure_broker(app, settings)
    try:
        with app.connection_for_read() as connection:
            assert isinstance(connection, BrokerConnection)
            assert connection.ssl["server_hostname"] == "rabbit-1"
            assert connection.ssl["ca_certs"] == str(SAMPLE_PEM)
    finally:
        configure_broker(app, load_settings(env={}))


def certificate_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("code", "message", "advice"),
    [
        (10, "certificate has expired", "the broker needs a renewed certificate"),
        (64, "IP address mismatch", "connect by a name the certificate lists"),
        (19, "self-signed certificate in certificate chain", "check BROKER_TLS_CA_FILE"),
    ],
)
def test_a_refused_certificate_is_described_with_what_to_check_and_is_not_retried(
    code: int, message: str, advice: str
) -> None:
    error = certificate_error(code, message)
    assert describe(error).startswith(f"the broker's TLS certificate is not accepted ({message}): ")
    assert advice in describe(error)
    assert is_refusal(error)
    assert not is_refusal(ssl.SSLError(1, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF"))
