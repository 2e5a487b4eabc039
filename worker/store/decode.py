"""The one decoder of Redis replies.

The shared client (``worker.store.redis``) returns bytes, as redis-py does by default: the
results channel and log carry JSON that ``json.loads`` reads from bytes directly, and tests
and tools read the same keys with default clients. Where a reply must be text (ids, hash
fields, stream ids, a Lua script's strings) it goes through ``text``.
"""

from __future__ import annotations


def text(raw: object) -> str:
    """A Redis reply as text (UTF-8, as every value streamctl writes is)."""
    return raw.decode() if isinstance(raw, bytes) else str(raw)
