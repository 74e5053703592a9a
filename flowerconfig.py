"""Flower settings, read from its working directory by ``celery -A telemetry flower``.

Flower's task page shows name, uuid, state, received, runtime and worker by
default. A stored point and an invalid one both end in SUCCESS; the result
column tells them apart ('stored' or 'rejected: <reason>'), and the
exception column says why a FAILURE (a dead-lettered message) failed.
A ``--tasks_columns=…`` flag overrides this.

The logins come from ``FLOWER_BASIC_AUTH`` or the file ``FLOWER_BASIC_AUTH_FILE``
names (a Docker or Kubernetes secret), by the package's one rule for secrets
in files (:func:`telemetry.config.flower_logins`). Flower reads
``FLOWER_BASIC_AUTH`` on its own too; this file wins over it, with the same
value. A ``--basic_auth=…`` flag wins over both.
"""

import sys

from telemetry.config import flower_logins
from telemetry.errors import ConfigError

tasks_columns = "name,uuid,state,result,exception,received,runtime,worker"

try:
    basic_auth = flower_logins()
except ConfigError as exc:
    # One line and exit code 2, as the telemetry commands say it; never the value.
    print(f"telemetry flower: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
