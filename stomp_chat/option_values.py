"""Option values from text: what ``usage.Options`` calls to check and convert each one.

One home for the numeric and switch options of ``twistd stomp-chat`` and of the
modules that contribute options (authentication), so that every option says
what is wrong with a value the same way, wherever the value came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def _documented(coerce: Callable[..., Any], doc: str) -> Any:
    coerce.coerceDoc = doc  # type: ignore[attr-defined]
    return coerce


def whole_number(name: str, *, allow_zero: bool) -> Any:
    """An int; positive, or zero or more."""

    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, not {value[:40]!r}") from None
        if number < 0:
            raise ValueError(f"{name} cannot be negative, not {number}")
        if number == 0 and not allow_zero:
            raise ValueError(f"{name} must be positive, not {number}")
        return number

    return _documented(
        coerce, "A whole number, 0 or more." if allow_zero else "A positive whole number."
    )


def positive_int(name: str) -> Any:
    return whole_number(name, allow_zero=False)


def non_negative_int(name: str) -> Any:
    return whole_number(name, allow_zero=True)


def number(name: str, *, allow_zero: bool) -> Any:
    """A finite float; positive, or zero or more."""

    def coerce(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {value[:40]!r}") from None
        if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
            raise ValueError(
                f"{name} must be {'zero or more' if allow_zero else 'positive'}, not {value!r}"
            )
        return result

    return _documented(coerce, "A number, 0 or more." if allow_zero else "A positive number.")


def seconds(name: str, *, allow_zero: bool) -> Any:
    """A finite number of seconds; more than zero, or zero or more."""

    def coerce(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"{name} is a number of seconds, not {value[:40]!r}") from None
        if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
            bound = "zero or more" if allow_zero else "more than zero"
            raise ValueError(f"{name} must be {bound} seconds, not {value}")
        return result

    return _documented(
        coerce, "Seconds, " + ("zero or more." if allow_zero else "more than zero.")
    )


_SWITCH_VALUES = {"on": True, "true": True, "yes": True, "1": True,
                  "off": False, "false": False, "no": False, "0": False}


def switch(name: str) -> Any:
    """'on'/'off' (also true/false, yes/no, 1/0)."""

    def coerce(value: str | bool) -> bool:
        if isinstance(value, bool):
            return value
        try:
            return _SWITCH_VALUES[value.strip().lower()]
        except KeyError:
            raise ValueError(f"{name} is 'on' or 'off', not {value!r}") from None

    return _documented(coerce, "on or off.")
