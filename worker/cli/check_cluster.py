"""The cluster half of ``streamctl check``: do workers answer, how deep are the queues, and did
the latest closes end in a refusal that points at this machine's configuration.

These find what the local checks cannot: a wrong API secret is only seen by the API (every close
ends ``failure`` 0003), and no worker running means nothing is ever sent.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from config.urls import mask_url
from worker.cli.check import REDIS_TIMEOUT, Check
from worker.model.results import CONFIG_REFUSALS

if TYPE_CHECKING:
    from celery import Celery

#: Seconds to wait for workers to answer ``inspect().active_queues()``: a live one answers in ms.
WORKER_REPLY_TIMEOUT = 1.5
#: Results read back from the results log for the refusal check.
RECENT_RESULTS = 100


def queue_names(app: Celery) -> list[str]:
    """The queues this deployment's workers consume: ``task_queues`` if set, else the default."""
    configured = app.conf.task_queues
    if configured:
        names = [getattr(queue, "name", queue) for queue in configured]
        return [str(name) for name in names]
    return [str(app.conf.task_default_queue)]


def check_cluster(settings: Settings, *, broker_answers: bool) -> Iterator[Check]:
    if broker_answers:
        from worker.broker.app import app

        yield check_workers(app)
        yield check_queues(app, settings)
    else:  # not asked twice: the broker's own check failed already
        yield Check("workers", "skip", "not asked: the broker does not answer")
        yield Check("queues", "skip", "not read: the broker does not answer")
    yield check_refusals(settings)


def check_workers(app: Celery) -> Check:
    """Fail when no worker answers; name each one that does and the queues it consumes."""
    try:
        # streamctl_queues (worker.consume.lanes): the urgent lane's queues are consumed on a
        # channel of their own, which Celery's active_queues does not list.
        inspect = app.control.inspect(timeout=WORKER_REPLY_TIMEOUT)
        replies = {
            node: [{"name": name} for name in names]
            for node, names in (inspect._request("streamctl_queues") or {}).items()
        }
    except Exception as exc:  # the broker is down: reported by its own check too
        reason = type(exc).__name__
        return Check("workers", "fail", f"not asked: the broker does not answer ({reason})")
    if not replies:
        return Check(
            "workers",
            "fail",
            f"no worker answered within {WORKER_REPLY_TIMEOUT:g} s: nothing will be sent "
            "(start one: streamctl worker)",
        )
    by_queues: dict[str, int] = {}
    for queues in replies.values():
        names = ",".join(sorted(str(queue.get("name")) for queue in queues or ()))
        by_queues[names or "no queue"] = by_queues.get(names or "no queue", 0) + 1
    described = "; ".join(f"{count} on {names}" for names, count in sorted(by_queues.items()))
    wanted = set(queue_names(app))
    consumed = {name for names in by_queues for name in names.split(",")}
    missing = sorted(wanted - consumed)
    if missing:
        return Check(
            "workers",
            "warn",
            f"{len(replies)} answered ({described}); no worker consumes {', '.join(missing)}",
        )
    return Check("workers", "ok", f"{len(replies)} answered ({described})")


def check_queues(app: Celery, settings: Settings) -> Check:
    """Messages waiting in each queue, read through kombu (Redis and RabbitMQ alike)."""
    from kombu.exceptions import ChannelError

    depths: list[str] = []
    try:
        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=0)
            for name in queue_names(app):
                # A channel per queue: a passive declare of a missing queue closes it (AMQP).
                channel = connection.channel()
                try:
                    _queue, waiting, _consumers = channel.queue_declare(name, passive=True)
                    depths.append(f"{name} {waiting}")
                except ChannelError:  # never declared: no worker has consumed it yet, or empty
                    depths.append(f"{name} 0")
                finally:
                    _close_quietly(channel)
    except Exception as exc:  # the broker is down: reported by its own check too
        where = mask_url(settings.broker_url)
        return Check("queues", "fail", f"not read: {where} does not answer ({type(exc).__name__})")
    return Check("queues", "ok", "messages waiting: " + ", ".join(depths))


def _close_quietly(channel: Any) -> None:
    with contextlib.suppress(Exception):  # a channel the broker closed already
        channel.close()


def check_refusals(settings: Settings) -> Check:
    """Fail when the latest closes in the results log were refused for a configuration reason."""
    import redis

    from worker.store.redis import client_for_url

    try:
        with client_for_url(
            settings.redis_url,
            sentinel_master=settings.sentinel_master,
            timeout=REDIS_TIMEOUT,
            ssl=settings.redis_ssl,
        ) as client:
            entries = client.xrevrange(settings.results_log, count=RECENT_RESULTS)
    except redis.RedisError as exc:
        return Check("refusals", "skip", f"results log not read ({type(exc).__name__})")
    return judge_refusals([_result(fields) for _id, fields in entries])


def judge_refusals(newest_first: Sequence[dict[str, Any] | None]) -> Check:
    """The refusal check on results read newest first (None: an entry that is not a result)."""
    sent = [
        result
        for result in newest_first
        if result is not None
        and result.get("type") == "job"
        and result.get("outcome") in ("success", "failure")
    ]
    if not sent:
        return Check("refusals", "skip", "no close in the results log yet")
    streak = 0
    for result in sent:
        if result.get("api_code") not in CONFIG_REFUSALS:
            break
        streak += 1
    refused = [result for result in sent if result.get("api_code") in CONFIG_REFUSALS]
    if not refused:
        return Check("refusals", "ok", f"none among the last {len(sent)} closes")
    code = str((sent[0] if streak else refused[0]).get("api_code"))
    meaning, fix = CONFIG_REFUSALS[code]
    when = str((sent[0] if streak else refused[0]).get("finished_at") or "")
    if streak:
        count = f"{streak}+" if streak == len(sent) == RECENT_RESULTS else str(streak)
        return Check(
            "refusals",
            "fail",
            f"the last {count} close(s) were refused: {meaning} (code {code}, latest {when}): "
            f"{fix}; this clears with the next close that succeeds",
        )
    return Check(
        "refusals",
        "warn",
        f"{len(refused)} of the last {len(sent)} closes were refused: {meaning} "
        f"(code {code}, latest {when}): {fix}",
    )


def _result(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        value = json.loads(fields[b"result"])
    except (KeyError, ValueError):
        return None
    return value if isinstance(value, dict) else None
