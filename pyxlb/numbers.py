"""The one check for numbers from outside (YAML, flags, API objects, callers).

Python's bool is an int, and YAML reads ``yes`` as True: a port of ``true`` must be refused,
not taken as 1. Every range check in pyxlb goes through these predicates; each caller keeps
its own message (it knows the field's name and which error class its users catch).
"""

from __future__ import annotations

from typing import Any, Optional


def int_in(value: Any, low: Optional[int] = None, high: Optional[int] = None) -> bool:
    """True if `value` is an int (never a bool) with low <= value <= high (None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def positive_number(value: Any) -> bool:
    """True if `value` is an int or float (never a bool) greater than 0 (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value > 0
