"""Script calls that ride along with a thread's next Redis round trip: a batch's final results.

A batch message's jobs run one after another in one thread (``JobRunner.run_chunk``), and each
made two round trips: the limiter's go (which claims the timestamp) before its request, and
the publish of its final result after it. Nothing the thread does next needs the publish's
reply, so while the thread runs a message (``Carry.holding``) a job's publish is left with the
thread's carry (``Carry.add``), and the thread's next script call through the carry (the next
job's first ask of the limiter, or an immediate publish) sends it first, in the same pipelined
round trip (``Carry.run``): one round trip per job instead of two. Nothing waits in between:
the next job's first Redis call is that ask, made before any wait of the limiter, the clock or
a retry, so a result is out before the next request is sent; the message's last result is sent
when the message ends (``holding`` flushes, on any exit).

A carried call's reply goes to its ``then`` once it came back. An error Redis answered a
carried call with (not a missing script: that is loaded and the call re-run) is raised when
the thread's message ends, as the publish itself would have raised it, once the message's
other jobs ended (that job stays pending, for ``worker.consume.janitor``). When the round trip
itself fails (Redis unreachable, after the client's retries), the carried calls stay with the
thread and go with its next round trip: a publish is idempotent (``SET NX``), so sending one
twice is harmless, and none is dropped.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

#: What a script's KEYS and ARGV may hold.
Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]
    #: Given the reply of a carried call; None for the call that carries them.
    then: Callable[[Any], None] | None = None


class _Local(threading.local):
    holding = False

    def __init__(self) -> None:
        self.pending: list[_Call] = []
        #: Errors carried calls were answered with, for ``flush`` to raise.
        self.failed: list[Exception] = []


class Carry:
    """Per-thread script calls waiting for the thread's next round trip. Thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._local = _Local()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """While inside, ``add`` leaves calls for the next round trip; sent at the end."""
        local = self._local
        outer = local.holding
        local.holding = True
        try:
            yield
        finally:
            local.holding = outer
            if not outer:
                self.flush()

    @property
    def is_holding(self) -> bool:
        return self._local.holding

    def add(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Arg],
        then: Callable[[Any], None],
    ) -> None:
        """Call ``script`` with the thread's next round trip (at once when not ``holding``)."""
        self._local.pending.append(_Call(script, keys, args, then))
        if not self._local.holding:
            self.flush()

    def run(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Call ``script`` now, with the calls carried so far, in one round trip."""
        if not self._local.pending:
            return script(keys=keys, args=args)
        last = self._send([_Call(script, keys, args)])[0]
        if isinstance(last, Exception):
            raise last
        return last

    def flush(self) -> None:
        """Send the carried calls now (one round trip), if there are any; raise the first error
        a carried call was answered with since the last flush."""
        if self._local.pending:
            self._send([])
        failed = self._local.failed
        if failed:
            first = failed[0]
            failed.clear()
            raise first

    def _send(self, calls: list[_Call]) -> list[Any]:
        """Send the pending calls and then ``calls``; deliver the pending ones' replies.

        A carried call answered with an error is kept for ``flush`` to raise (at the latest
        when ``holding`` ends): the call that carried it had its own reply, and must have it.
        """
        local = self._local
        carried = list(local.pending)
        replies = self._execute([*carried, *calls])
        # Sent and answered: from here on nothing of it is sent again.
        del local.pending[: len(carried)]
        for call, reply in zip(carried, replies, strict=False):
            if isinstance(reply, Exception):
                local.failed.append(reply)
                continue
            assert call.then is not None
            call.then(reply)
        return replies[len(carried) :]

    def _execute(self, calls: list[_Call]) -> list[Any]:
        """Every call's reply (or its error), in one pipelined round trip; a script Redis does
        not hold (it restarted, or flushed its scripts) is loaded and its calls re-run."""
        replies = self._pipeline(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {id(calls[i].script): calls[i].script for i in missing}.values():
                script.sha = self._client.script_load(script.script)
            for i, reply in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def _pipeline(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            # EVALSHA itself: a pipeline given Script objects asks SCRIPT EXISTS first, which
            # would be a round trip more.
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return list(pipe.execute(raise_on_error=False))
