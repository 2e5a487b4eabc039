"""What lives in Redis: job state and results, batches, the cluster rate limit, the results log."""
