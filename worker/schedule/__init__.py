"""Scheduled reconnects: the schedule file, the locked beat scheduler, one due run."""
