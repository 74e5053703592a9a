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

Retries after a storage failure follow Celery's own options of the ingest
task (``max_retries``, ``retry_backoff``, ``retry_backoff_max``,
``retry_jitter``). Set here they win over ``MAX_RETRIES``,
``RETRY_BACKOFF_S`` and ``RETRY_BACKOFF_MAX_S``, and the worker says so at
start (docs/failure-semantics.md#retries-and-backoff)::

    task_annotations = {"telemetry.ingest": {"max_retries": 10, "retry_backoff_max": 120}}
"""
