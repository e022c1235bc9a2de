"""From what a run produced to the ``Finish`` the broker records: success, retry, failure,
cancellation, or the dead-letter queue."""

from __future__ import annotations

import logging

import msgspec

from .._backoff import Rand, full_jitter
from .._clock import Clock
from .._codec import Codec
from .._message import Delivery, Envelope, JobStatus, Message, Outcome
from ..brokers._port import Finish
from ._attempt import Attempt, Raised, Result, Returned, Stopped

log = logging.getLogger("conveyor.worker")

RETRY_CAP = 3600.0  # the longest backoff between two attempts, in seconds
_ANY = ("builtins.Exception",)


def should_retry(message: Message, failure: Raised) -> bool:
    if message.attempt >= message.retries:
        return False
    wanted = message.retry_on or _ANY
    return any(t in wanted for t in failure.types)


class Outcomes:
    def __init__(self, codec: Codec, clock: Clock, rand: Rand) -> None:
        self._codec = codec
        self._clock = clock
        self._rand = rand

    def dead(self, delivery: Delivery, reason: str, message: Message | None = None) -> Finish:
        ttl = float(message.result_ttl) if message is not None else 86400.0
        result = self._codec.encode_outcome(Outcome(reason=reason))
        return Finish(delivery, JobStatus.DEAD, result, result_ttl=ttl, reason=reason)

    def finish(self, attempt: Attempt, result: Result) -> Finish:
        message = attempt.message
        assert message is not None, "only decoded jobs run"
        delivery = attempt.delivery
        ttl = float(message.result_ttl)
        if isinstance(result, Returned):  # the encoded outcome itself
            return Finish(delivery, JobStatus.SUCCEEDED, result, result_ttl=ttl)
        if isinstance(result, Stopped):
            reason = f"cancelled while running ({result.why})"
            encoded = self._codec.encode_outcome(Outcome(reason=reason))
            return Finish(delivery, JobStatus.CANCELLED, encoded, result_ttl=ttl, reason=reason)
        if should_retry(message, result):
            retry = self._retry(delivery)
            if retry is not None:
                return Finish(delivery, JobStatus.SCHEDULED, retry=retry, result_ttl=ttl)
        reason = f"{result.error.type}: {result.error.message}"
        encoded = self._codec.encode_outcome(Outcome(error=result.error))
        return Finish(delivery, JobStatus.FAILED, encoded, result_ttl=ttl, reason=reason[:1000])

    def delay(self, message: Message) -> float:
        return full_jitter(message.attempt, message.backoff, RETRY_CAP, self._rand)

    def _retry(self, delivery: Delivery) -> Envelope | None:
        """The job again, one attempt on: what was delivered, decoded again, not the message
        the run was given, which a hook (or the task) may have written to: a header that is
        not a str went out in the retry, which then could not be decoded, and died."""
        try:
            message = self._codec.decode_message(delivery.payload)
            again = msgspec.structs.replace(message, attempt=message.attempt + 1)
            # Not capped: a job let in at the cap is a few bytes longer with its attempt.
            payload = self._codec.encode_message(again, capped=False)
        except Exception as exc:  # decoded a moment ago: a pickled class that changed since
            log.warning("job %s: cannot encode its retry (%s); it fails instead", delivery.id, exc)
            return None
        eta = self._clock.time() + self.delay(message)
        return Envelope(
            id=delivery.id,
            queue=delivery.queue,
            payload=payload,
            priority=delivery.priority,
            eta=eta,
            key=message.key,
        )
