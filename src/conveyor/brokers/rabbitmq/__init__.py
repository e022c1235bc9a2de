"""The RabbitMQ broker: RabbitMQ delivers, a record store keeps (docs/rabbitmq.md).

RabbitMQ has no lookup or delete by id, no atomic step over several queues and no
key-value storage, so the job records, fencing tokens, results, unique keys,
dependencies, delays, leases, locks, cache and events live in a **record store**: a
broker of another kind (``redis://``, ``postgresql://`` or ``sqlite://``), opened from
the ``store`` URL and driven through its primitives, unchanged. Every rule of the port
(atomic batches, fenced finishes, priorities, pauses, leases) is therefore the store's.

RabbitMQ carries **tickets**: a message whose body is job ids (one, or a few of a big
batch, ``_link``), published to their queue (a durable quorum queue) with publisher
confirms: on enqueue (queued or scheduled, not parked) while the records are written, and
after the records are written on a retry, a release, a promote, a requeue and a resume,
and for the jobs a finish, cancel, purge or delete releases from their dependencies
(``_waits``). A worker consumes its queues with manual acknowledgements and a prefetch
sized like its buffer. A fetch's look claims from the store (highest priority first, the
store's order), then settles the tickets it holds: those with jobs still queued stay
unacknowledged for a later look, the others (their jobs claimed, ended, scheduled,
unknown) are acknowledged, a run of them with one ``multiple`` acknowledgement (a ticket
younger than a second whose jobs have no record yet is kept, and looked at again soon: it
came before its record); a redelivered ticket whose record has ended is acknowledged
without running anything. The fetch's sleep waits for a ticket, or ``sweep`` seconds: an
idle worker looks at the store that often even without one, which finds a job whose
ticket was never published (the producer died between the record and the publish,
RabbitMQ was away) or was dropped. Delays, retries with backoff and parked workflow steps
wait in the store, never unacknowledged in a worker.

Time, leases and fencing are the store's: a running job's lease is renewed in the store;
a dead worker's job is handed out again once its lease expires (every idle worker's look
says when, ``due_in``), and a zombie's late finish is refused by the token. A ticket is
acknowledged when its job is claimed, not when it ends, so no job sits unacknowledged
while it runs (RabbitMQ's ``consumer_timeout`` closes the channel of a consumer that
holds a delivery for 30 minutes).
"""

from ..._errors import ConfigurationError

try:
    import aio_pika  # noqa: F401 - the client, checked before anything imports it
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ConfigurationError("amqp:// needs aio-pika: pip install 'conveyor[rabbitmq]'") from exc

from .broker import RabbitBroker

__all__ = ["RabbitBroker"]
