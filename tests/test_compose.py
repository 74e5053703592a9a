"""docker-compose.yml and the Dockerfile, checked against the code (Docker cannot run here)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

from telemetry.cli import SAMPLE_CSV, main
from telemetry.config import ALL_ENV_NAMES, FILE_ENV_NAMES, Settings, flower_logins, load_settings
from telemetry.demo.exporter import parser as exporter_parser
from telemetry.worker.app import WORKER_FLAGS

REPO = Path(__file__).resolve().parents[1]
STREAMER_ENV = {"CSV_PATH", "LOOP_MODE", "STREAM_INTERVAL", "STREAM_MAX_BACKLOG"}
CLUSTER_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
CLUSTER_APPS = ("cluster-worker", "cluster-streamer", "cluster-flower")
EXPORTERS = ("exporter-1", "exporter-2")
TARGETS_MOUNT = "./deploy/scrape/targets.yml:/etc/telemetry/targets.yml:ro"
SECRETS_DIR = REPO / "deploy" / "secrets"
# Services whose images read their own variables: RabbitMQ's first account stays in its
# environment (its image has no *_FILE variant), MongoDB's is created from a secret.
SERVERS = ("rabbitmq", "mongo", *CLUSTER_NODES)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file."""
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def test_compose_has_the_six_services_with_healthy_dependencies(compose: dict[str, Any]) -> None:
    # `docker compose up` starts the services of no profile; the cluster profile adds its own.
    services = {
        name: service for name, service in compose["services"].items() if "profiles" not in service
    }
    assert set(services) == {"rabbitmq", "mongo", "worker", "flower", "api", "streamer"}
    assert "management" in services["rabbitmq"]["image"]
    for name in ("rabbitmq", "mongo"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    for name in ("worker", "flower", "api", "streamer"):
        assert services[name]["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "mongo": {"condition": "service_healthy"},
        }
    assert "mongo-data:/data/db" in services["mongo"]["volumes"]


def test_worker_runs_the_documented_command(compose: dict[str, Any]) -> None:
    command = compose["services"]["worker"]["command"]
    assert command[:6] == ["celery", "-A", "telemetry", "worker", "-c", "10"]


def test_flower_has_a_login_on_loopback_and_the_management_api(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["command"][:4] == ["celery", "-A", "telemetry", "flower"]
    # Loopback on the host unless FLOWER_PUBLISH_ADDRESS says otherwise.
    assert flower["ports"] == ["${FLOWER_PUBLISH_ADDRESS:-127.0.0.1}:5555:5555"]
    assert [interpolated(port) for port in flower["ports"]] == ["127.0.0.1:5555:5555"]
    # The login flowerconfig.py gives Flower, from the mounted secret.
    logins = flower_logins(secret_env(compose, "flower"))
    assert len(logins) == 1 and logins[0].startswith("admin:dev-")
    assert "FLOWER_BASIC_AUTH" not in flower["environment"]
    assert re.match(r"http://.+@rabbitmq:15672/api/$", flower["environment"]["FLOWER_BROKER_API"])
    assert "15672:15672" in compose["services"]["rabbitmq"]["ports"]
    # Its probe is one of the two paths that need no login.
    assert "http://127.0.0.1:5555/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_streamer_loops_over_the_sample_shipped_in_the_image(compose: dict[str, Any]) -> None:
    streamer = compose["services"]["streamer"]
    assert streamer["command"][:2] == ["telemetry", "stream"]
    assert streamer["command"][1] in main.commands
    env = streamer["environment"]
    assert env["LOOP_MODE"] == "true"
    # The Dockerfile copies telemetry/ to /app/telemetry.
    assert env["CSV_PATH"] == f"/app/{SAMPLE_CSV.relative_to(REPO)}"


def test_every_variable_in_the_compose_file_is_one_the_code_reads(
    compose: dict[str, Any],
) -> None:
    known = set(ALL_ENV_NAMES) | STREAMER_ENV | {"FLOWER_BROKER_API"}
    for name in ("worker", "flower", "api", "streamer", "scraper", *CLUSTER_APPS):
        unknown = set(compose["services"][name]["environment"]) - known
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


# -- secrets: Docker secrets from deploy/secrets/, read through the *_FILE variables -------


def secret_path(compose: dict[str, Any], mounted: str) -> Path:
    """The file under deploy/secrets/ that compose mounts at ``mounted`` (/run/secrets/NAME)."""
    assert mounted.startswith("/run/secrets/"), mounted
    return REPO / compose["secrets"][mounted.removeprefix("/run/secrets/")]["file"]


def secret_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    """A service's environment as its container sees it, with the secrets at their paths here."""
    env = {}
    for key, value in compose["services"][service]["environment"].items():
        is_secret = key.endswith("_FILE") and str(value).startswith("/run/secrets/")
        env[key] = str(secret_path(compose, value)) if is_secret else interpolated(str(value))
    return env


def app_services(compose: dict[str, Any]) -> list[str]:
    """Every service running our image, in every profile."""
    return [name for name in compose["services"] if name not in SERVERS]


def test_every_secret_a_service_reads_is_mounted_and_every_mount_is_read(
    compose: dict[str, Any],
) -> None:
    used = set()
    for name, service in compose["services"].items():
        files = {
            key: value
            for key, value in service.get("environment", {}).items()
            if key.endswith("_FILE")
        }
        assert all(value.startswith("/run/secrets/") for value in files.values()), name
        wanted = {value.removeprefix("/run/secrets/") for value in files.values()}
        assert wanted == set(service.get("secrets", [])), name
        used |= wanted
    assert used == set(compose["secrets"])
    for secret in compose["secrets"].values():
        path = REPO / secret["file"]
        assert path.parent == SECRETS_DIR, secret
        # Development values, and they say so.
        assert "dev-only" in path.read_text(), path


def test_no_app_service_has_a_secret_in_its_environment(compose: dict[str, Any]) -> None:
    secret_variables = {name.removesuffix("_FILE") for name in FILE_ENV_NAMES.values()}
    for name in app_services(compose):
        env = compose["services"][name].get("environment", {})
        assert not set(env) & secret_variables, name
        # No password in a URL either, but Flower's management API URL: Flower reads it
        # itself, with no *_FILE variant (docs/security.md).
        for key, value in env.items():
            if key != "FLOWER_BROKER_API":
                assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), (name, key)


def test_the_secret_files_stay_out_of_the_image() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "deploy/secrets" in ignored


def test_the_secret_files_load_as_settings_and_match_the_servers_accounts(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    rabbit = {
        key: interpolated(value) for key, value in services["rabbitmq"]["environment"].items()
    }
    mongo = services["mongo"]["environment"]
    mongo_password = secret_path(compose, mongo["MONGO_INITDB_ROOT_PASSWORD_FILE"]).read_text()
    settings = load_settings(env=secret_env(compose, "worker"))
    assert settings.broker_url == (
        f"amqp://{rabbit['RABBITMQ_DEFAULT_USER']}:{rabbit['RABBITMQ_DEFAULT_PASS']}@rabbitmq:5672//"
    )
    assert settings.mongodb_uri == (
        f"mongodb://{mongo['MONGO_INITDB_ROOT_USERNAME']}:{mongo_password.strip()}@mongo:27017/"
        "?authSource=admin"
    )
    api = load_settings(env=secret_env(compose, "api"))
    assert api.mongodb_uri == settings.mongodb_uri
    assert api.api_token is not None and api.api_token.get_secret_value().startswith("dev-only")
    for name in ("streamer", "scraper", "flower"):
        assert load_settings(env=secret_env(compose, name)).broker_url == settings.broker_url


def test_dockerfile_ships_the_package_and_the_celery_config() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md celeryconfig.py ./" in dockerfile
    assert "COPY telemetry ./telemetry" in dockerfile
    assert "WORKDIR /app" in dockerfile
    assert "pip install --no-cache-dir ." in dockerfile


def test_flower_in_the_image_shows_results_on_the_task_page() -> None:
    # Flower reads flowerconfig.py from its working directory, the image's WORKDIR.
    assert "COPY flowerconfig.py ./" in (REPO / "Dockerfile").read_text()
    columns = runpy.run_path(str(REPO / "flowerconfig.py"))["tasks_columns"].split(",")
    assert {"state", "result", "exception"} <= set(columns)


def test_worker_flags_cover_the_seed_settings() -> None:
    assert {
        "instance_id",
        "batch_size",
        "max_concurrent_handlers",
        "queue_buffer_size",
        "queue_workers",
    } <= set(WORKER_FLAGS)


def test_worker_publishes_its_metrics_port_and_checks_its_liveness_there(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    port = load_settings(env=secret_env(compose, "worker")).metrics_port
    assert port == Settings.model_fields["metrics_port"].default
    assert f"{port}:{port}" in worker["ports"]
    probe = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/healthz" in probe
    assert f"EXPOSE {port}" in (REPO / "Dockerfile").read_text()


def test_the_api_runs_the_api_command_on_loopback_with_a_probe(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"][:2] == ["telemetry", "api"]
    assert api["command"][api["command"].index("--port") + 1] == "8000"
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["environment"]["API_TOKEN_FILE"] == "/run/secrets/api_token"


# -- the cluster profile: 3 RabbitMQ nodes, quorum queues, workers that scale -----------


def interpolated(value: str) -> str:
    """``value`` as compose reads it with no variables set: ``${NAME:-default}`` → default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_cluster_profile_has_three_nodes_and_its_apps(compose: dict[str, Any]) -> None:
    services = compose["services"]
    in_profile = {
        name for name, service in services.items() if "cluster" in service.get("profiles", [])
    }
    assert in_profile == {*CLUSTER_NODES, *CLUSTER_APPS}
    # A fixed container_name would stop `--scale`, and clash with a second copy of the stack.
    assert not [name for name in in_profile if "container_name" in services[name]]


def test_the_nodes_share_a_cookie_and_find_each_other_by_classic_config(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    config = (REPO / "deploy" / "rabbitmq-cluster" / "rabbitmq.conf").read_text()
    settings = dict(
        line.split(" = ", 1) for line in config.splitlines() if line and not line.startswith("#")
    )
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    cookies = set()
    for number, name in enumerate(CLUSTER_NODES, start=1):
        node = services[name]
        assert node["image"] == "rabbitmq:4-management"
        # The node name is rabbit@<hostname>; the config lists the nodes by that name.
        assert node["hostname"] == name
        assert settings[f"cluster_formation.classic_config.nodes.{number}"] == f"rabbit@{name}"
        assert (
            "./deploy/rabbitmq-cluster/rabbitmq.conf:/etc/rabbitmq/conf.d/20-cluster.conf:ro"
            in node["volumes"]
        )
        # Each node keeps its own data: a volume of its own, never shared.
        assert f"{name}-data:/var/lib/rabbitmq" in node["volumes"]
        assert f"{name}-data" in compose["volumes"]
        cookies.add(node["environment"]["RABBITMQ_ERLANG_COOKIE"])
        # Healthy only once this node sees all three, so queues are declared on the full cluster.
        assert "await_online_nodes 3" in " ".join(node["healthcheck"]["test"])
        # AMQP is not published on the host: it would clash with the single-node broker.
        assert not [port for port in node.get("ports", []) if port.endswith(":5672")]
    assert len(cookies) == 1


def test_cluster_apps_use_quorum_queues_and_fail_over_across_the_three_nodes(
    compose: dict[str, Any],
) -> None:
    for name in CLUSTER_APPS:
        app = compose["services"][name]
        env = app["environment"]
        # The streamer declares the queue too: a producer and a worker must agree on its type.
        # Flower declares no queue.
        assert env.get("QUEUE_TYPE", "quorum") == "quorum", name
        assert env["CELERY_BROKER_URL_FILE"] == "/run/secrets/cluster_broker_url", name
        settings = load_settings(env=secret_env(compose, name))
        urls = settings.broker_url.split(";")
        assert [re.sub(r"^amqp://[^@]+@", "", url) for url in urls] == [
            f"{node}:5672//" for node in CLUSTER_NODES
        ], name
        node = {
            key: interpolated(value)
            for key, value in compose["services"]["rabbitmq-1"]["environment"].items()
        }
        login = f"{node['RABBITMQ_DEFAULT_USER']}:{node['RABBITMQ_DEFAULT_PASS']}@"
        assert all(url.startswith(f"amqp://{login}") for url in urls), name
        assert app["depends_on"] == {
            **{node: {"condition": "service_healthy"} for node in CLUSTER_NODES},
            "mongo": {"condition": "service_healthy"},
        }, name


def test_the_cluster_worker_scales_without_editing_the_file(compose: dict[str, Any]) -> None:
    worker = compose["services"]["cluster-worker"]
    assert worker["command"][:6] == ["celery", "-A", "telemetry", "worker", "-c", "10"]
    # No host port: N copies cannot all bind one. Prometheus scrapes each container instead.
    assert "ports" not in worker
    # No INSTANCE_ID: each copy's node name comes from its container's host name, so
    # the copies do not share one node name (and one control queue) on the broker.
    assert "INSTANCE_ID" not in worker["environment"]
    port = load_settings(env={"METRICS_PORT": worker["environment"]["METRICS_PORT"]}).metrics_port
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert worker["stop_signal"] == "SIGTERM"


def test_the_cluster_flower_runs_beside_the_single_node_one(compose: dict[str, Any]) -> None:
    flower = compose["services"]["cluster-flower"]
    assert flower["command"][:4] == ["celery", "-A", "telemetry", "flower"]
    assert [interpolated(port) for port in flower["ports"]] == ["127.0.0.1:5556:5555"]
    assert flower["environment"]["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert "@rabbitmq-1:15672/api/" in flower["environment"]["FLOWER_BROKER_API"]
    host_ports = [
        port.rsplit(":", 1)[0]
        for service in compose["services"].values()
        for port in service.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports)), host_ports


# -- the scrape profile: stand-in dcgm-exporters and the scraper ------------------------


def test_the_scrape_profile_has_two_exporters_and_the_scraper(compose: dict[str, Any]) -> None:
    services = compose["services"]
    in_profile = {
        name for name, service in services.items() if "scrape" in service.get("profiles", [])
    }
    assert in_profile == {*EXPORTERS, "scraper"}
    # Only under the profile: a plain `docker compose up` does not start them.
    assert all(services[name]["profiles"] == ["scrape"] for name in in_profile)
    assert not [name for name in in_profile if "container_name" in services[name]]


def test_the_scraper_reads_the_mounted_targets_file_and_publishes_to_the_broker(
    compose: dict[str, Any],
) -> None:
    scraper = compose["services"]["scraper"]
    command = scraper["command"]
    assert command[:2] == ["telemetry", "scrape"]
    assert command[1] in main.commands
    targets_file = command[command.index("--targets-file") + 1]
    assert TARGETS_MOUNT in scraper["volumes"]
    assert TARGETS_MOUNT.split(":")[1] == targets_file
    # The broker the worker consumes from, and only the broker: it writes nothing itself.
    env = scraper["environment"]
    assert (
        env["CELERY_BROKER_URL_FILE"]
        == compose["services"]["worker"]["environment"]["CELERY_BROKER_URL_FILE"]
    )
    assert "MONGODB_URI_FILE" not in env
    assert scraper["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_the_scraper_publishes_its_metrics_port_and_checks_its_liveness_there(
    compose: dict[str, Any],
) -> None:
    scraper = compose["services"]["scraper"]
    port = load_settings(env=secret_env(compose, "scraper")).scraper_port
    assert port == Settings.model_fields["scraper_port"].default == 9843
    assert scraper["ports"] == [f"{port}:{port}"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(scraper["healthcheck"]["test"])
    assert f"EXPOSE {port}" in (REPO / "Dockerfile").read_text()


def test_the_exporters_run_the_stand_in_on_dcgm_exporters_port(compose: dict[str, Any]) -> None:
    nodes = set()
    for name in EXPORTERS:
        exporter = compose["services"][name]
        command = exporter["command"]
        assert command[:3] == ["python", "-m", "telemetry.demo.exporter"]
        # The stand-in's own parser: a flag it does not know fails here, not in Docker.
        args = exporter_parser().parse_args(command[3:])
        assert args.port == [9400]
        # All interfaces of the container: the scraper reaches it from another one.
        assert args.host == "0.0.0.0"
        nodes.update(args.node)
        assert "http://127.0.0.1:9400/health" in " ".join(exporter["healthcheck"]["test"])
        assert "ports" not in exporter
    # Two nodes with one name would report the same GPU UUIDs.
    assert len(nodes) == len(EXPORTERS)


def test_the_targets_file_is_file_sd_and_names_the_exporter_services() -> None:
    groups = yaml.safe_load((REPO / "deploy" / "scrape" / "targets.yml").read_text())
    assert isinstance(groups, list)
    targets = set()
    for group in groups:
        assert set(group) == {"targets", "labels"}
        assert group["labels"]["cluster"] == "compose"
        assert all(isinstance(value, str) for value in group["labels"].values())
        targets.update(group["targets"])
    assert targets == {f"{name}:9400" for name in EXPORTERS}
