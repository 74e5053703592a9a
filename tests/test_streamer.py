"""The streamer with a fake publisher: pacing, limits, bad rows, backpressure, stop, options."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telemetry.broker.messages import new_task_id
from telemetry.broker.publisher import TaskMessage
from telemetry.cli import SAMPLE_CSV
from telemetry.config import Settings, load_settings
from telemetry.dcgm import Row
from telemetry.errors import ConfigError
from telemetry.streamer.run import Streamer, StreamOptions, options_from
from tests.fakes import FakePublisher

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def build(row: Row, stamp: datetime) -> TaskMessage:
    point = dict(row.point.wire(), timestamp=stamp.isoformat())
    return TaskMessage(f"{row.line}", {}, {}, {"point": point})


def test_sample_file_is_sent_whole_with_csv_timestamps() -> None:
    # given
    publisher = FakePublisher()
    options = StreamOptions(paths=[SAMPLE_CSV], timestamps="csv")
    # when
    report = Streamer(publisher, build, options).run()
    # then
    assert (report.rows_read, report.rows_sent, report.confirmed, report.errors) == (
        2470,
        2470,
        2470,
        0,
    )
    assert publisher.sent[0].body["point"]["timestamp"] == "2025-07-18T20:42:34+00:00"


def test_now_timestamps_stamp_each_point_when_it_is_sent() -> None:
    publisher = FakePublisher()
    before = datetime.now(UTC)
    Streamer(publisher, build, StreamOptions(paths=[SAMPLE_CSV], limit=3)).run()
    stamps = [datetime.fromisoformat(m.body["point"]["timestamp"]) for m in publisher.sent]
    assert len(stamps) == 3 and all(stamp >= before for stamp in stamps)


def test_limit_stops_after_n_points_and_loop_repeats_the_file(tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    small.write_text("\n".join(SAMPLE_CSV.read_text().splitlines()[:4]) + "\n")
    publisher = FakePublisher()
    report = Streamer(publisher, build, StreamOptions(paths=[small], loop=True, limit=10)).run()
    assert report.rows_sent == 10
    assert [m.task_id for m in publisher.sent] == ["2", "3", "4"] * 3 + ["2"]


def test_bad_rows_are_counted_listed_and_skipped(tmp_path: Path) -> None:
    lines = SAMPLE_CSV.read_text().splitlines()[:6]
    lines[2] = lines[2].replace('"GPU-', '"XX').replace('","0","DCGM', '","hot","DCGM')
    lines[4] = lines[4].replace("2025-07-18T20:42:34Z", "not a time")
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    report = Streamer(FakePublisher(), build, StreamOptions(paths=[path])).run()
    assert (report.rows_sent, report.errors) == (4, 1)
    assert report.bad_rows == [f"{path}:5: timestamp: not an RFC 3339 time: 'not a time'"]


class FakeClock:
    """Time that passes only when slept."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_paces_sending() -> None:
    clock = FakeClock()
    options = StreamOptions(paths=[SAMPLE_CSV], rate=100.0, limit=50)
    report = Streamer(FakePublisher(), build, options, sleep=clock.sleep, clock=clock).run()
    # 50 rows at 100/s: the first goes at once, the other 49 a hundredth of a second apart.
    assert clock.now - 1000.0 == pytest.approx(0.49)
    assert report.rate == pytest.approx(50 / 0.49)


def test_backlog_over_the_bound_pauses_with_growing_waits() -> None:
    # given: a queue that drains only after four looks
    depths = iter([500, 500, 500, 500, 10])
    slept: list[float] = []
    options = StreamOptions(paths=[SAMPLE_CSV], limit=5, max_backlog=100, backlog_check_every=5)
    streamer = Streamer(
        FakePublisher(), build, options, backlog=lambda: next(depths), sleep=slept.append
    )
    # when
    report = streamer.run()
    # then
    assert report.backpressure_pauses == 4
    assert slept == [0.1, 0.2, 0.4, 0.8]


def test_stop_event_ends_the_run_and_settles_what_was_sent() -> None:
    stop = threading.Event()
    publisher = FakePublisher()

    def build_then_stop(row: Row, stamp: datetime) -> TaskMessage:
        if row.line == 11:
            stop.set()
        return build(row, stamp)

    report = Streamer(
        publisher, build_then_stop, StreamOptions(paths=[SAMPLE_CSV]), stop=stop
    ).run()
    assert report.stopped
    assert report.rows_sent == report.confirmed == 10


def test_options_come_from_the_settings_and_paths_win_over_csv_path() -> None:
    env = {"CSV_PATH": "/data/a.csv", "LOOP_MODE": "true", "STREAM_INTERVAL": "0.5"}
    settings = load_settings(env=env)
    options = options_from(settings, [])
    assert (options.paths, options.loop, options.interval_s) == ([Path("/data/a.csv")], True, 0.5)
    assert options.max_backlog == 100 * settings.queue_buffer_size
    flagged = load_settings(
        env=env, overrides={"loop_mode": False, "stream_interval_s": 0.0, "stream_max_backlog": 7}
    )
    options = options_from(flagged, [Path("b.csv")], timestamps="csv")
    assert (options.paths, options.loop, options.interval_s, options.max_backlog) == (
        [Path("b.csv")],
        False,
        0.0,
        7,
    )
    assert options.timestamps == "csv"


def test_no_csv_file_is_a_one_line_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="no CSV file given"):
        options_from(settings, [])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOOP_MODE": "sometimes"}, "invalid LOOP_MODE='sometimes'"),
        ({"STREAM_INTERVAL": "-1"}, "invalid STREAM_INTERVAL='-1'"),
        ({"STREAM_MAX_BACKLOG": "0"}, "invalid STREAM_MAX_BACKLOG='0'"),
    ],
)
def test_bad_stream_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={"CSV_PATH": "a.csv", **env})


def test_task_ids_are_distinct_version_4_uuids_also_after_a_fork() -> None:
    ids = [new_task_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its first id must not be the parent's next one
        os.write(write_end, new_task_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read_end, 64).decode()
    assert from_child != new_task_id()
