"""Write-behind batching of chat messages: publishers never wait for the database.

Messages are buffered and saved in batches, in arrival order, one batch in flight at a time.
A database outage only delays saving: the same batch is retried with exponential backoff
while later messages keep buffering, up to a bound that pushes back on publishers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.persistence.messages import MessagesRejected, SeqCollision
from stomp_chat.persistence.model import ChatMessage
from stomp_chat.persistence.store import ChatStore


class BufferFull(Exception):
    """Too many messages are waiting to be saved; the caller should reject or slow down."""

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(
            f"{pending} chat messages are waiting to be saved (limit {limit}); try again later"
        )
        self.pending = pending
        self.limit = limit


class WriterStopped(RuntimeError):
    """The writer was stopped; messages appended now would never be saved."""


class DelayedCall(Protocol):
    def getTime(self) -> float: ...

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of IReactorTime the writer uses (the reactor, or task.Clock in tests)."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> DelayedCall: ...


class PausableProducer(Protocol):
    """What the writer needs of a publisher to apply back-pressure; any Twisted transport
    (an IPushProducer) qualifies, so a transport can stop reading from its socket."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@dataclass(slots=True)
class _Waiter:
    """Fires once every message up to arrival number `last_index` is settled."""

    last_index: int
    deferred: Deferred[None]
    #: Durable waiters stand for one message and fail if the database rejects it; flush
    #: waiters only wait for their turn.
    durable: bool


_Phase = Literal["new", "running", "stopping", "stopped"]


class WriteBehindWriter(Service):
    """Buffers chat messages and saves them through a `ChatStore` in ordered batches.

    `append` is the cheap path (no Deferred at all); `append_durable` returns a Deferred that
    fires once the message's batch has committed, for STOMP receipts that promise durability.
    """

    log = Logger()

    def __init__(
        self,
        store: ChatStore,
        clock: Clock,
        flush_interval: float = 0.05,
        max_batch: int = 1000,
        max_pending: int = 100_000,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
        high_water: int | None = None,
        low_water: int | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        if flush_interval < 0 or retry_initial <= 0 or retry_max < retry_initial:
            raise ValueError("need flush_interval >= 0 and 0 < retry_initial <= retry_max")
        if stop_timeout is not None and stop_timeout <= 0:
            raise ValueError("stop_timeout must be positive")
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be positive")
        high = max(1, max_pending * 4 // 5) if high_water is None else high_water
        low = high // 2 if low_water is None else low_water
        if not 0 <= low < high <= max_pending:
            raise ValueError("need 0 <= low_water < high_water <= max_pending")
        self._store = store
        self._clock = clock
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._high_water = high
        self._low_water = low
        #: How long stopping waits for the database before giving up on what is unsaved.
        self._stop_timeout = stop_timeout
        self._stop_call: DelayedCall | None = None

        self._buffer: deque[ChatMessage] = deque()
        #: The batch being written, or waiting to be retried (then `_writing` is False).
        self._batch: list[ChatMessage] = []
        self._writing = False
        #: Messages are numbered in arrival order; all below `_settled` are saved (or dropped
        #: as rejected), and the batch starts at `_settled`.
        self._appended = 0
        self._settled = 0
        self._waiters: deque[_Waiter] = deque()
        self._urgent_through = -1
        #: When the oldest buffered message is due to be written.
        self._due: float | None = None
        self._timer: DelayedCall | None = None
        self._failed_attempts = 0
        self._outage_started: float | None = None
        self._phase: _Phase = "new"
        self._stop_waiters: list[Deferred[None]] = []
        self._producers: list[PausableProducer] = []
        self._producers_paused = False
        #: Messages announced by `expect` and not appended yet (waiting for their room).
        self._expected = 0
        self._full_reported = False
        #: Told of every message not stored because another holds its seq.
        self.collision_listeners: list[Callable[[ChatMessage], object]] = []
        #: Counters for metrics.
        self.saved_count = 0
        self.rejected_count = 0
        self.collided_count = 0
        #: Messages given up at stop because the database did not answer in time.
        self.lost_count = 0

    # -- state ---------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Messages accepted but not yet saved (buffered plus the batch in flight)."""
        return len(self._buffer) + len(self._batch)

    @property
    def is_full(self) -> bool:
        """True while `append` would raise BufferFull."""
        return self.pending_count >= self._max_pending

    @property
    def is_paused(self) -> bool:
        """True while registered producers are asked to pause (above the high-water mark,
        until the backlog drains to the low-water mark)."""
        return self._producers_paused

    @property
    def is_retrying(self) -> bool:
        """True while the database is failing and a batch waits for its next attempt."""
        return self._outage_started is not None

    # -- accepting messages --------------------------------------------------------------

    def append(self, message: ChatMessage) -> None:
        """Buffer a message for saving; raises BufferFull when `max_pending` are waiting."""
        self._accept(message)

    def append_durable(self, message: ChatMessage) -> Deferred[None]:
        """Like `append`, and fires once the message is committed.

        Fails with MessagesRejected only if the database refuses this very message.
        """
        index = self._accept(message)
        committed: Deferred[None] = Deferred()
        self._waiters.append(_Waiter(index, committed, durable=True))
        return committed

    def has_room_for(self, count: int) -> bool:
        """Whether ``count`` more messages would be accepted now (besides those expected)."""
        return self.pending_count + self._expected + count <= self._max_pending

    def expect(self, count: int) -> None:
        """Count (or, negative, stop counting) messages that will be appended soon, e.g. held
        until their room is ready, towards the high- and low-water marks and `has_room_for`,
        so publishers are paused by what waits anywhere, not only by what is buffered."""
        self._expected += count
        backlog = self.pending_count + self._expected
        if count > 0 and not self._producers_paused and backlog >= self._high_water:
            self._pause_producers()
        elif count < 0 and self._producers_paused and backlog <= self._low_water:
            self._resume_producers()

    def unsaved_messages(self, room_id: int) -> list[ChatMessage]:
        """A room's messages accepted but not committed yet, oldest first.

        History reads merge these in, so a message is visible from the moment
        it is broadcast, even while the database is down.
        """
        return [m for m in chain(self._batch, self._buffer) if m.room_id == room_id]

    def flush(self) -> Deferred[None]:
        """Write everything buffered now; fires when all messages accepted so far are saved.

        During an outage this does not cut the retry backoff short.
        """
        if self.pending_count == 0:
            return succeed(None)
        flushed: Deferred[None] = Deferred()
        last_index = self._appended - 1
        self._waiters.append(_Waiter(last_index, flushed, durable=False))
        self._urgent_through = last_index
        self._schedule()
        return flushed

    def _accept(self, message: ChatMessage) -> int:
        if self._phase == "stopped":
            raise WriterStopped("the chat message writer is stopped")
        pending = self.pending_count
        if pending >= self._max_pending:
            if not self._full_reported:
                self._full_reported = True
                self.log.warn(
                    "Rejecting chat messages: {pending} are waiting to be saved (limit {limit})",
                    pending=pending,
                    limit=self._max_pending,
                )
            raise BufferFull(pending, self._max_pending)
        if not self._buffer:
            self._due = self._clock.seconds() + self._flush_interval
        self._buffer.append(message)
        index = self._appended
        self._appended += 1
        if not self._producers_paused and pending + 1 + self._expected >= self._high_water:
            self._pause_producers()
        self._schedule()
        return index

    # -- back-pressure -------------------------------------------------------------------

    def register_producer(self, producer: PausableProducer) -> None:
        """Have `producer` paused above the high-water mark and resumed below the low one."""
        self._producers.append(producer)
        if self._producers_paused:
            self._tell(producer, pause=True)

    def unregister_producer(self, producer: PausableProducer) -> None:
        try:
            self._producers.remove(producer)
        except ValueError:
            pass

    def _pause_producers(self) -> None:
        self._producers_paused = True
        self.log.info(
            "Pausing {count} publishers: {pending} chat messages wait to be saved",
            count=len(self._producers),
            pending=self.pending_count,
        )
        for producer in list(self._producers):
            self._tell(producer, pause=True)

    def _resume_producers(self) -> None:
        self._producers_paused = False
        self._full_reported = False
        self.log.info(
            "Resuming {count} publishers: {pending} chat messages wait to be saved",
            count=len(self._producers),
            pending=self.pending_count,
        )
        for producer in list(self._producers):
            self._tell(producer, pause=False)

    def _tell(self, producer: PausableProducer, pause: bool) -> None:
        try:
            if pause:
                producer.pauseProducing()
            else:
                producer.resumeProducing()
        except Exception:
            # One broken publisher must not stop the others being resumed.
            self.log.failure("Publisher {producer!r} failed to pause or resume", producer=producer)

    # -- writing -------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Arm the timer for the next batch, if one is due and none is being written."""
        if self._phase == "new" or self._writing or self._batch or not self._buffer:
            return
        if (
            self._timer is not None  # the common case on the chat path: already armed
            and self._phase == "running"
            and len(self._buffer) < self._max_batch
            and self._urgent_through < self._settled
        ):
            return
        now = self._clock.seconds()
        write_now = (
            self._phase == "stopping"
            or len(self._buffer) >= self._max_batch
            or self._urgent_through >= self._settled
            or self._due is None
        )
        at = now if write_now else max(now, self._due or now)
        if self._timer is not None:
            if self._timer.getTime() <= at:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(at - now, self._write_batch)

    def _write_batch(self) -> None:
        self._timer = None
        if self._writing:
            return
        if not self._batch:
            size = min(len(self._buffer), self._max_batch)
            if size == 0:
                return
            self._batch = [self._buffer.popleft() for _ in range(size)]
            # Whatever is left has waited long enough: write it as soon as this batch is done.
            self._due = self._clock.seconds() if self._buffer else None
        self._writing = True
        saved = maybeDeferred(self._store.save_messages, tuple(self._batch))
        saved.addCallbacks(self._batch_saved, self._batch_failed)
        saved.addErrback(self._internal_error)

    def _batch_saved(self, collided: list[ChatMessage] | None) -> None:
        self._writing = False
        batch = self._batch
        count = len(batch)
        self._batch = []
        self._failed_attempts = 0
        rejections: dict[int, Failure] = {}
        if collided:
            collided_ids = {id(message) for message in collided}
            for offset, message in enumerate(batch):
                if id(message) in collided_ids:
                    rejections[self._settled + offset] = self._collision(message)
        self._settled += count
        self.saved_count += count - len(rejections)
        if self._outage_started is not None:
            self.log.info(
                "Saving chat messages again after {seconds:.1f}s of database errors",
                seconds=self._clock.seconds() - self._outage_started,
            )
            self._outage_started = None
        self._after_settling(rejections)

    def _collision(self, message: ChatMessage) -> Failure:
        self.collided_count += 1
        self.log.error(
            "Chat message {message_id} was not stored: room {room_id} already holds another "
            "message with seq {seq}",
            message_id=message.message_id,
            room_id=message.room_id,
            seq=message.seq,
        )
        for listener in list(self.collision_listeners):
            try:
                listener(message)
            except Exception:
                self.log.failure("A seq collision listener failed")
        return Failure(SeqCollision(message))

    def _batch_failed(self, failure: Failure) -> None:
        self._writing = False
        if failure.check(MessagesRejected):
            self._isolate_rejected(failure)
            return
        self._failed_attempts += 1
        if self._outage_started is None:
            self._outage_started = self._clock.seconds()
            self.log.failure(
                "Saving a batch of {count} chat message(s) failed; keeping it buffered and "
                "retrying until the database accepts it",
                failure,
                count=len(self._batch),
            )
        else:
            self.log.debug(
                "Saving chat messages failed again (attempt {attempt}): {error}",
                attempt=self._failed_attempts,
                error=failure.getErrorMessage(),
            )
        exponent = min(self._failed_attempts - 1, 32)
        delay = min(self._retry_max, self._retry_initial * 2**exponent)
        self._timer = self._clock.callLater(delay, self._write_batch)

    def _isolate_rejected(self, failure: Failure) -> None:
        """Halve a rejected batch until the offending message is alone, then drop only it.

        Retrying it would block every room's history forever; order is kept because the
        second half goes back to the front of the buffer.
        """
        if len(self._batch) > 1:
            half = len(self._batch) // 2
            self._buffer.extendleft(reversed(self._batch[half:]))
            del self._batch[half:]
            self._due = self._clock.seconds()
            self._timer = self._clock.callLater(0, self._write_batch)
            return
        [message] = self._batch
        self._batch = []
        self.rejected_count += 1
        self.log.error(
            "Dropping chat message {message_id} (room {room_id}, seq {seq}): "
            "the database refuses it: {error}",
            message_id=message.message_id,
            room_id=message.room_id,
            seq=message.seq,
            error=failure.getErrorMessage(),
        )
        rejected_index = self._settled
        self._settled += 1
        self._after_settling({rejected_index: failure})

    def _after_settling(self, rejections: dict[int, Failure] | None = None) -> None:
        """Update state first and fire Deferreds last, so callbacks may append or flush.

        Waiters fire in arrival order, so a `flush()` Deferred fires after the receipt
        callbacks of every durable message appended before it.
        """
        ready: list[_Waiter] = []
        while self._waiters and self._waiters[0].last_index < self._settled:
            ready.append(self._waiters.popleft())
        pending = self.pending_count
        if self._producers_paused and pending + self._expected <= self._low_water:
            self._resume_producers()
        elif self._full_reported and pending < self._max_pending:
            self._full_reported = False
        self._schedule()
        stopped: list[Deferred[None]] = []
        if self._phase == "stopping" and pending == 0:
            stopped = self._stopped()
        for waiter in ready:
            rejection = rejections.get(waiter.last_index) if rejections else None
            if waiter.durable and rejection is not None:
                waiter.deferred.errback(rejection)
            else:
                waiter.deferred.callback(None)
        for deferred in stopped:
            deferred.callback(None)

    def _stopped(self) -> list[Deferred[None]]:
        self._phase = "stopped"
        if self._stop_call is not None and self._stop_call.active():
            self._stop_call.cancel()
        self._stop_call = None
        stopped, self._stop_waiters = self._stop_waiters, []
        return stopped

    def _internal_error(self, failure: Failure) -> None:
        self.log.failure("Bug in the chat message writer", failure)

    # -- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._phase = "running"
        self._schedule()

    def stopService(self) -> Deferred[None]:
        """Save everything accepted so far (waiting out any outage), then fire."""
        super().stopService()
        if self.pending_count == 0:
            self._phase = "stopped"
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return succeed(None)
        self._phase = "stopping"
        drained: Deferred[None] = Deferred()
        self._stop_waiters.append(drained)
        if self._stop_timeout is not None:
            self._stop_call = self._clock.callLater(self._stop_timeout, self._give_up)
        self._schedule()
        return drained

    def _give_up(self) -> None:
        """Stopping took longer than `stop_timeout`: the database is not answering. Report
        what is lost, fail the durable waiters (no receipt), and let the server stop."""
        self._stop_call = None
        if self._phase != "stopping":
            return
        lost = self.pending_count
        self.lost_count += lost
        self.log.critical(
            "Stopping without saving {count} chat message(s): the database did not answer "
            "within {seconds:g}s",
            count=lost,
            seconds=self._stop_timeout,
        )
        self._buffer.clear()
        self._batch = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiters, self._waiters = list(self._waiters), deque()
        stopped = self._stopped()
        for waiter in waiters:
            if waiter.durable:
                waiter.deferred.errback(WriterStopped("the server stopped before saving it"))
            else:
                waiter.deferred.callback(None)
        for deferred in stopped:
            deferred.callback(None)
