"""Patches that keep a worker alive through broker faults the fault suite found."""
