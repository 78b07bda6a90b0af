"""Durations as admins type them: `90s`, `15m`, `12h`, `30d`, `2w`, or `0`."""

import re
from datetime import timedelta

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> timedelta:
    """Parse a duration; a bare number means seconds. Raises ValueError with a clear message."""
    match = _PATTERN.match(text or "")
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit s, m, h, d or w (e.g. 30d)"
        )
    amount, unit = int(match.group(1)), match.group(2) or "s"
    return timedelta(**{_UNITS[unit]: amount})


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
