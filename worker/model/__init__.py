"""The data a job is made of: targets, close jobs, results and outcomes (no I/O)."""
