"""The root of streamctl's error tree and the configuration error, where settings can raise it.

``config/`` imports nothing from ``worker/``, so the two classes settings need live here;
``worker.errors`` re-exports them and builds the rest of the one error tree on them (import
them from there).
"""

from __future__ import annotations


class StreamctlError(Exception):
    """Base of every error raised by streamctl itself."""


class ConfigError(StreamctlError):
    """A setting is missing or malformed; the message names the environment variable."""
