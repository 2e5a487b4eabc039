"""The ``streamctl`` command (``python -m worker.cli``)."""
