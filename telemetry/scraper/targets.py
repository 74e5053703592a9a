"""Which endpoints to scrape: ``--target`` URLs and a Prometheus file_sd targets file.

A targets file is what Prometheus's ``file_sd_configs`` read: a JSON or YAML
list of groups, each ``{"targets": ["host:port", …], "labels": {…}}``. A
target without a scheme is ``http://host:port/metrics``; a group may set
``__scheme__`` and ``__metrics_path__`` as in Prometheus. Other labels whose
name starts with ``__`` are discovery metadata and are dropped; the rest are
added to every point of the group's targets, with ``instance`` (the target's
``host:port``) unless the group sets one.

Every target has a stable hash of its URL. It places the target's first
scrape within the interval (so a thousand targets do not fire at once) and
picks its shard (so ``--shard i/N`` scrapers split a fleet without overlap).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from telemetry.errors import ConfigError

logger = logging.getLogger("telemetry.scraper.targets")

DEFAULT_SCHEME = "http"
DEFAULT_PATH = "/metrics"
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class Target:
    """One endpoint to scrape and the labels its points get."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> int:
        """A hash of the URL that is the same in every process and on every machine."""
        return int.from_bytes(hashlib.sha256(self.url.encode()).digest()[:8], "big")

    def offset_s(self, interval_s: float) -> float:
        """When in each interval this target is scraped, from the start of the scraper."""
        return (self.digest >> 11) / float(1 << 53) * interval_s

    def in_shard(self, shard: Shard | None) -> bool:
        """Whether this target belongs to ``shard`` (every target does when there is none)."""
        return shard is None or self.digest % shard.count == shard.index


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: ``--shard 0/3``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> Shard | None:
        """``"i/N"`` as a shard, or None for no sharding; raises :class:`ConfigError`."""
        if text is None:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
            raise ConfigError(f"invalid --shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/3")
        return cls(int(match[1]), int(match[2]))


def target_url(text: str, scheme: str = DEFAULT_SCHEME, path: str = DEFAULT_PATH) -> str:
    """A full URL for ``host:port`` or a URL; raises :class:`ConfigError` for anything else."""
    raw = text.strip()
    if "://" not in raw:
        raw = f"{scheme}://{raw}{path if path.startswith('/') else '/' + path}"
    parts = urlsplit(raw)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"target {text!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"target {text!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname or port == 0:
        raise ConfigError(f"target {text!r}: expected host:port or http://host:port/path")
    return raw


def instance_of(url: str) -> str:
    """The ``host:port`` of a URL, as Prometheus names a target's ``instance``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def command_line_targets(texts: Iterable[str]) -> list[Target]:
    """The ``--target`` flags as targets, each labelled with its ``instance``."""
    targets = []
    for text in texts:
        url = target_url(text)
        targets.append(Target(url, {"instance": instance_of(url)}))
    return targets


def parse_targets_file(path: Path) -> list[Target]:
    """Every target of a file_sd file; raises :class:`ConfigError` naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the targets file ({exc})") from None
    try:
        groups: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not valid JSON or YAML ({first_line})") from None
    if groups is None:
        return []
    if not isinstance(groups, list):
        raise ConfigError(f"{path}: expected a list of {{targets: [...], labels: {{...}}}} groups")
    targets: dict[str, Target] = {}
    for number, group in enumerate(groups, 1):
        for target in _group_targets(group, f"{path}: group {number}"):
            targets.setdefault(target.url, target)
    return list(targets.values())


def _group_targets(group: Any, where: str) -> list[Target]:
    if not isinstance(group, dict):
        raise ConfigError(f"{where}: expected an object with 'targets' and 'labels'")
    unknown = set(group) - {"targets", "labels"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    hosts = group.get("targets")
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise ConfigError(f"{where}: 'targets' must be a list of host:port strings")
    labels = group.get("labels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}: 'labels' must be an object of name: value")
    for name, value in labels.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise ConfigError(f"{where}: {name!r} is not a label name")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: label {name} must be a string, got {value!r}")
    scheme = labels.get("__scheme__", DEFAULT_SCHEME)
    path = labels.get("__metrics_path__", DEFAULT_PATH)
    kept = {name: value for name, value in labels.items() if not name.startswith("__")}
    targets = []
    for host in hosts:
        try:
            url = target_url(host, scheme, path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        targets.append(Target(url, {"instance": instance_of(url), **kept}))
    return targets


class TargetsFile:
    """A targets file, read again whenever it changes; a bad edit keeps the last good list."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._targets: list[Target] = []
        self._bad_version: tuple[int, int, int] | None = None

    def load(self) -> list[Target]:
        """Read the file now; raises :class:`ConfigError` if it is missing or bad."""
        self._seen = self._version()
        self._targets = parse_targets_file(self.path)
        return self._targets

    def changed(self) -> list[Target] | None:
        """The new list if the file changed and is good; None if unchanged or bad (logged once)."""
        try:
            version = self._version()
        except ConfigError as exc:
            version = (0, 0, 0)
            if self._bad_version != version:
                logger.error("%s; keeping the last good list of %d", exc, len(self._targets))
                self._bad_version = version
            return None
        if version == self._seen or version == self._bad_version:
            return None
        try:
            targets = parse_targets_file(self.path)
        except ConfigError as exc:
            logger.error("%s; keeping the last good list of %d targets", exc, len(self._targets))
            self._bad_version = version
            return None
        self._seen, self._bad_version, self._targets = version, None, targets
        logger.warning("Targets file %s changed: %d targets", self.path, len(targets))
        return targets

    def _version(self) -> tuple[int, int, int]:
        try:
            status = self.path.stat()
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the targets file ({exc})") from None
        return (status.st_mtime_ns, status.st_size, status.st_ino)


def merge_targets(*lists: Sequence[Target]) -> list[Target]:
    """One list, each URL once (the first wins)."""
    merged: dict[str, Target] = {}
    for targets in lists:
        for target in targets:
            merged.setdefault(target.url, target)
    return list(merged.values())
