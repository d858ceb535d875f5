# SPDX-License-Identifier: Apache-2.0
"""Durations and sizes as users write them ("2h", "1:30:00", "4G"), turned into the
milliseconds and bytes the hub takes. The units are the command line's (docs/jobs.md)."""
import datetime
import numbers
import re

_DURATION_UNITS = {"ms": 1, "": 1000, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000,
                   "d": 86_400_000}
_SIZE_UNITS = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4,
               "P": 1024 ** 5}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def duration_ms(value, what):
    """Milliseconds in `value`: seconds as a number, a ``datetime.timedelta``, or a string:
    "250ms", "90s", "15m", "2h", "1d", a bare number of seconds, "MM:SS" or "H:MM:SS".
    `what` names the parameter in errors."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} must not be negative, not {value}")
        return round(value * 1000)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be seconds or a string like '2h', not "
                        f"{type(value).__name__}")
    text = value.strip()
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", text):
        seconds = 0
        for part in text.split(":"):
            seconds = seconds * 60 + int(part)
        return seconds * 1000
    match = re.fullmatch(_NUMBER + r"\s*([a-z]*)", text)
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"{what}: {value!r} is not a duration: use seconds, or a number with a "
                         "unit like 250ms, 90s, 15m, 2h or 1d, or H:MM:SS")
    return round(float(match.group(1)) * _DURATION_UNITS[match.group(2)])


def size_bytes(value, what):
    """Bytes in `value`: a whole number of bytes, or a string with a binary unit: "512M", "4G",
    "1.5T" (B, K, M, G, T, P; a trailing "B" or "iB" is accepted). `what` names the parameter."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{what} must not be negative, not {value}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be bytes or a string like '4G', not "
                        f"{type(value).__name__}")
    match = re.fullmatch(_NUMBER + r"\s*([a-zA-Z]*)", value.strip())
    unit = match.group(2).upper() if match else ""
    if unit.endswith("IB"):
        unit = unit[:-2]
    elif len(unit) == 2 and unit.endswith("B"):
        unit = unit[:-1]
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"{what}: {value!r} is not a size: use bytes as a number, or a number "
                         "with a binary unit B, K, M, G, T or P, like '512M' or '4G'")
    return round(float(match.group(1)) * _SIZE_UNITS[unit])
