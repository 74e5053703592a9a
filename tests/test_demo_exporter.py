"""The stand-in dcgm-exporter: its payload, its HTTP server and its command line."""

from __future__ import annotations

import gzip
import http.client
import itertools
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.demo.exporter import (
    CONTENT_TYPE,
    ExporterFleet,
    StandInExporter,
    gpu_uuid,
    serve_exporters,
)

NOW = 1_760_000_000.0
LABEL_ORDER = (
    "gpu",
    "UUID",
    "pci_bus_id",
    "device",
    "modelName",
    "GPU_I_PROFILE",
    "GPU_I_ID",
    "Hostname",
    "DCGM_FI_DRIVER_VERSION",
    "container",
    "namespace",
    "pod",
)
SAMPLE = re.compile(r"^(?P<name>[A-Z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], str]]:
    """Every sample line as (name, labels in their order, value as printed)."""
    found = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        found.append((match["name"], labels, match["value"]))
    return found


def get(url: str, timeout: float = 5.0) -> tuple[int, str, bytes]:
    """Status, content type and body of one GET."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers["Content-Type"], response.read()


def refuses(url: str) -> bool:
    """Whether nothing listens at ``url``'s port."""
    try:
        get(url, timeout=2.0)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


@pytest.fixture
def exporter() -> StandInExporter:
    """A node with the default 4 GPUs, one of them MIG, three used by pods."""
    return StandInExporter("node-7")


@pytest.fixture
def fleet() -> Iterator[ExporterFleet]:
    """Two exporters served on free ports of 127.0.0.1."""
    with serve_exporters([StandInExporter("node-a"), StandInExporter("node-b")]) as served:
        yield served


# -- the payload ---------------------------------------------------------------------


def test_the_payload_parses_as_prometheus_text_with_about_ten_families(
    exporter: StandInExporter,
) -> None:
    families = list(text_string_to_metric_families(exporter.render(NOW)))
    types = {family.name: family.type for family in families}
    assert len(types) >= 10
    assert types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert types["DCGM_FI_DEV_GPU_TEMP"] == "gauge"
    assert all(family.documentation for family in families)
    assert sum(len(family.samples) for family in families) == exporter.samples
    # dcgm-exporter stamps no sample: the scraper gives them the scrape's time.
    assert all(sample.timestamp is None for family in families for sample in family.samples)


def test_every_family_has_help_then_type_then_its_samples(exporter: StandInExporter) -> None:
    lines = exporter.render(NOW).splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[number + 1].startswith(f"# TYPE {name} ")
            assert lines[number + 2].startswith(name + "{")


def test_labels_come_in_dcgm_exporters_order(exporter: StandInExporter) -> None:
    for _, labels, _ in samples(exporter.render(NOW)):
        names = list(labels)
        assert names == [name for name in LABEL_ORDER if name in names]
        assert names[:5] == list(LABEL_ORDER[:5])
        assert labels["Hostname"] == "node-7"
        assert labels["device"] == f"nvidia{labels['gpu']}"


def test_gpus_have_stable_uuids_that_differ_between_nodes() -> None:
    uuids = StandInExporter("node-7").gpu_uuids
    assert uuids == StandInExporter("node-7").gpu_uuids
    assert not set(uuids) & set(StandInExporter("node-8").gpu_uuids)
    assert len(set(uuids)) == 4
    for uuid in uuids:
        assert re.fullmatch(
            r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid
        )
    assert uuids[2] == gpu_uuid("node-7", 2)


def test_the_mig_gpu_reports_its_instances_and_no_utilisation(exporter: StandInExporter) -> None:
    found = samples(exporter.render(NOW))
    instances = {
        (labels["GPU_I_PROFILE"], labels["GPU_I_ID"])
        for name, labels, _ in found
        if name == "DCGM_FI_PROF_GR_ENGINE_ACTIVE" and "GPU_I_PROFILE" in labels
    }
    assert instances == {("3g.20gb", "1"), ("2g.10gb", "5"), ("1g.5gb", "13")}
    mig_gpus = {labels["gpu"] for _, labels, _ in found if "GPU_I_ID" in labels}
    assert mig_gpus == {"0"}
    # DCGM cannot measure GPU_UTIL in MIG mode; dcgm-exporter leaves the series out.
    util_gpus = {labels["gpu"] for name, labels, _ in found if name == "DCGM_FI_DEV_GPU_UTIL"}
    assert util_gpus == {"1", "2", "3"}
    # A device-wide field has one value on every instance of the GPU.
    temps = {
        value
        for name, labels, value in found
        if name == "DCGM_FI_DEV_GPU_TEMP" and labels["gpu"] == "0"
    }
    assert len(temps) == 1


def test_pods_label_the_gpus_they_use_and_idle_gpus_have_no_pod_labels(
    exporter: StandInExporter,
) -> None:
    pods: dict[str, set[str]] = {}
    for name, labels, _ in samples(exporter.render(NOW)):
        if name != "DCGM_FI_DEV_FB_USED":
            continue
        key = labels["gpu"] + "/" + labels.get("GPU_I_ID", "")
        if "pod" in labels:
            assert labels["container"] and labels["namespace"]
            pods.setdefault(key, set()).add(labels["pod"])
        else:
            pods.setdefault(key, set())
    assert pods == {
        "0/1": {"infer-node-7-1"},
        "0/5": set(),
        "0/13": set(),
        "1/": {"train-node-7-1"},
        "2/": {"notebook-node-7-a", "notebook-node-7-b"},
        "3/": set(),
    }


def test_a_time_sliced_gpu_repeats_each_series_once_per_pod_with_one_value(
    exporter: StandInExporter,
) -> None:
    by_family: dict[str, list[tuple[str, str]]] = {}
    for name, labels, value in samples(exporter.render(NOW)):
        if labels["gpu"] == "2":
            by_family.setdefault(name, []).append((labels["pod"], value))
    assert len(by_family) >= 10
    for name, series in by_family.items():
        assert [pod for pod, _ in series] == ["notebook-node-7-a", "notebook-node-7-b"], name
        assert series[0][1] == series[1][1], name


def test_without_mig_and_pods_every_gpu_is_whole_and_unlabelled() -> None:
    found = samples(StandInExporter("plain", gpus=2, mig=False, pods=False).render(NOW))
    assert {labels["gpu"] for _, labels, _ in found} == {"0", "1"}
    assert not [labels for _, labels, _ in found if {"GPU_I_ID", "pod"} & set(labels)]
    assert len([name for name, _, _ in found if name == "DCGM_FI_DEV_GPU_UTIL"]) == 2


def test_integers_print_as_integers_and_doubles_as_gos_six_decimals(
    exporter: StandInExporter,
) -> None:
    for name, _, value in samples(exporter.render(NOW)):
        if name == "DCGM_FI_DEV_POWER_USAGE" or name.startswith("DCGM_FI_PROF_"):
            assert re.fullmatch(r"\d+\.\d{6}", value), (name, value)
        else:
            assert re.fullmatch(r"\d+", value), (name, value)


def test_values_change_with_time_and_are_the_same_for_the_same_time(
    exporter: StandInExporter,
) -> None:
    assert exporter.render(NOW) == StandInExporter("node-7").render(NOW)
    before, after = samples(exporter.render(NOW)), samples(exporter.render(NOW + 60))
    changed = {
        name for (name, _, old), (_, _, new) in zip(before, after, strict=True) if old != new
    }
    assert {"DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= changed
    # Consecutive scrapes a second apart differ too.
    assert exporter.render(NOW) != exporter.render(NOW + 1)


def test_the_energy_counter_increases(exporter: StandInExporter) -> None:
    def energy(now: float) -> list[int]:
        return [
            int(value)
            for name, _, value in samples(exporter.render(now))
            if name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
        ]

    readings = [energy(NOW + step * 7.5) for step in range(200)]
    for earlier, later in itertools.pairwise(readings):
        assert all(new > old for old, new in zip(earlier, later, strict=True))
    # About the power drawn: between 55 and 400 W, in mJ.
    spent = [new - old for old, new in zip(energy(NOW), energy(NOW + 10), strict=True)]
    assert all(55_000 * 10 <= joules <= 400_000 * 10 for joules in spent)


def test_a_frozen_exporter_renders_one_payload_until_thawed(exporter: StandInExporter) -> None:
    exporter.freeze(NOW)
    assert exporter.frozen
    assert exporter.payload(NOW + 30) == exporter.payload(NOW + 90) == exporter.render(NOW)
    exporter.thaw()
    assert exporter.payload(NOW + 30) == exporter.render(NOW + 30)


# -- the server ----------------------------------------------------------------------


def test_metrics_and_health_are_served_with_dcgm_exporters_content_type(
    fleet: ExporterFleet,
) -> None:
    status, content_type, body = get(fleet.urls[0])
    assert status == 200
    assert content_type == CONTENT_TYPE
    assert {"Hostname": "node-a"}.items() <= samples(body.decode())[0][1].items()
    assert get(fleet.health_urls[1])[::2] == (200, b"OK")
    assert fleet.scrapes(0) == 1
    assert fleet.scrapes(1) == 0
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(fleet.urls[0].replace("/metrics", "/nothing"))
    assert missing.value.code == 404
    missing.value.close()


def test_one_connection_carries_many_scrapes_and_gzip_when_asked(fleet: ExporterFleet) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", fleet.ports[0], timeout=5)
    try:
        connection.request("GET", "/metrics")
        plain = connection.getresponse().read()
        connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = connection.getresponse()
        assert response.headers["Content-Encoding"] == "gzip"
        unzipped = gzip.decompress(response.read())
        connection.request("HEAD", "/metrics")
        head = connection.getresponse()
        assert head.read() == b""
        assert int(head.headers["Content-Length"]) > 0
    finally:
        connection.close()
    assert [name for name, _, _ in samples(plain.decode())] == [
        name for name, _, _ in samples(unzipped.decode())
    ]
    assert fleet.scrapes(0) == 3


def test_a_stopped_exporter_refuses_connections_and_comes_back_on_the_same_port(
    fleet: ExporterFleet,
) -> None:
    # given
    url, port = fleet.urls[0], fleet.ports[0]
    assert get(url)[0] == 200
    # when
    fleet.stop_exporter(0)
    # then
    assert not fleet.is_serving(0)
    assert refuses(url)
    assert get(fleet.urls[1])[0] == 200
    # when
    fleet.start_exporter(0)
    # then
    assert fleet.ports[0] == port
    assert get(url)[0] == 200


def test_a_frozen_exporter_serves_the_same_body_while_health_stays_ok(
    fleet: ExporterFleet,
) -> None:
    # given
    fleet.exporters[0].freeze()
    first = get(fleet.urls[0])[2]
    # when
    time.sleep(0.05)
    second = get(fleet.urls[0])[2]
    # then
    assert first == second
    assert get(fleet.health_urls[0])[::2] == (200, b"OK")
    fleet.exporters[0].thaw()
    assert get(fleet.urls[0])[2] != first


def test_a_paused_exporter_holds_requests_until_resumed(fleet: ExporterFleet) -> None:
    # given
    fleet.pause(0)
    # when, then
    with pytest.raises(TimeoutError):
        get(fleet.urls[0], timeout=0.3)
    assert get(fleet.urls[1])[0] == 200
    fleet.resume(0)
    assert get(fleet.urls[0])[0] == 200


def test_a_fleet_stopped_while_a_request_is_held_starts_again_on_its_ports() -> None:
    fleet = ExporterFleet([StandInExporter("again")])
    with fleet:
        fleet.pause(0)
        with pytest.raises(TimeoutError):
            get(fleet.urls[0], timeout=0.2)
    port = fleet.ports[0]
    assert refuses(fleet.urls[0])
    with fleet:
        fleet.resume(0)
        assert fleet.ports[0] == port
        assert get(fleet.urls[0])[0] == 200


def test_a_port_in_use_fails_the_start_and_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fleet = ExporterFleet([StandInExporter("a"), StandInExporter("b")], ports=[0, port])
        with pytest.raises(OSError):
            fleet.start()
        assert not fleet.is_serving(0)


def test_two_hundred_exporters_in_one_process_start_and_answer() -> None:
    exporters = [StandInExporter(f"node-{number}") for number in range(200)]
    with serve_exporters(exporters) as fleet:
        assert len(set(fleet.ports)) == 200
        for number, url in enumerate(fleet.urls):
            status, _, body = get(url)
            assert status == 200
            assert f'Hostname="node-{number}"' in body.decode()


# -- the command line ----------------------------------------------------------------


def test_the_command_line_prints_its_urls_and_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "telemetry.demo.exporter", "--port", "0", "--port", "0"]
    command += ["--node", "cli", "--gpus", "2", "--no-mig"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            line = process.stdout.readline()
            urls = re.findall(r"http://\S+/metrics", line)
            assert len(urls) == 2, line
            bodies = [get(url)[2].decode() for url in urls]
            assert 'Hostname="cli-1"' in bodies[0]
            assert 'Hostname="cli-2"' in bodies[1]
            assert "GPU_I_ID" not in bodies[0]
        finally:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    "flags",
    [["--gpus", "0"], ["--port", "70000"], ["--bogus"], ["--port", "1", "--port", "1"]],
)
def test_a_bad_flag_is_one_line_and_exit_2(flags: list[str]) -> None:
    command = [sys.executable, "-m", "telemetry.demo.exporter", *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
