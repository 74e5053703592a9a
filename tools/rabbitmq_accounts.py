"""RabbitMQ accounts for one work queue: a producer, a worker and an operator, each with
only the rights it needs. docs/security.md#accounts-and-permissions explains each right;
``tests/integration/test_accounts.py`` creates the layout with this module and checks
what each account can and cannot do, so the page, the tool and the test stay one.

RabbitMQ grants three rights per virtual host, each a regular expression over the
names of exchanges and queues alike: configure (declare, delete), write (publish to
an exchange, bind a queue) and read (consume, get, purge a queue; bind from an
exchange). Topic permissions narrow write and read on a topic exchange by routing
key; the only topic exchange here is ``celeryev``, the task events.

Command line (``rabbitmqctl`` must reach the broker as an administrator)::

    python -m tools.rabbitmq_accounts show   --queue telemetry
    python -m tools.rabbitmq_accounts create --queue telemetry --vhost telemetry \\
        --host rabbitmq:5672 --secrets-dir deploy/secrets/accounts \\
        [--admin-url amqp://admin:PASSWORD@rabbitmq:5672/telemetry]
    python -m tools.rabbitmq_accounts delete --queue telemetry --vhost telemetry

``create`` adds the virtual host and the three users with random passwords (or
sets new ones), sets their rights, and writes each account's broker URL to
``<secrets-dir>/<role>_broker_url`` (mode 0600), ready for
``CELERY_BROKER_URL_FILE``. With ``--admin-url`` it also declares the queues and
exchanges, so producers can start before any worker has. ``--ctl`` gives the
``rabbitmqctl`` command to run, e.g. ``"docker compose exec -T rabbitmq rabbitmqctl"``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from telemetry.broker.connect import Broker, connect
from telemetry.broker.shards import ShardLayout
from telemetry.broker.topology import Declarable
from telemetry.config import load_settings

# Celery's names: the control mailbox (a fanout exchange), the exchange replies go to,
# the task events' topic exchange, and the queues each of them gets.
MAILBOX = r"celery\.pidbox"
REPLIES = r"reply\.celery\.pidbox"
REPLY_QUEUES = r".+\.reply\.celery\.pidbox"
EVENTS = "celeryev"
EVENT_QUEUES = r"celeryev\..+"
# A worker's node is telemetry@<INSTANCE_ID> (keep the prefix when naming one with -n);
# a scraper's is scraper@<INSTANCE_ID>. Each node consumes a queue named <node>.celery.pidbox.
WORKER_NODES = r"telemetry@.+\.celery\.pidbox"
SCRAPER_NODES = r"scraper@.+\.celery\.pidbox"
NOTHING = "^$"


@dataclass(frozen=True)
class Account:
    """One broker user and its rights on the collector's virtual host."""

    role: str
    user: str
    configure: str
    write: str
    read: str
    # On the task-event exchange, by routing key.
    events_write: str = NOTHING
    events_read: str = NOTHING
    # RabbitMQ user tags: "management" lets Flower's Broker tab read the management API.
    tags: tuple[str, ...] = ()


def _any_of(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def layout(queue_name: str, prefix: str = "telemetry") -> list[Account]:
    """The three accounts of the work queue ``queue_name``, users named ``<prefix>-<role>``."""
    # The queue itself, or one of its shards (QUEUE_SHARDS > 1): <q>.<i>-of-<N>.
    q = re.escape(queue_name) + r"(\.\d+-of-\d+)?"
    dlx, dead, retry, delay = rf"{q}\.dlx", rf"{q}\.dead", rf"{q}\.retry", rf"{q}\.retry\.\d+ms"
    producer = Account(
        "producer",
        f"{prefix}-producer",
        # Its own status queue (a scraper answers `telemetry stats`); nothing else.
        configure=_any_of(SCRAPER_NODES),
        # Publish points; reply to `telemetry stats`; bind its status queue.
        write=_any_of(q, REPLIES, SCRAPER_NODES),
        # Bind its status queue to the mailbox, and consume it.
        read=_any_of(MAILBOX, SCRAPER_NODES),
    )
    worker = Account(
        "worker",
        f"{prefix}-worker",
        # Declare its queues and exchanges, its mailbox queue, the event exchange.
        configure=_any_of(q, dlx, dead, retry, delay, EVENTS, MAILBOX, REPLIES, WORKER_NODES),
        # Retries (to <q>.retry), events, control replies; bindings of its queues;
        # and the dead-letter and work exchanges, which creating a queue that
        # dead-letters into them requires.
        write=_any_of(q, dlx, dead, retry, delay, EVENTS, REPLIES, WORKER_NODES),
        # Consume the work queue and its mailbox queue; bind from its exchanges.
        # Not <q>.dead: dead letters are the operator's.
        read=_any_of(q, dlx, retry, delay, MAILBOX, WORKER_NODES),
        events_write=r"^(task|worker)\.",
    )
    operator = Account(
        "operator",
        f"{prefix}-operator",
        # The mailbox and a reply queue per question (stats, Flower, celery inspect);
        # Flower's event queue.
        configure=_any_of(MAILBOX, REPLIES, REPLY_QUEUES, EVENTS, EVENT_QUEUES),
        # dlq replay publishes to the work exchange; questions go to the mailbox.
        write=_any_of(q, MAILBOX, REPLY_QUEUES, EVENT_QUEUES),
        # dlq list/show/replay/purge; answers; events for Flower.
        read=_any_of(dead, REPLIES, REPLY_QUEUES, EVENTS, EVENT_QUEUES),
        events_read=".*",
        tags=("management",),
    )
    return [producer, worker, operator]


Ctl = Callable[[Sequence[str], str | None], str]
"""Runs ``rabbitmqctl ARGS`` with ``input`` on its stdin; returns its stdout."""


def rabbitmqctl(command: Sequence[str] = ("rabbitmqctl",)) -> Ctl:
    """A :data:`Ctl` running ``command`` (``rabbitmqctl``, or a longer prefix)."""

    def run(args: Sequence[str], stdin: str | None = None) -> str:
        result = subprocess.run(
            [*command, "-q", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            verb = args[0] if args else ""
            raise AccountsError(f"rabbitmqctl {verb} failed: {' '.join(result.stderr.split())}")
        return result.stdout

    return run


class AccountsError(RuntimeError):
    """Raised when rabbitmqctl refuses a step; the message is one line."""


def broker_url(user: str, password: str, host: str, vhost: str) -> str:
    """A ``CELERY_BROKER_URL`` for ``user`` on ``vhost``."""
    quoted = [urllib.parse.quote(part, safe="") for part in (user, password, vhost)]
    return f"amqp://{quoted[0]}:{quoted[1]}@{host}/{quoted[2]}"


def create(
    accounts: Sequence[Account], vhost: str, ctl: Ctl, host: str = "localhost:5672"
) -> dict[str, str]:
    """Add the virtual host and the accounts (new random passwords each time), set their
    rights; return each role's broker URL."""
    if vhost not in ctl(["list_vhosts", "name"], None).split():
        ctl(["add_vhost", vhost], None)
    existing = {line.split()[0] for line in ctl(["list_users"], None).splitlines() if line.strip()}
    urls = {}
    for account in accounts:
        password = secrets.token_urlsafe(24)
        verb = "change_password" if account.user in existing else "add_user"
        # From stdin: a password in the arguments would show in `ps`.
        ctl([verb, account.user], password)
        ctl(["set_user_tags", account.user, *account.tags], None)
        rights = [account.configure, account.write, account.read]
        ctl(["set_permissions", "-p", vhost, account.user, *rights], None)
        topic = [EVENTS, account.events_write, account.events_read]
        ctl(["set_topic_permissions", "-p", vhost, account.user, *topic], None)
        urls[account.role] = broker_url(account.user, password, host, vhost)
    return urls


def delete(accounts: Sequence[Account], vhost: str | None, ctl: Ctl) -> None:
    """Delete the accounts, and the virtual host with everything in it if one is given."""
    existing = {line.split()[0] for line in ctl(["list_users"], None).splitlines() if line.strip()}
    for account in accounts:
        if account.user in existing:
            ctl(["delete_user", account.user], None)
    if vhost is not None and vhost in ctl(["list_vhosts", "name"], None).split():
        ctl(["delete_vhost", vhost], None)


def declare_topology(admin_url: str, topology: Declarable) -> None:
    """Declare the work queue's exchanges and queues (every shard's) as an account that may
    configure them."""
    connection = connect(Broker(admin_url))
    try:
        topology.declare(connection.channel())
    finally:
        connection.release()


def write_urls(urls: dict[str, str], directory: Path) -> list[Path]:
    """Each role's URL in ``<directory>/<role>_broker_url``, readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for role, url in urls.items():
        path = directory / f"{role}_broker_url"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(url + "\n")
        os.chmod(path, 0o600)
        written.append(path)
    return written


def render(accounts: Sequence[Account]) -> str:
    """The layout as text: each account's rights, as rabbitmqctl takes them."""
    lines = []
    for account in accounts:
        lines += [
            f"{account.role} ({account.user})",
            f"  configure  {account.configure}",
            f"  write      {account.write}",
            f"  read       {account.read}",
            f"  {EVENTS} topic write {account.events_write}  read {account.events_read}",
        ]
        if account.tags:
            lines.append(f"  tags       {' '.join(account.tags)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module's docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.rabbitmq_accounts",
        description="The collector's RabbitMQ accounts: producer, worker, operator.",
    )
    parser.add_argument("action", choices=["show", "create", "delete"])
    parser.add_argument("--queue", default="telemetry", help="the work queue (TELEMETRY_QUEUE)")
    parser.add_argument("--prefix", default="telemetry", help="users are <prefix>-<role>")
    parser.add_argument("--vhost", default="telemetry", help="the virtual host")
    parser.add_argument("--host", default="localhost:5672", help="host:port in the URLs")
    parser.add_argument("--secrets-dir", type=Path, help="where create writes the URLs")
    parser.add_argument("--admin-url", help="create: declare the queues as this account too")
    parser.add_argument("--ctl", default="rabbitmqctl", help="the rabbitmqctl command")
    args = parser.parse_args(argv)
    accounts = layout(args.queue, args.prefix)
    if args.action == "show":
        print(render(accounts))
        return 0
    ctl = rabbitmqctl(shlex.split(args.ctl))
    try:
        if args.action == "delete":
            delete(accounts, args.vhost, ctl)
            return 0
        if args.secrets_dir is None:
            parser.error("create needs --secrets-dir: the passwords are written nowhere else")
        urls = create(accounts, args.vhost, ctl, args.host)
        for path in write_urls(urls, args.secrets_dir):
            print(f"wrote {path}")
        if args.admin_url:
            # Queue type, delivery limit, retries and shards from the environment, as the
            # workers'.
            settings = load_settings(overrides={"queue_name": args.queue})
            declare_topology(args.admin_url, ShardLayout.of(settings))
            print(f"declared the queues of {args.queue!r} in {args.vhost!r}")
    except AccountsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
