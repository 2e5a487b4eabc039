"""The close-stream tasks: unpack the delivery, run the job(s), report. Nothing else."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from config.brokers import delayed_delivery_seconds
from config.lanes import LANE_FIELD, LANES, URGENT, queue_for
from worker.broker import messages
from worker.broker.app import CLOSE_MANY_TASK, CLOSE_TASK, app
from worker.consume.runner import AlreadyFinal, Delivery, RetryLater, final_outcome
from worker.consume.wiring import runner
from worker.errors import InvalidChunk, JobNotSucceeded

_OPTIONS: dict[str, Any] = {
    "bind": True,
    # A job that ended other than success makes its task FAILURE (task-failed in Flower), logged
    # in one line as expected, acknowledged as any failure of an acks_late task (Celery's
    # task_acks_on_failure_or_timeout, left at its default True), never retried.
    "throws": (JobNotSucceeded,),
    # acks_late and reject_on_worker_lost: set for every task in config/celeryconfig.py.
    # Each job's result goes to the results channel (worker.store.jobs); storing it in Celery's
    # backend as well cost two more Redis round trips per job for nothing a reader uses.
    "ignore_result": True,
}


@app.task(name=CLOSE_TASK, max_retries=None, **_OPTIONS)
def close_stream(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    outcome = runner().run(Delivery(job_id=self.request.id, args=tuple(args), kwargs=kwargs))
    if isinstance(outcome, RetryLater):
        # The job's counts travel in its kwargs (worker.api.retry), not in Celery's retries.
        countdown = delayed_delivery_seconds(outcome.countdown)  # RabbitMQ counts whole seconds
        # Named explicitly: on quorum queues Celery would route a countdown by the default
        # queue's key. The runner wrote the job's lane into its kwargs.
        lane = outcome.kwargs.get(LANE_FIELD)
        queue = queue_for(lane if lane in LANES else URGENT)
        raise self.retry(
            countdown=countdown,
            kwargs=outcome.kwargs,
            max_retries=None,
            queue=queue,
            routing_key=queue,
        )
    result = outcome.result if isinstance(outcome, AlreadyFinal) else outcome.to_dict()
    ended = final_outcome(outcome)
    if ended != "success":
        code = result.get("api_code")
        said = f" (code {code})" if code else ""
        raise JobNotSucceeded({ended: 1}, f"{ended}{said}: {result.get('message')}")
    return result


@app.task(name=CLOSE_MANY_TASK, **_OPTIONS)
def close_many(self: Task, *args: Any, **kwargs: Any) -> dict[str, int]:
    try:
        entries = messages.parse_chunk(args, kwargs)
    except InvalidChunk as exc:
        raise Reject(f"malformed batch message: {exc}", requeue=False) from None
    job_runner = runner()
    deliveries = []
    for job_id, job_kwargs in entries:
        if isinstance(job_kwargs, dict):
            deliveries.append(Delivery(job_id=job_id, args=(), kwargs=job_kwargs))
        else:
            job_runner.reject(job_id, "a batch entry must be an object of the job's fields")
    rejected = len(entries) - len(deliveries)
    run = job_runner.run_chunk(deliveries)
    for delivery, later in run.retry_later:
        messages.send_retry(self.app, delivery.job_id, later.kwargs, countdown=later.countdown)
    if run.leftover:
        messages.send_chunk(self.app, [(d.job_id, d.kwargs) for d in run.leftover])
    outcomes = dict(run.outcomes)
    if rejected:
        outcomes["rejected"] = outcomes.get("rejected", 0) + rejected
    failed = sum(count for name, count in outcomes.items() if name != "success")
    if failed:
        # After the hand-backs were sent: the message's other jobs are safe whatever follows.
        counted = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
        total = rejected + run.ended
        raise JobNotSucceeded(outcomes, f"{failed} of {total} job(s) did not succeed ({counted})")
    return {"ended": run.ended, "retried": len(run.retry_later), "leftover": len(run.leftover)}
