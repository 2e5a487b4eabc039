"""Reserved capacity for urgent work inside every worker process.

Two things would hold an urgent message back behind bulk work in a plain Celery worker, and
each gets its own remedy here:

* **Fetching.** One consumer channel carries a prefetch limit (QoS) for all its queues; with
  acks_late, every bulk message a thread runs or waits for holds one of those slots until it
  ends, so a saturated bulk lane leaves no slot for an urgent message even to be received.
  ``UrgentConsumer`` (a consumer bootstep) consumes the urgent queues (``config.lanes``
  URGENT_QUEUES) on a channel of its own, with its own prefetch limit, and takes them off the
  main consumer, which keeps the bulk queue.
* **Executing.** Celery's thread pool is one executor with one FIFO of submitted jobs, so a
  received urgent job would wait behind the prefetched bulk ones. The pool is given a second
  executor of STREAMCTL_URGENT_THREADS threads that bulk work never reaches (``LaneRouter``);
  an urgent job also takes a shared thread that is idle, so a burst of single closes on a
  quiet worker runs on all its threads.

Both channels feed Celery's own task handler and strategies, so an urgent job is a normal
Celery task: task events for Flower, acks_late, retries, revokes, the guard on malformed
bodies. Redis and RabbitMQ alike: a channel has its own QoS on both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import bootsteps
from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from celery.worker.control import inspect_command
from kombu.common import ignore_errors

from config.lanes import BULK_QUEUE, TASK_LANES, URGENT, URGENT_QUEUE, URGENT_QUEUES
from config.settings import get_settings

log = logging.getLogger("streamctl.lanes")

#: Messages the urgent consumer holds per reserved thread: one running, others waiting or
#: counting down to a retry (a countdown message stays unacknowledged until it runs).
URGENT_PREFETCH_PER_THREAD = 4


def runs_urgent(task_name: str, delivery_info: Mapping[str, Any] | None) -> bool:
    """Whether a message runs on the reserved threads: by its queue, else its task's lane.

    Messages of the urgent queue do; of the bulk queue do not (a batch job's retry is a single
    close there); any other (the pre-lane queue, a raw message) by its task's default lane.
    """
    queue = (delivery_info or {}).get("routing_key")
    if queue == URGENT_QUEUE:
        return True
    if queue == BULK_QUEUE:
        return False
    return TASK_LANES.get(task_name) == URGENT


class LaneRouter:
    """The pool's ``on_apply``: bulk jobs to the shared threads; urgent jobs to a reserved
    thread, else an idle shared one, else a wait for the next reserved thread.

    The reserved threads are a floor for urgent work, not a ceiling: a burst of single closes
    on an idle worker takes every thread, and still never waits behind a bulk job, because it
    joins the shared FIFO only when a shared thread is free (nothing of that FIFO waits then).
    Each executor's running and waiting jobs are counted here, at submit and at end.

    Celery calls it with the trace function and ``(task name, id, request, body, ...)``; the
    request carries the message's delivery info.
    """

    def __init__(
        self,
        shared: Callable[..., ApplyResult],
        shared_threads: int,
        reserved: ThreadPoolExecutor,
        reserved_threads: int,
    ) -> None:
        self._shared = shared
        self._reserved = reserved
        self._limits = {"shared": shared_threads, "reserved": reserved_threads}
        self._busy = {"shared": 0, "reserved": 0}
        self._lock = threading.Lock()

    def busy(self) -> Mapping[str, int]:
        """Jobs each executor runs or holds queued now."""
        with self._lock:
            return dict(self._busy)

    def _take(self, urgent: bool) -> str:
        with self._lock:
            if not urgent:
                where = "shared"
            elif self._busy["reserved"] < self._limits["reserved"]:
                where = "reserved"
            elif self._busy["shared"] < self._limits["shared"]:
                where = "shared"
            else:
                where = "reserved"  # waits behind urgent work only
            self._busy[where] += 1
            return where

    def _counted(self, where: str, target: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return target(*args, **kwargs)
            finally:
                with self._lock:
                    self._busy[where] -= 1

        return run

    def __call__(
        self,
        target: Callable[..., Any],
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **options: Any,
    ) -> ApplyResult:
        request = args[2] if args and len(args) > 2 else None
        urgent = isinstance(request, Mapping) and runs_urgent(
            str(args[0]) if args else "", request.get("delivery_info")
        )
        where = self._take(urgent)
        try:
            if where == "reserved":
                run = self._counted(where, apply_target)
                future = self._reserved.submit(run, target, args, kwargs, callback, accept_callback)
                return ApplyResult(future)
            return self._shared(
                self._counted(where, target), args, kwargs, callback, accept_callback, **options
            )
        except BaseException:
            with self._lock:  # never submitted (a pool shutting down): not busy
                self._busy[where] -= 1
            raise


#: The queues this process's urgent step consumes (``streamctl_queues`` reports them).
_URGENT_CONSUMED: list[str] = []


@inspect_command()  # type: ignore[untyped-decorator]  # celery has no hints
def streamctl_queues(state: Any) -> list[str]:
    """Every queue this worker consumes: the main consumer's and the urgent lane's own.

    Celery's ``active_queues`` lists only the main consumer's, which no longer holds the urgent
    queues (``UrgentConsumer``): ``streamctl check`` asks this instead.
    """
    main = [str(queue.name) for queue in state.consumer.task_consumer.queues]
    return sorted({*main, *_URGENT_CONSUMED})


class UrgentConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]  # celery has no hints
    """The urgent queues' own consumer channel, and the reserved threads (module docstring)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        settings = get_settings()
        self.threads = settings.urgent_threads
        queues = c.app.amqp.queues
        # The urgent queues this worker was asked to consume (all, without -Q), taken off the
        # main consumer; the main consumer's Tasks step builds its queue list when it starts.
        self.queue_names = [name for name in URGENT_QUEUES if name in queues.consume_from]
        if self.queue_names:
            queues.deselect(self.queue_names)
        self.executor: ThreadPoolExecutor | None = None
        self.router: LaneRouter | None = None
        pool = c.pool
        if isinstance(pool, ThreadTaskPool):
            self.executor = ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix="urgent"
            )
            self.router = LaneRouter(pool.on_apply, pool.limit, self.executor, self.threads)
            pool.on_apply = self.router
        else:
            log.warning(
                "pool %s is not the thread pool: urgent jobs share its workers",
                type(pool).__name__,
            )

    def start(self, c: Any) -> None:
        if not self.queue_names:
            return
        channel = c.connection.channel()
        amqp = c.app.amqp
        consumer = amqp.TaskConsumer(
            channel,
            queues=[amqp.queues[name] for name in self.queue_names],
            on_decode_error=c.on_decode_error,
        )
        # Celery's own handler: the same strategies, events and acknowledgements as any task.
        consumer.on_message = c.create_task_handler()
        # Enough for the reserved threads and, when the bulk lane is idle, every shared one.
        shared = c.pool.limit if self.router is not None else 0
        consumer.qos(prefetch_count=self.threads * URGENT_PREFETCH_PER_THREAD + shared)
        self.consumers = [consumer]
        consumer.consume()
        _URGENT_CONSUMED[:] = self.queue_names
        log.info(
            "urgent lane: consuming %s on a channel of its own, %d reserved threads",
            ", ".join(self.queue_names),
            self.threads,
        )

    def stop(self, c: Any) -> None:
        """Stop fetching (a warm shutdown, a lost connection); the channel stays open, so that
        urgent jobs still running acknowledge their messages on it."""
        for consumer in self.consumers or []:
            ignore_errors(c.connection, consumer.cancel)  # type: ignore[no-untyped-call]

    def shutdown(self, c: Any) -> None:
        """Let the running urgent jobs end, then close the channel: messages not started go
        back to the queue (unacknowledged), for another worker."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        super().shutdown(c)
