"""RabbitMQ as the broker: the whole path on a quorum queue (state and results stay on Redis).

Each test takes a virtual host of its own on the machine's RabbitMQ (tests.faults.harness).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from config.lanes import BULK, BULK_QUEUE, CONSUMED_QUEUES, URGENT, URGENT_QUEUE
from tests.conftest import TEST_API_KEY, TEST_SECRET
from tests.faults.harness import (
    RABBITMQ_URL,
    Cluster,
    TricklingProducer,
    close_vhost_connections,
    cluster,
    lost_and_doubled,
    rabbitmq_reachable,
    rabbitmq_vhost,
    rabbitmqctl,
    report,
    unique_target,
)
from tests.faults.harness import outcomes as outcome_counts
from tests.faults.test_fault_leaks import SIGNATURE_SHAPE
from worker.broker import messages
from worker.broker.app import CLOSE_TASK
from worker.errors import EnqueueError
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender
from worker.produce.producer import close_kwargs

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not rabbitmq_reachable(), reason=f"no RabbitMQ at {RABBITMQ_URL}"),
]


def queue_types(vhost_url: str) -> dict[str, tuple[str, ...]]:
    """Each queue of the virtual host: its type and whether it is durable."""
    vhost = vhost_url.rsplit("/", 1)[1]
    listing = rabbitmqctl(
        "list_queues", "-p", vhost, "--no-table-headers", "name", "type", "durable"
    )
    rows = [line.split("\t") for line in listing.splitlines() if line.strip()]
    return {name: tuple(values) for name, *values in rows}


def start_firehose(fleet: Cluster, vhost: str) -> None:
    """Copy every message published and delivered in the virtual host to a queue of the test's:
    RabbitMQ's firehose (``amq.rabbitmq.trace``)."""
    with fleet.app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_declare("firehose", durable=False, auto_delete=False)
        channel.queue_bind("firehose", "amq.rabbitmq.trace", "#")
    rabbitmqctl("trace_on", "-p", vhost)


def read_firehose(fleet: Cluster) -> tuple[str, set[str]]:
    """Every traced message's body and headers, as text; the routing keys they were traced by
    (``publish.<exchange>``, ``deliver.<queue>``)."""
    traced: list[str] = []
    routes: set[str] = set()
    with fleet.app.connection_for_write() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get("firehose", no_ack=True)) is not None:
            headers = message.properties.get("application_headers") or {}
            traced.append(message.body.decode("utf-8", "replace") + repr(headers))
            routes.add(message.delivery_info["routing_key"])
    return "\n".join(traced), routes


def test_close_outcomes_with_rabbitmq_as_the_broker(tmp_path: Path, sandbox: Any) -> None:
    with rabbitmq_vhost() as broker_url, cluster(tmp_path, broker_url=broker_url) as fleet:
        vhost = broker_url.rsplit("/", 1)[1]
        # Leaks: every message of the run is traced, the worker's retries and hand-backs (through
        # the delayed-delivery exchanges), Celery's events and control replies included.
        start_firehose(fleet, vhost)
        fleet.start_worker("worker", concurrency=8)
        targets = {
            name: unique_target(f"amqp-{name}") for name in ("ok", "refused", "flaky", "handed")
        }
        sandbox.inject(targets["refused"], "refuse", code="0005")
        # More failures than one delivery's five attempts: only a Celery retry, published
        # with a countdown through RabbitMQ's delayed delivery, can reach the success.
        sandbox.inject(targets["flaky"], "http_error", status=503, times=8)
        jobs = {
            fleet.producer.close(**target): name
            for name, target in targets.items()
            if name != "handed"
        }
        bad, stale, handed = (str(uuid.uuid4()) for _ in range(3))
        fleet.app.send_task(CLOSE_TASK, kwargs={"stream_id": -1}, task_id=bad)
        late = {**unique_target("amqp-stale"), "expires_at": time.time() - 1}
        fleet.app.send_task(CLOSE_TASK, kwargs=late, task_id=stale)
        # A batch job handed back with a countdown under a second (the limiter's hand-back,
        # a retry whose expiry leaves little room): delayed delivery counts whole seconds.
        now = time.time()
        kwargs = close_kwargs(
            CloseJob.parse(targets["handed"]), enqueued_at=now, expires_at=now + 30, batch_id=None
        )
        fleet.producer.state.record_pending([(handed, kwargs)])
        messages.send_retry(fleet.app, handed, kwargs, countdown=0.4)
        bulk_close = fleet.producer.close(**unique_target("amqp-bulk"), lane=BULK)
        jobs.update({bad: "malformed", stale: "stale", handed: "handed", bulk_close: "bulk"})
        batch = BatchSender(fleet.settings, fleet.app).start(
            [CloseJob.parse(unique_target("amqp-batch")) for _ in range(20)]
        )
        results = fleet.wait_for([*jobs, *batch.job_ids], timeout=60)
        log = fleet.workers[0].log()
        queues = queue_types(broker_url)
        rabbitmqctl("trace_off", "-p", vhost)
        traced, routes = read_firehose(fleet)

    outcomes = {
        jobs.get(job_id, "batch"): found[0]["outcome"] if found else "lost"
        for job_id, found in results.items()
    }
    flaky = next(found[0] for job_id, found in results.items() if jobs.get(job_id) == "flaky")
    signatures = [
        candidate
        for candidate in SIGNATURE_SHAPE.findall(traced)
        if sandbox.signature_seen(candidate.replace("\\/", "/"))
    ]
    report(
        "rabbitmq",
        broker="RabbitMQ",
        queues={name: queues[name] for name in CONSUMED_QUEUES},
        outcomes=outcomes,
        batch=dict(outcome_counts({j: results[j] for j in batch.job_ids})),
        flaky_attempts=len(flaky["attempts"]),
        lost=sum(1 for found in results.values() if not found),
        traced_bytes=len(traced),
        secret=traced.count(TEST_SECRET),
        api_key=traced.count(TEST_API_KEY),
        signatures=len(signatures),
    )
    assert "amqp://" in log  # the worker really ran on RabbitMQ
    assert all(queues[name] == ("quorum", "true") for name in CONSUMED_QUEUES), queues
    assert outcomes == {
        "ok": "success",
        "refused": "failure",
        "flaky": "success",
        "malformed": "rejected",
        "stale": "expired",
        "handed": "success",
        "bulk": "success",
        "batch": "success",
    }
    lanes = {jobs.get(job_id, "batch"): found[0]["lane"] for job_id, found in results.items()}
    assert lanes["ok"] == URGENT and lanes["bulk"] == BULK and lanes["batch"] == BULK
    assert all(len(found) == 1 for found in results.values())
    assert [a["http_status"] for a in flaky["attempts"]] == [503] * 8 + [200]
    assert len(sandbox.requests_for(targets["flaky"])) == 9
    # Traced: the producers' and the worker's messages, the retry's through delayed delivery;
    # not one of them holds the secret, the API key or a request's signature.
    lane_routes = {
        f"{way}.{queue}" for way in ("publish", "deliver") for queue in (URGENT_QUEUE, BULK_QUEUE)
    }
    assert lane_routes <= routes, routes
    assert any(route.startswith("publish.celery_delayed_") for route in routes), routes
    assert TEST_SECRET not in traced and TEST_API_KEY not in traced
    assert signatures == []


def test_an_enqueue_returns_only_for_a_job_the_broker_holds(tmp_path: Path) -> None:
    # A queue that refuses messages past its length limit (as a full queue or a disk alarm
    # would): the broker says so with a nack, which only a producer that waits for publisher
    # confirms hears. Without them every enqueue returned and the refused jobs were gone.
    with rabbitmq_vhost() as broker_url, cluster(tmp_path, broker_url=broker_url) as fleet:
        vhost = broker_url.rsplit("/", 1)[1]
        # Single closes go to the urgent lane's queue (one message fits), batches to the bulk
        # one (none fits).
        limit = '{"max-length": %d, "overflow": "reject-publish"}'
        for name, queue, most in (("one", URGENT_QUEUE, 1), ("none", BULK_QUEUE, 0)):
            pattern = "^" + queue.replace(".", "\\.") + "$"
            rabbitmqctl(
                "set_policy", "-p", vhost, "--apply-to", "queues", name, pattern, limit % most
            )
        returned, refused = 0, 0
        for _ in range(5):
            try:
                fleet.producer.close(**unique_target("amqp-full"))
                returned += 1
            except EnqueueError as exc:
                assert "the broker refused it (MessageNacked" in str(exc)
                refused += 1
        sender = BatchSender(fleet.settings, fleet.app)
        batch = [CloseJob.parse(unique_target("amqp-batch")) for _ in range(3)]
        with pytest.raises(EnqueueError, match="it was cancelled"):
            sender.start(batch)
        with fleet.app.connection_for_write() as connection:
            # A passive declare counts at once (list_queues' figures for a quorum queue lag).
            queued = connection.default_channel.queue_declare(URGENT_QUEUE, passive=True)[1]

    report("rabbitmq-confirms", returned=returned, refused=refused, queued=queued)
    assert returned >= 1 and refused >= 1
    assert queued == returned  # exactly the jobs whose enqueue returned


RESTART_JOBS = 150


def test_broker_restart_mid_run_loses_nothing(tmp_path: Path, sandbox: Any) -> None:
    # The shared RabbitMQ cannot be stopped (other runs use it): every connection to this
    # test's virtual host is closed instead, which is what a restart does to the clients.
    with rabbitmq_vhost() as broker_url, cluster(tmp_path, broker_url=broker_url) as fleet:
        fleet.start_worker("a", concurrency=4)
        fleet.start_worker("b", concurrency=4)
        trickle = TricklingProducer(fleet.producer, "amqp-restart", RESTART_JOBS, pause=0.02)
        enqueued_before = trickle.start_and_wait_for(RESTART_JOBS // 3)
        accepted, failed_enqueues, unexpected = (
            trickle.accepted,
            trickle.failed_enqueues,
            trickle.unexpected,
        )
        close_vhost_connections(broker_url)
        trickle.thread.join(timeout=120)
        assert not trickle.thread.is_alive(), "the producer hung"
        results = fleet.wait_for(accepted, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            worker.log().count("Connected to amqp") >= 2 for worker in fleet.workers
        ):
            time.sleep(0.2)
        reconnected = sum(worker.log().count("Connected to amqp") >= 2 for worker in fleet.workers)
        workers_alive = all(worker.alive() for worker in fleet.workers)

    lost, doubled = lost_and_doubled(results)
    figures = report(
        "rabbitmq-restart",
        jobs=RESTART_JOBS,
        enqueued_before_restart=enqueued_before,
        enqueue_errors_retried=len(failed_enqueues),
        lost=lost,
        duplicate_results=doubled,
        outcomes=dict(outcome_counts(results)),
        workers_reconnected=reconnected,
    )
    assert not unexpected, f"the producer raised {unexpected[0]!r}"
    assert all("unreachable" in text for text in failed_enqueues), failed_enqueues[:3]
    assert len(results) == RESTART_JOBS
    assert figures["lost"] == 0 and figures["duplicate_results"] == 0
    # RabbitMQ gives the unacknowledged messages of a closed connection back: nothing is lost
    # in transit, nothing ends by the janitor.
    assert figures["outcomes"] == {"success": RESTART_JOBS}
    assert workers_alive and reconnected == 2


def test_raw_garbage_on_the_queue_never_takes_a_worker_down(tmp_path: Path, sandbox: Any) -> None:
    # On a quorum queue a message given back forever would loop; each of these must be dropped
    # (acknowledged or rejected without requeue) and the worker go on serving.
    garbage: list[tuple[bytes, str, dict[str, Any]]] = [
        (b"\x00\xffnot json", "application/json", {}),
        (b"[1, 2", "application/json", {"task": CLOSE_TASK, "id": "g-1"}),
        (b'{"a": 1}', "application/json", {"task": CLOSE_TASK, "id": "g-2"}),
        (b'[[], {"stream_id": 1}, {}]', "application/json", {"task": "no.such.task", "id": "g-3"}),
        (b"\x80\x04K\x01.", "application/x-python-serialize", {"task": CLOSE_TASK, "id": "g-4"}),
        (b"plain text", "text/plain", {}),
    ]
    with rabbitmq_vhost() as broker_url, cluster(tmp_path, broker_url=broker_url) as fleet:
        worker = fleet.start_worker("worker", concurrency=4)
        queue = fleet.app.amqp.queues["streamctl"]
        with fleet.app.producer_or_acquire() as producer:
            for body, content_type, headers in garbage:
                producer.publish(
                    body,
                    exchange=queue.exchange,
                    routing_key=queue.routing_key,
                    content_type=content_type,
                    content_encoding="utf-8"
                    if content_type != "application/x-python-serialize"
                    else "binary",
                    headers=headers,
                    declare=[queue],
                )
        after = unique_target("amqp-after-garbage")
        job_id = fleet.producer.close(**after)
        results = fleet.wait_for([job_id], timeout=30)
        time.sleep(1)  # the broker's counts settle
        with fleet.app.connection_for_write() as connection:
            left = connection.default_channel.queue_declare("streamctl", passive=True)
        alive = worker.alive()
        log = worker.log()

    report("rabbitmq-garbage", messages=len(garbage), left_on_queue=left[1], consumers=left[2])
    assert alive, log[-3000:]
    assert results[job_id] and results[job_id][0]["outcome"] == "success"
    assert left[1] == 0  # nothing given back to loop on the queue
