"""The two lanes a close job travels in, and the queues that carry them: one source for all.

``urgent`` is for single closes someone waits for (an operator cutting off a leaked key,
another system revoking a customer); ``bulk`` for batches (mass reconnects, schedules,
``--retry-failed``). A task's default lane is its kind (``TASK_LANES``); producers may choose
the other one (``--lane``, ``lane=``). Producers, workers and the CLI import these names; the
queues are declared in ``config.celeryconfig`` (``task_queues``) from them.

``streamctl`` is the queue of old (pre-lane) producers, raw ``LPUSH`` ones in other languages
among them: workers keep consuming it, and a message there runs in its task's default lane.
"""

from __future__ import annotations

from typing import Final, Literal

URGENT: Final = "urgent"
BULK: Final = "bulk"
Lane = Literal["urgent", "bulk"]
LANES: Final[tuple[Lane, ...]] = (URGENT, BULK)

URGENT_QUEUE: Final = "streamctl.urgent"
BULK_QUEUE: Final = "streamctl.bulk"
#: The queue before lanes existed (``task_default_queue``): consumed as urgent work.
LEGACY_QUEUE: Final = "streamctl"
QUEUES: Final[dict[Lane, str]] = {URGENT: URGENT_QUEUE, BULK: BULK_QUEUE}
#: Every queue a worker consumes. The urgent and legacy queues have a consumer of their own
#: in each worker (worker.consume.lanes), so prefetched bulk messages never hold them back.
CONSUMED_QUEUES: Final = (URGENT_QUEUE, BULK_QUEUE, LEGACY_QUEUE)
URGENT_QUEUES: Final = (URGENT_QUEUE, LEGACY_QUEUE)

#: The stable task names; producers in any language enqueue by them.
CLOSE_TASK: Final = "scaleengine.stream.close"
#: Many close jobs in one message (batches; see ``worker.broker.messages``).
CLOSE_MANY_TASK: Final = "scaleengine.stream.close_many"
#: A task's default lane: what a message carries without a ``lane`` field.
TASK_LANES: Final[dict[str, Lane]] = {CLOSE_TASK: URGENT, CLOSE_MANY_TASK: BULK}

#: The job field that names a lane.
LANE_FIELD: Final = "lane"


def check_lane(value: object) -> Lane:
    """``value`` as a lane; ValueError naming the lanes otherwise."""
    if value == URGENT:
        return URGENT
    if value == BULK:
        return BULK
    raise ValueError(f"lane must be one of {', '.join(LANES)} (got {value!r})")


def queue_for(lane: Lane) -> str:
    return QUEUES[lane]
