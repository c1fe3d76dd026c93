"""Memory sizes as people write them ("456 MB", "2GiB") and back ("1.5 GiB").

SI units step by 1000 (B, KB, MB, GB, TB), binary units by 1024 (KiB, MiB, GiB, TiB).
Units are case-insensitive, so ``"mb"`` is a megabyte, never a megabit.
"""

from __future__ import annotations

import math
import numbers
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from fedloom.errors import ResourceSpecError

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
"""Lower-cased unit → bytes. A bare number is a count of bytes."""

VALID_UNITS = "B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024)"

_SIZE = re.compile(r"(?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)")
_FORMAT_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _invalid(value: object, why: str) -> ResourceSpecError:
    return ResourceSpecError(
        f"{value!r} is not a memory size: {why}. Write a number of bytes or a number with "
        f'a unit, such as "456 MB" or "2GiB"; valid units: {VALID_UNITS}'
    )


def parse_size(value: int | float | str) -> int:
    """The number of bytes that ``value`` stands for.

    Args:
        value: A non-negative number of bytes (fractions are rounded up), or a string such
            as ``"456 MB"``, ``"1.5 GB"``, ``"2GiB"``, ``"64 KiB"`` or ``"1024"``. Units are
            case-insensitive; spaces around the number and the unit are allowed.

    Returns:
        The size in bytes, rounded up to a whole byte.

    Raises:
        ResourceSpecError: ``value`` is empty, negative, NaN or infinite, a bool, of
            another type, has an unknown unit, or is not a size at all.
    """
    if isinstance(value, bool):
        raise _invalid(value, "a bool is not a size")
    if isinstance(value, numbers.Integral):
        if int(value) < 0:
            raise _invalid(value, "a size cannot be negative")
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise _invalid(value, "a size must be a finite number")
        if number < 0:
            raise _invalid(value, "a size cannot be negative")
        return math.ceil(number)
    if not isinstance(value, str):
        raise _invalid(value, f"expected a number or a string, got {type(value).__name__}")
    text = value.strip().lower()
    if not text:
        raise _invalid(value, "the text is empty")
    match = _SIZE.fullmatch(text)
    if match is None:
        raise _invalid(value, "expected a number followed by an optional unit")
    unit = match["unit"] or "b"
    if unit not in UNITS:
        raise _invalid(value, f"unknown unit {match['unit']!r}")
    try:
        # Decimal, not float: "0.1 KB" must be exactly 100 bytes, not 101 after rounding up
        number_d = Decimal(match["number"])
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise _invalid(value, "the number cannot be read") from exc
    if number_d < 0:
        raise _invalid(value, "a size cannot be negative")
    if number_d.adjusted() > 30:
        raise _invalid(value, "the number is too large to be a memory size")
    return int((number_d * UNITS[unit]).to_integral_value(rounding=ROUND_CEILING))


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps the number ≥ 1, e.g. ``"1.5 GiB"``.

    One decimal at most, without a trailing ``.0``; below 1 KiB the exact byte count.
    """
    sign = "-" if n < 0 else ""
    size = abs(int(n))
    for name, factor in _FORMAT_UNITS:
        if size >= factor:
            text = f"{size / factor:.1f}".removesuffix(".0")
            return f"{sign}{text} {name}"
    return f"{sign}{size} B"
