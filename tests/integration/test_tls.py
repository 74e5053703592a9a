"""TLS to RabbitMQ, and TLS with a password to MongoDB, against servers started here.

trustme makes the certificates in the test. One private RabbitMQ node with a
TLS listener (and one more whose certificate has expired) and one SecantusDB
with TLS and ``--auth`` serve the whole module, so each slow scenario runs
once; the ``tls`` mark keeps them out of ``make test``'s BATCH_SIZE=1 pass.
The shared broker at 127.0.0.1:5672 is not used here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from amqp.exceptions import PreconditionFailed
from kombu import Connection
from kombu.exceptions import OperationalError
from pymongo import MongoClient

from telemetry.api.server import ApiServer
from telemetry.broker.connect import describe
from telemetry.config import load_settings
from telemetry.demo.embedded import SecantusServer, free_port
from telemetry.errors import TelemetryError
from tests.conftest import server_missing
from tests.integration.rabbit_support import started_node
from tools.launchers import WorkerProcess, clean_env, telemetry_command, wait_for
from tools.rabbitmq_nodes import MAX_MESSAGE_SIZE, LocalNode, NodeTls

pytestmark = pytest.mark.tls

SAMPLE_CSV = (
    Path(__file__).resolve().parents[2]
    / "telemetry"
    / "data"
    / ("dcgm_metrics_20250718_134233.csv")
)
DB_USER = "collector"
DB_PASSWORD = "s3cret-Pw"
WRONG_PASSWORD = "not-the-Pw"


@dataclass(frozen=True)
class Pki:
    """The test's certificates, as PEM files."""

    ca_file: Path
    other_ca_file: Path
    cert_file: Path
    key_file: Path
    expired_cert_file: Path
    expired_key_file: Path


def write_leaf(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    """A leaf certificate (with its chain) and its key as two PEM files."""
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate from it for localhost and 127.0.0.1 (kombu connects to
    127.0.0.1 for localhost), an expired one, and a CA that signed neither."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    cert_file, key_file = write_leaf(ca.issue_cert("localhost", "127.0.0.1"), directory, "server")
    now = datetime.now(UTC)
    expired = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    expired_cert, expired_key = write_leaf(expired, directory, "expired")
    return Pki(
        directory / "ca.pem",
        directory / "other-ca.pem",
        cert_file,
        key_file,
        expired_cert,
        expired_key,
    )


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[LocalNode]:
    """A node whose TLS certificate the test CA signed for localhost and 127.0.0.1."""
    yield from started_node(NodeTls(pki.ca_file, pki.cert_file, pki.key_file))


@pytest.fixture(scope="module")
def expired_broker(pki: Pki) -> Iterator[LocalNode]:
    """A node whose TLS certificate expired yesterday."""
    yield from started_node(NodeTls(pki.ca_file, pki.expired_cert_file, pki.expired_key_file))


@pytest.fixture(scope="module")
def secure_database(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    """SecantusDB with TLS and --auth, holding one user (made before --auth was on)."""
    directory = tmp_path_factory.mktemp("secure-db")
    plain = SecantusServer(directory / "data", log_path=directory / "plain.log")
    secure = SecantusServer(
        directory / "data",
        log_path=directory / "secure.log",
        extra_args=[
            "--auth",
            "--tls-cert-file",
            str(pki.cert_file),
            "--tls-key-file",
            str(pki.key_file),
        ],
        uri_options={"tls": "true", "tlsCAFile": str(pki.ca_file)},
    )
    try:
        plain.start()
        client: MongoClient[dict[str, Any]] = MongoClient(plain.uri)
        client.admin.command("createUser", DB_USER, pwd=DB_PASSWORD, roles=["root"])
        client.close()
        plain.stop()
        secure.start()
    except TelemetryError as exc:
        plain.stop()
        server_missing("SecantusDB with TLS and --auth", exc)
    yield secure
    secure.stop()


def with_login(uri: str, password: str = DB_PASSWORD) -> str:
    """``uri`` with the test user and ``password`` in it."""
    return uri.replace("mongodb://", f"mongodb://{DB_USER}:{password}@", 1)


def broker_env(url: str, ca_file: Path, **settings: str) -> dict[str, str]:
    """Environment for a command or worker on a TLS broker, on a queue of its own."""
    defaults = {
        "TELEMETRY_QUEUE": f"t.tls.{uuid.uuid4().hex[:8]}",
        "INSTANCE_ID": f"tls-{uuid.uuid4().hex[:8]}",
        "METRICS_PORT": "0",
        "MONGO_TIMEOUT_MS": "1000",
        "LOG_FORMAT": "text",
    }
    return clean_env(
        CELERY_BROKER_URL=url, BROKER_TLS_CA_FILE=str(ca_file), **{**defaults, **settings}
    )


def get(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def one_line(text: str) -> str:
    """The only line of ``text``; fails if there are more or none."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_with_the_right_ca_a_stream_over_tls_is_stored_by_a_worker_over_tls_with_a_login(
    tls_broker: LocalNode, secure_database: SecantusServer, pki: Pki, tmp_path: Path
) -> None:
    # given a worker on the TLS broker and the TLS database with the right password
    port = free_port()
    env = broker_env(
        tls_broker.amqps_url(),
        pki.ca_file,
        MONGODB_URI=with_login(secure_database.uri),
        MONGODB_DB="tls_ok",
        METRICS_PORT=str(port),
    )
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=2)
    try:
        worker.wait_ready()
        # when the streamer sends 20 points over TLS
        streamed = telemetry_command(
            "stream", "--limit", "20", "--no-progress", str(SAMPLE_CSV), env=env
        )
        # then all are confirmed, stored, and the operator commands work over TLS too
        assert streamed.returncode == 0, streamed.stderr
        client: MongoClient[dict[str, Any]] = MongoClient(with_login(secure_database.uri))
        wait_for(lambda: client["tls_ok"]["telemetry"].count_documents({}) == 20, 30, "20 points")
        client.close()
        stats = telemetry_command("stats", "--json", env=env)
        assert stats.returncode == 0, stats.stderr
        assert len(json.loads(stats.stdout)["workers"]) == 1
        dead = telemetry_command("dlq", "list", env=env)
        assert dead.returncode == 0, dead.stderr
        assert dead.stdout.startswith("0 dead-lettered")
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ready"})
    finally:
        worker.stop()
    # and the read API reads through the same URI
    settings = load_settings(
        env={"MONGODB_URI": with_login(secure_database.uri), "MONGODB_DB": "tls_ok"}
    )
    with ApiServer(settings) as api:
        assert get(f"{api.url}/readyz") == (200, {"status": "ready"})
        status, body = get(f"{api.url}/api/v1/gpus?limit=5")
        assert status == 200 and body["gpus"]


BAD_CERTIFICATES = {
    # The broker sends its CA along; the client trusts another one.
    "wrong CA": "self-signed certificate in certificate chain",
    "expired certificate": "certificate has expired",
    "wrong host name": "IP address mismatch, certificate is not valid for '127.0.0.2'",
}


@pytest.mark.parametrize("scenario", sorted(BAD_CERTIFICATES))
def test_a_broker_certificate_not_accepted_is_one_line_and_exit_1_for_commands_and_the_worker(
    scenario: str, pki: Pki, tls_broker: LocalNode, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # given a broker the client must not trust
    if scenario == "wrong CA":
        env = broker_env(tls_broker.amqps_url(), pki.other_ca_file)
    elif scenario == "expired certificate":
        expired: LocalNode = request.getfixturevalue("expired_broker")
        env = broker_env(expired.amqps_url(), pki.ca_file)
    else:
        env = broker_env(tls_broker.amqps_url("127.0.0.2"), pki.ca_file)
    expected = BAD_CERTIFICATES[scenario]
    # when a producer, an operator command and a worker try it
    stream = telemetry_command("stream", "--limit", "1", "--no-progress", str(SAMPLE_CSV), env=env)
    stats = telemetry_command("stats", env=env)
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=1)
    try:
        worker_code = worker.process.wait(timeout=60)
    finally:
        worker.stop()
    # then each says so in one line and exits 1; no password shown
    for result in (stream, stats):
        line = one_line(result.stderr)
        assert result.returncode == 1, result.stderr
        assert expected in line and "the broker's TLS certificate is not accepted" in line
        assert "guest:***@" in line and "guest:guest" not in line
        print(line)
    assert worker_code == 1
    line = one_line(worker.log())
    assert line.startswith("telemetry worker: cannot use the broker at amqps://guest:***@")
    assert expected in line
    print(line)


def test_a_failover_list_checks_each_host_against_its_own_name(
    tls_broker: LocalNode, pki: Pki
) -> None:
    # given a first host that refuses connections, by a name the certificate does not list,
    # and a second whose certificate names it
    down = f"amqps://guest:guest@127.0.0.2:{free_port()}//"
    failover = f"{down};{tls_broker.amqps_url()}"
    # when the streamer fails over to the second
    result = telemetry_command(
        "stream",
        "--limit",
        "3",
        "--no-progress",
        str(SAMPLE_CSV),
        env=broker_env(failover, pki.ca_file),
    )
    # then the second host is checked against its own name, and accepted
    assert result.returncode == 0, result.stderr


def test_kombu_alone_checks_the_next_failover_host_against_the_first_hosts_name(
    tls_broker: LocalNode, pki: Pki
) -> None:
    # Why BrokerConnection builds TLS options per host: kombu's documented
    # server_hostname=None is filled in place with the first host's name and kept.
    shared = {"ca_certs": str(pki.ca_file), "server_hostname": None}
    down = f"amqps://guest:guest@127.0.0.2:{free_port()}//"
    failover = f"{down};{tls_broker.amqps_url()}"
    with (
        Connection(failover, ssl=shared, connect_timeout=2) as connection,
        pytest.raises(OperationalError) as raised,
    ):
        # The first host refuses, then the second is tried and fails the check.
        connection.ensure_connection(max_retries=1, interval_start=0.1)
    assert shared["server_hostname"] == "127.0.0.2"
    assert "certificate is not valid for '127.0.0.2'" in describe(raised.value)


def test_the_demo_stores_its_points_in_a_database_with_tls_and_a_login(
    secure_database: SecantusServer, tmp_path: Path
) -> None:
    env = clean_env(MONGODB_URI=with_login(secure_database.uri), MONGODB_DB="tls_demo")
    result = telemetry_command(
        "demo", "--limit", "30", "--no-progress", "--data-dir", str(tmp_path), env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert DB_PASSWORD not in result.stdout + result.stderr


BAD_DATABASE_LOGINS = {
    "wrong password": "login refused (authentication failed): check the user name and password",
    "wrong CA": "CERTIFICATE_VERIFY_FAILED",
}


def bad_database_uri(scenario: str, database: SecantusServer, pki: Pki) -> str:
    """The database's URI with the wrong password, or trusting the wrong CA."""
    if scenario == "wrong password":
        return with_login(database.uri, WRONG_PASSWORD)
    return with_login(database.uri).replace(str(pki.ca_file), str(pki.other_ca_file))


@pytest.mark.parametrize("scenario", sorted(BAD_DATABASE_LOGINS))
def test_a_database_refusal_is_one_line_for_the_demo_and_a_503_reason_in_readyz(
    scenario: str,
    secure_database: SecantusServer,
    tls_broker: LocalNode,
    pki: Pki,
    tmp_path: Path,
) -> None:
    uri = bad_database_uri(scenario, secure_database, pki)
    expected = BAD_DATABASE_LOGINS[scenario]
    # a command: one line, exit 1, no password
    demo = telemetry_command(
        "demo",
        "--limit",
        "5",
        "--no-progress",
        "--data-dir",
        str(tmp_path),
        env=clean_env(
            MONGODB_URI=uri, MONGODB_DB="tls_bad", MONGO_TIMEOUT_MS="1000", LOG_FORMAT="text"
        ),
    )
    line = one_line(demo.stderr)
    assert demo.returncode == 1, demo.stderr
    assert line.startswith("telemetry: cannot use the database at mongodb://collector:***@")
    assert expected in line
    print(line)
    # a worker: it runs, and /readyz says why it is not ready
    port = free_port()
    env = broker_env(
        tls_broker.amqps_url(),
        pki.ca_file,
        MONGODB_URI=uri,
        MONGODB_DB="tls_bad",
        METRICS_PORT=str(port),
    )
    worker = WorkerProcess(env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        status, body = get(f"http://127.0.0.1:{port}/readyz")
    finally:
        worker.stop()
    assert status == 503
    (reason,) = body["reasons"]
    assert expected in reason
    print(reason)
    # the read API's /readyz too
    with ApiServer(load_settings(env={"MONGODB_URI": uri, "MONGO_TIMEOUT_MS": "1000"})) as api:
        status, body = get(f"{api.url}/readyz")
    assert status == 503 and expected in body["message"]
    print(body["message"])
    for shown in (line, reason, body["message"]):
        assert WRONG_PASSWORD not in shown and DB_PASSWORD not in shown


def test_the_broker_refuses_a_message_over_its_max_message_size(tls_broker: LocalNode) -> None:
    # given: a private node configured as docs/security.md recommends (1 MiB); the TLS
    # module's node, so no second node is started for this
    queue = f"t.size.{uuid.uuid4().hex[:8]}"
    with Connection(tls_broker.amqp_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, auto_delete=True)
        # when: a message just under the bound, then one over it
        channel.basic_publish(channel.prepare_message(b"x" * (MAX_MESSAGE_SIZE - 1024)), "", queue)
        with pytest.raises(PreconditionFailed) as refused:
            channel.basic_publish(channel.prepare_message(b"x" * (MAX_MESSAGE_SIZE + 1)), "", queue)
    # then
    assert f"message size {MAX_MESSAGE_SIZE + 1} is larger than configured max size" in str(
        refused.value
    )
