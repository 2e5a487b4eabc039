"""The close-stream task: unpack the delivery, run the job, report. Nothing else."""

from __future__ import annotations

from typing import Any

from celery import Task

from worker.app import CLOSE_TASK, app
from worker.jobs import AlreadyFinal, Delivery, RetryLater
from worker.runtime import runner


@app.task(
    name=CLOSE_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
    # Each job's result goes to the results channel (worker.jobstate); storing it in Celery's
    # backend as well cost two more Redis round trips per job for nothing a reader uses.
    ignore_result=True,
    # A malformed message is dropped with a log line instead of stopping the worker.
    Strategy="worker.taskstrategy:checked",
)
def close_stream(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    delivery = Delivery(
        job_id=self.request.id,
        args=tuple(args),
        kwargs=kwargs,
        celery_retries=self.request.retries,
    )
    outcome = runner().run(delivery)
    if isinstance(outcome, RetryLater):
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    if isinstance(outcome, AlreadyFinal):
        return outcome.result
    return outcome.to_dict()
