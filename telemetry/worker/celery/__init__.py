"""The one door to Celery's and kombu's internals. No module outside this folder touches them.

The collector relies on these private or semi-private parts of Celery 5.7
(pinned to ``celery>=5.7,<5.8`` in pyproject.toml for that reason), each for
a reason the module that uses it gives:

* ``celery.worker.strategy.default``, Celery's per-task message handler, and
  the strategy signature ``(task, app, consumer, **options)`` returning
  ``handle(message, body, ack, reject, callbacks)``: the batch path sits in
  front of that handler (:mod:`.strategy`);
* the worker consumer (``celery.worker.consumer.Consumer``): its ``pool``,
  ``timer.call_after``, ``call_soon``, ``connection_errors`` and
  ``event_dispatcher``, which :class:`.strategy.ConsumerPort` narrows to
  what the batch path needs; the promises Celery makes per message
  (``call_soon_ack``, ``_restore_prefetch_count_after_connection_restart``,
  and ``on_task_message`` as the callbacks), made as Celery makes them for
  a message taken before its handler (:class:`.message.OfferedMessage`); and
  ``create_task_handler``, ``update_strategies`` with the ``strategies`` it
  fills, ``connection_for_write`` / ``ensure_connected`` and the hooks
  ``on_decode_error``, ``on_invalid_task``, ``on_unknown_message`` and
  ``on_unknown_task``, which :class:`.intake.GuardedConsumer` wraps so that
  every message is seen first and no bad one is lost;
* the consumer's ``connect`` and ``hub`` (``add_reader``), to read the
  socket with a :class:`.reader.DrainingReader` instead of kombu's
  ``Transport.on_readable`` and to wake the loop on signals, through what
  py-amqp's ``Connection.drain_events`` does for each frame
  (``transport.read_frame``, ``on_inbound_frame``, ``connected``), and
  py-amqp's ``TCPTransport._quick_recv``, which a :class:`.reader.ReadAhead`
  replaces during a run;
* kombu's ``Message.ack(multiple=True)`` and its ``_state`` field, to settle
  a run of deliveries with one multiple-ack (:class:`.acks.Unsettled`);
* kombu's ``Message._decoded_cache``, where
  :func:`.bodies.decode_plain_json` leaves a body it decoded;
* the event dispatcher's ``mutex``, ``producer``, ``exchange``, ``clock``
  (kombu's ``LamportClock``, its ``mutex`` and ``value``), ``hostname``,
  ``pid``, ``serializer``, ``headers`` and ``delivery_mode``, with
  ``celery.utils.time.utcoffset`` and ``celery.utils.saferepr``, to send a
  batch's task events as one ``task.multi`` message (:mod:`.events`);
* ``celery.worker.state.should_stop``, ``celery.apps.worker.Worker``
  (``emit_banner``, ``install_platform_tweaks``,
  ``install_worker_term_handler``), ``celery.utils.nodenames``,
  ``celery.concurrency.prefork.TaskPool``, ``celery.utils.imports.import_from_cwd``
  and ``celery.app.amqp.AMQP`` with its ``Connection`` attribute, for the
  worker process (:mod:`.process`).

One message, five names: each stage it passes has its own type, and the
rest of the worker refers here instead of explaining them again.

1. :class:`.message.ReceivedMessage`: kombu's message as the consumer takes
   it from the queue, typed as far as our code reads it
   (:class:`.acks.KombuMessage` adds the one field the multiple-ack reads).
2. :class:`.message.OfferedMessage`: a task message offered to the batch
   path, by the consumer before Celery's handler or by the task's strategy,
   with the means to settle it (ack, requeue, hand to Celery's handler).
3. :class:`telemetry.worker.ingest.DecodedMessage`: its id and task
   arguments, plain data: what the write path takes and a pool process can
   be sent. Celery's per-task path makes one from a running task.
4. :class:`telemetry.worker.buffer.HeldMessage`: an offered message and its
   decoded form, held for a batch (the buffer) or as a suspect (the
   quarantine) until a write settles it.
5. :class:`.events.SettledMessage`: a message a batch settled, as its
   ``task-received`` and ``task-succeeded`` events describe it to Flower.

Only modules of ``telemetry/worker/`` import from this folder, and nothing
else in the package imports Celery's or kombu's internals
(``tests/test_architecture.py``). ``tests/test_celery_door.py`` checks that
each part above is still where this folder expects it, so a Celery upgrade
that moves one fails a test instead of silently falling back to slower paths.
"""
