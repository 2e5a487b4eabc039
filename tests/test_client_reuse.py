"""Kombu's Redis channel builds one redis-py client, not one per command.

See worker.broker.client_reuse. Against the test run's real Redis: publishes, task events and
acknowledgements go through ``Channel.conn_or_acquire``; kombu 5.7 built a ``redis.Redis`` for
each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from worker.broker import client_reuse
from worker.errors import IncompatibleDependency


@pytest.fixture
def clients_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts every redis.Redis constructed while the test runs."""
    built = [0]
    original = redis.Redis.__init__

    def counting(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        built[0] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    yield built


def _publish_consume_ack(redis_url: str, count: int, queue_name: str) -> list[int]:
    """Publish ``count`` messages, consume and acknowledge them; the bodies received."""
    queue = kombu.Queue(queue_name, kombu.Exchange(queue_name), routing_key=queue_name)
    received: list[int] = []
    with kombu.Connection(redis_url) as connection:
        producer = connection.Producer(serializer="json")
        for index in range(count):
            producer.publish(
                index, exchange=queue.exchange, routing_key=queue_name, declare=[queue]
            )

        def on_message(body: Any, message: kombu.Message) -> None:
            received.append(body)
            message.ack()

        with connection.Consumer(queue, callbacks=[on_message], accept=["json"]):
            while len(received) < count:
                connection.drain_events(timeout=5)
        queue(connection.default_channel).delete()
    return received


def test_a_channel_reuses_one_client_for_its_commands(
    redis_url: str, clients_built: list[int]
) -> None:
    client_reuse.install()
    received = _publish_consume_ack(redis_url, 200, "streamctl-test-client-reuse")
    assert sorted(received) == list(range(200))
    # The channel's own client (BRPOP), its subscriber, and the one shared client: not 400+.
    assert clients_built[0] <= 6, clients_built[0]


def test_a_new_pool_gets_a_new_client(redis_url: str) -> None:
    """After a reconnect kombu replaces the channel's pool: the old client must not be used."""
    client_reuse.install()
    with kombu.Connection(redis_url) as connection:
        channel: Any = connection.default_channel
        with channel.conn_or_acquire() as first:
            first.ping()
        with channel.conn_or_acquire() as again:
            assert again is first
        channel._pool = None  # as kombu's reconnect leaves it
        with channel.conn_or_acquire() as after:
            after.ping()
            assert after is not first
            assert after.connection_pool is channel.pool is not first.connection_pool


def test_install_refuses_a_kombu_without_the_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.transport import redis as kombu_redis

    class Bare:  # a Channel class without the private names
        pass

    monkeypatch.setattr(kombu_redis, "Channel", Bare)
    monkeypatch.setattr(client_reuse, "_originals", {})
    with pytest.raises(IncompatibleDependency, match="conn_or_acquire"):
        client_reuse.install()
