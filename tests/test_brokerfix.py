"""``worker.broker.guards.kombu`` patches private names of kombu's Redis transport: checked."""

from __future__ import annotations

import types
import uuid

import kombu
import pytest
from kombu.transport import redis as kombu_redis

from worker.broker.guards import kombu as brokerfix
from worker.errors import StreamctlError


def transport_without(name: str) -> types.ModuleType:
    """A stand-in for ``kombu.transport.redis`` whose Channel lacks ``name``."""
    members = {
        attr: getattr(kombu_redis.Channel, attr) for attr in brokerfix.PATCHED
    }
    del members[name]
    fake = types.ModuleType("kombu.transport.redis")
    fake.Channel = type("Channel", (), members)  # type: ignore[attr-defined]
    return fake


@pytest.mark.parametrize("missing", ["_connparams", "_brpop_read", "Message"])
def test_install_refuses_a_kombu_without_the_patched_names(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    fake = transport_without(missing)
    monkeypatch.setattr(brokerfix, "kombu_redis", fake)
    with pytest.raises(StreamctlError) as refused:
        brokerfix.install()
    message = str(refused.value)
    assert missing in message and f"kombu {kombu.__version__}" in message
    assert not hasattr(fake.Channel, missing)  # nothing was patched in


def test_install_refuses_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = transport_without("_connparams")

    def _connparams(self: object) -> dict[str, object]:  # no ``asynchronous`` any more
        return {}

    fake.Channel._connparams = _connparams
    monkeypatch.setattr(brokerfix, "kombu_redis", fake)
    with pytest.raises(StreamctlError, match="_connparams"):
        brokerfix.install()


def test_install_works_on_the_installed_kombu(redis_url: str) -> None:
    brokerfix.install()
    brokerfix.install()  # idempotent: the guards are not wrapped twice
    channel = kombu_redis.Channel
    assert channel._connparams is brokerfix._connparams
    assert channel._brpop_read is brokerfix._brpop_read
    assert channel.Message.__name__ == "_CheckedMessage"
    assert channel.Message.__mro__[1] is brokerfix._originals["Message"]  # wrapped once
    assert brokerfix._originals["_connparams"] is not brokerfix._connparams
    # A message goes through the guarded transport, both ways, on a real Redis.
    queue_name = f"brokerfix-test-{uuid.uuid4().hex[:8]}"
    with kombu.Connection(redis_url) as connection:
        queue = connection.SimpleQueue(queue_name)
        try:
            queue.put({"hello": "world"}, serializer="json")
            received = queue.get(timeout=5)
            received.ack()
            assert received.payload == {"hello": "world"}
        finally:
            queue.clear()
            queue.close()
