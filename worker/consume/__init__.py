"""Running close jobs in a worker: the job runner, its wiring, start hooks, the janitor."""
