"""The worker's broker and backend objects, sized for its threads (config.brokers, celeryconfig).

Kombu's Redis channel takes a connection from its own pool for every acknowledgement; the pool
kept 10 and raised past them, so more than 10 jobs ending at once lost acknowledgements (the
messages came back). Against the test run's real Redis.
"""

from __future__ import annotations

import threading
from typing import Any

import kombu
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from config.brokers import broker_transport_options


def _hold_connections(redis_url: str, options: dict[str, Any], count: int) -> int:
    """Take ``count`` connections at once from a kombu Redis channel's pool; how many it gave."""
    with kombu.Connection(redis_url, transport_options=options) as connection:
        pool = connection.default_channel.client.connection_pool
        held = []
        try:
            for _ in range(count):
                held.append(pool.get_connection())
        except RedisConnectionError:
            pass
        finally:
            for taken in held:
                pool.release(taken)
        return len(held)


def test_kombus_own_pool_would_refuse_the_eleventh_connection(redis_url: str) -> None:
    """The failure the option prevents: kombu's default pool, with no max_connections given."""
    assert _hold_connections(redis_url, {}, 50) == 10


@pytest.mark.parametrize("threads", [8, 200])
def test_a_channel_pool_holds_one_connection_per_thread_and_more(
    redis_url: str, settings: Any, threads: int
) -> None:
    sized = settings.model_copy(update={"worker_concurrency": threads})
    wanted = threads + sized.urgent_threads
    assert _hold_connections(redis_url, broker_transport_options(sized), wanted) == wanted


def test_one_result_backend_serves_every_thread() -> None:
    """Celery builds a backend (a Redis client and pool) per thread unless told it is safe."""
    from worker.broker.app import app

    seen = [id(app.backend)]  # built once, as a worker's first task builds it

    def look() -> None:
        seen.append(id(app.backend))

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1
