"""Flower settings, read from its working directory by ``celery -A telemetry flower``.

Flower's task page shows name, uuid, state, received, runtime and worker by
default. A stored point and an invalid one both end in SUCCESS; the result
column tells them apart ('stored' or 'rejected: <reason>'), and the
exception column says why a FAILURE (a dead-lettered message) failed.
A ``--tasks_columns=…`` flag overrides this.
"""

tasks_columns = "name,uuid,state,result,exception,received,runtime,worker"
