"""The collector's Celery settings: the delivery contract and the worker's shape.

The Celery app (:mod:`telemetry.worker.app`) loads this module first, then a
``celeryconfig`` module from the working directory if there is one (the
repository's own ``celeryconfig.py`` is where a user changes these).
Collector settings (``INSTANCE_ID``, ``BATCH_SIZE``, …) are applied on top
when a worker starts. The broker URL comes from ``CELERY_BROKER_URL``,
which Celery itself reads, or from the file ``CELERY_BROKER_URL_FILE`` names
(:mod:`telemetry.worker.app` puts it in); the default here is the settings
module's.
"""

from telemetry.broker.topology import Topology
from telemetry.config import DEFAULT_BROKER_URL, DEFAULT_QUEUE_NAME, load_settings

broker_url = DEFAULT_BROKER_URL
# Keep retrying a lost broker connection, at start-up too, instead of exiting.
broker_connection_retry_on_startup = True
broker_connection_max_retries = None

# Producers get a publisher confirm for every task they send. Socket reads and
# writes time out: after a broker restart a synchronous basic.qos read can wait
# for a reply that never comes, blocking the worker for good; with a time-out
# it reconnects (docs/reliability.md).
broker_transport_options = {"confirm_publish": True, "read_timeout": 10, "write_timeout": 10}
# After a reconnect Celery would lower the prefetch and raise it again with one
# basic.qos per ack; that is where the worker hung above, so keep it constant.
worker_enable_prefetch_count_reduction = False

task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
# No result backend: outcomes are in MongoDB, the statistics and Flower.
result_backend = None
task_ignore_result = True

# The delivery contract. Ack only after the task body returned (the data is
# durable); a task that fails is rejected without requeue, so RabbitMQ
# dead-letters it instead of Celery silently acking it; a message whose worker
# died is requeued.
task_acks_late = True
task_acks_on_failure = False
task_acks_on_timeout = False
task_reject_on_worker_lost = True

# The work is I/O-bound (a MongoDB round trip per point): threads share one
# MongoClient and one set of counters per worker. docs/performance.md has the figures.
worker_pool = "threads"
# Set when a worker starts, from QUEUE_WORKERS and QUEUE_BUFFER_SIZE (or -c and
# --prefetch-multiplier); left unset here so `celery worker` passes None for them.
worker_concurrency = None
worker_prefetch_multiplier = None
worker_consumer = "telemetry.worker.consumer:TelemetryConsumer"
# A task running when the broker connection drops can no longer be acked (its
# delivery tag died with the channel) and will be redelivered, so Celery is told
# to cancel it. The threads pool cannot cancel (it logs that it failed to); the
# task finishes and its redelivery is stored as a counted duplicate.
worker_cancel_long_running_tasks_on_connection_loss = True

# Events make every task visible in Flower without extra flags.
worker_send_task_events = True
task_send_sent_event = False

# Every declaration of the queue must carry its dead-letter arguments, or
# RabbitMQ refuses it; workers replace this with TELEMETRY_QUEUE's settings.
task_queues = [Topology.of(load_settings(env={})).work_queue()]
task_default_queue = DEFAULT_QUEUE_NAME
task_default_exchange = DEFAULT_QUEUE_NAME
task_default_routing_key = DEFAULT_QUEUE_NAME
task_create_missing_queues = False
