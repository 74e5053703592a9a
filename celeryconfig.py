"""Your Celery settings for the telemetry collector: edit this file, not the package.

``celery -A telemetry …`` loads the collector's own Celery settings first
(``telemetry/worker/celery_settings.py``: the delivery contract, the threads
pool, task events), then this module when it is in the working directory,
so anything set here wins. Collector settings (``BATCH_SIZE`` and friends)
are environment variables and flags instead: see docs/configuration.md.

Change the delivery settings (``task_acks_late``, ``task_acks_on_failure``,
``task_reject_on_worker_lost``) only if you mean to give up
at-least-once delivery.

Examples::

    worker_send_task_events = False   # no task events: Flower shows no tasks
    broker_heartbeat = 30
"""
