"""The close-stream tasks: unpack the delivery, run the job(s), report. Nothing else."""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject

from config.brokers import delayed_delivery_seconds
from worker.broker import messages
from worker.broker.app import CLOSE_MANY_TASK, CLOSE_TASK, app
from worker.consume.runner import AlreadyFinal, Delivery, RetryLater
from worker.consume.wiring import runner
from worker.errors import InvalidChunk

_OPTIONS: dict[str, Any] = {
    "bind": True,
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
        raise self.retry(countdown=countdown, kwargs=outcome.kwargs, max_retries=None)
    if isinstance(outcome, AlreadyFinal):
        return outcome.result
    return outcome.to_dict()


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
    run = job_runner.run_chunk(deliveries)
    for delivery, later in run.retry_later:
        messages.send_retry(self.app, delivery.job_id, later.kwargs, countdown=later.countdown)
    if run.leftover:
        messages.send_chunk(self.app, [(d.job_id, d.kwargs) for d in run.leftover])
    return {"ended": run.ended, "retried": len(run.retry_later), "leftover": len(run.leftover)}
