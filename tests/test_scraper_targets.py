"""Targets: the file_sd format, its re-reading, stable offsets and shards."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from telemetry.errors import ConfigError
from telemetry.scraper.targets import (
    Shard,
    Target,
    TargetsFile,
    command_line_targets,
    parse_targets_file,
    target_url,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_yaml_targets_file_gives_urls_and_labels_with_the_instance(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.yml",
        "- targets: ['node-1:9400', 'node-2:9400']\n  labels: {cluster: a, rack: r1}\n"
        "- targets: ['node-3:9400']\n",
    )
    targets = parse_targets_file(path)
    assert [target.url for target in targets] == [
        "http://node-1:9400/metrics",
        "http://node-2:9400/metrics",
        "http://node-3:9400/metrics",
    ]
    assert targets[0].labels == {"instance": "node-1:9400", "cluster": "a", "rack": "r1"}
    assert targets[2].labels == {"instance": "node-3:9400"}


def test_a_json_targets_file_honours_scheme_and_path_and_drops_meta_labels(
    tmp_path: Path,
) -> None:
    groups = [
        {
            "targets": ["10.0.0.1:9400"],
            "labels": {
                "__scheme__": "https",
                "__metrics_path__": "/dcgm/metrics",
                "__meta_kubernetes_pod_name": "dcgm-exporter-abc",
                "job": "dcgm",
            },
        }
    ]
    path = write(tmp_path / "targets.json", json.dumps(groups))
    [target] = parse_targets_file(path)
    assert target.url == "https://10.0.0.1:9400/dcgm/metrics"
    assert target.labels == {"instance": "10.0.0.1:9400", "job": "dcgm"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{targets: [a:1]}", "expected a list"),
        ("- targets: a:1\n", "'targets' must be a list"),
        ("- targets: ['a:1']\n  labels: [x]\n", "'labels' must be an object"),
        ("- targets: ['a:1']\n  labels: {'bad-name': x}\n", "is not a label name"),
        ("- targets: ['a:1']\n  labels: {rack: 3}\n", "must be a string"),
        ("- targets: ['a:1']\n  label: {}\n", "unknown key"),
        ("- targets: ['ftp://a:1/x']\n", "http or https"),
        ("- targets: ['a:99999']\n", "port"),
        ("- [unclosed\n", "not valid JSON or YAML"),
    ],
)
def test_a_bad_targets_file_is_one_config_error_naming_the_problem(
    tmp_path: Path, text: str, words: str
) -> None:
    path = write(tmp_path / "targets.yml", text)
    with pytest.raises(ConfigError) as caught:
        parse_targets_file(path)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_targets_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        TargetsFile(tmp_path / "absent.yml").load()


def test_an_edited_file_is_read_again_and_a_bad_edit_keeps_the_last_good_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given
    path = write(tmp_path / "t.yml", "- targets: ['a:1']\n")
    watched = TargetsFile(path)
    assert [t.url for t in watched.load()] == ["http://a:1/metrics"]
    assert watched.changed() is None
    # when: a good edit
    write(path, "- targets: ['a:1', 'b:2']\n")
    os.utime(path, ns=(1, 1))
    changed = watched.changed()
    # then
    assert changed is not None and [t.url for t in changed] == [
        "http://a:1/metrics",
        "http://b:2/metrics",
    ]
    # when: a bad edit, looked at twice
    write(path, "- targets: [[[\n")
    os.utime(path, ns=(2, 2))
    caplog.clear()
    with caplog.at_level(logging.ERROR, "telemetry.scraper.targets"):
        assert watched.changed() is None
        assert watched.changed() is None
    # then: one line, and the last good list stands
    assert len(caplog.records) == 1
    assert "keeping the last good list of 2" in caplog.records[0].getMessage()


def test_command_line_targets_take_host_port_or_a_url() -> None:
    targets = command_line_targets(["node:9400", "https://gpu.example:8443/m"])
    assert [t.url for t in targets] == ["http://node:9400/metrics", "https://gpu.example:8443/m"]
    assert targets[1].labels == {"instance": "gpu.example:8443"}
    with pytest.raises(ConfigError):
        target_url("")


def test_offsets_are_stable_spread_over_the_interval_and_inside_it() -> None:
    targets = [Target(f"http://node-{n}:9400/metrics") for n in range(1000)]
    offsets = [target.offset_s(15.0) for target in targets]
    assert offsets == [Target(t.url).offset_s(15.0) for t in targets]
    assert all(0 <= offset < 15.0 for offset in offsets)
    # spread: every tenth of the interval holds some targets, none holds a crowd
    tenths = [sum(1 for o in offsets if k * 1.5 <= o < (k + 1) * 1.5) for k in range(10)]
    assert min(tenths) > 60 and max(tenths) < 140


def test_shards_split_targets_without_overlap_or_gaps() -> None:
    targets = [Target(f"http://node-{n}:9400/metrics") for n in range(300)]
    shards = [Shard(index, 3) for index in range(3)]
    owners = [[s for s in shards if t.in_shard(s)] for t in targets]
    assert all(len(owner) == 1 for owner in owners)
    sizes = [sum(1 for t in targets if t.in_shard(s)) for s in shards]
    assert min(sizes) > 70


@pytest.mark.parametrize("text", ["3/3", "1/0", "a/b", "1"])
def test_a_bad_shard_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        Shard.parse(text)
