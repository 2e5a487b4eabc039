"""Enqueueing close jobs: one at a time, or as batches from a target file."""
