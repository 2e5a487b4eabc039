"""The one parser of rates and durations, for settings, schedule files and ``--since``.

Here, not in ``worker/``, because the settings parse rates and ``config/`` imports nothing from
``worker/``; ``worker.schedule.file`` and ``worker.store.results_log`` use it too.
"""

from __future__ import annotations

import re

#: Seconds per unit of a duration (``90s``, ``10m``, ``1h``, ``1d``).
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Seconds per unit of a rate's denominator (``20/s``, ``1200/min``, ``5000/hour``).
RATE_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
RATE_UNITS.update({"h": 3600, "hour": 3600})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])?\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")


def duration_seconds(
    text: str, *, unit_required: bool = False, whole: bool = False
) -> float | None:
    """``text`` as a duration in seconds (``90``, ``90s``, ``1.5m``, ``2h``, ``1d``), or None.

    A bare number is seconds unless ``unit_required``; ``whole`` admits whole numbers only.
    None when ``text`` is not such a duration: the caller names what it expected.
    """
    match = _DURATION.match(text)
    if match is None or (unit_required and match[2] is None) or (whole and "." in match[1]):
        return None
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


def parse_rate(value: object) -> float | None:
    """A rate such as ``20/s``, ``1200/m`` or ``20`` (per second), in requests per second.

    None or an empty string means no limit. Raises ValueError on anything else.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        per_second = float(value)
    elif isinstance(value, str) and (match := _RATE.match(value)):
        per_second = float(match[1]) / RATE_UNITS[match[2]]
    elif isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        per_second = float(value)
    else:
        raise ValueError("must be a rate such as 20/s, 1200/m or 5000/h")
    if not per_second > 0:
        raise ValueError("must be a positive rate such as 20/s")
    return per_second
