"""The renewer keeps a live worker's held messages from being redelivered, and only those.

A real kombu Redis channel on the session's Redis (keys under a prefix of their own): a message
taken unacknowledged is in kombu's ``unacked_index``; aged past the visibility timeout, kombu's
own restore sweep puts it back on the queue, unless it was renewed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from config.settings import load_settings
from worker.consume.renewer import held_tags, renew, renew_interval

VISIBILITY = 10.0


@pytest.fixture
def channel() -> Iterator[Any]:
    prefix = f"test-renew-{uuid.uuid4().hex[:8]}:"
    connection = Connection(
        os.environ["REDIS_URL"],
        transport_options={"visibility_timeout": VISIBILITY, "global_keyprefix": prefix},
    )
    with connection:
        chan = connection.channel()
        chan.queue_declare("renewed")
        yield chan
        chan.client.delete(*chan.client.keys(f"{prefix}*") or ["-"])
        chan.close()


def take_one(chan: Any) -> Any:
    chan.basic_publish(chan.prepare_message("{}"), exchange="", routing_key="renewed")
    message = chan.basic_get("renewed", no_ack=False)
    assert message is not None
    return message


def age_all(chan: Any, seconds: float) -> None:
    with chan.conn_or_acquire() as client:
        for tag in client.zrange(chan.unacked_index_key, 0, -1):
            client.zadd(chan.unacked_index_key, {tag: time.time() - seconds})


def test_a_renewed_message_is_not_redelivered(channel: Any) -> None:
    message = take_one(channel)
    assert held_tags(channel) == [message.delivery_tag]
    age_all(channel, VISIBILITY + 5)
    assert renew(channel) == 1
    channel.qos.restore_visible(num=None, interval=1)
    assert channel._size("renewed") == 0  # still held, not back on the queue


def test_an_unrenewed_message_is_redelivered(channel: Any) -> None:
    take_one(channel)
    age_all(channel, VISIBILITY + 5)  # its worker died: nobody renews it
    channel.qos.restore_visible(num=None, interval=1)
    assert channel._size("renewed") == 1


def test_renewal_does_not_bring_back_an_acknowledged_message(channel: Any) -> None:
    message = take_one(channel)
    tag = message.delivery_tag
    channel.basic_ack(tag)
    # Kombu may still list the tag until its next flush: ZADD XX must not re-add it.
    channel.qos._delivered[tag] = message
    renew(channel)
    with channel.conn_or_acquire() as client:
        assert client.zscore(channel.unacked_index_key, tag) is None


def test_renewals_come_four_times_per_timeout() -> None:
    settings = load_settings(visibility_timeout=30)
    assert renew_interval(settings) == 7.5
