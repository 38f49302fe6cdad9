"""CSV for spreadsheets: the one writer behind every CSV the tool exports (audit trail, worklist).

A cell that a spreadsheet would run as a formula is written as text: a value starting with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe (OWASP's advice
on CSV injection). File names, notes and reviewer names are typed by users, so every text cell
goes through it, not only the ones that look risky today.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """``value``, with an apostrophe in front when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(rows: Iterable[Mapping[str, object]], columns: Sequence[str], float_digits: int | None = None) -> str:
    """Rows as CSV text with a header, every text cell ``spreadsheet_safe``.

    Args:
        rows: one mapping per row; keys outside ``columns`` are refused, missing ones are empty.
        columns: the header, in order.
        float_digits: floats written with this many decimals; None writes them as Python does.
            NaN and None are written as empty cells.

    Returns:
        The CSV text, one line per row ("\\n" line ends).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value, float_digits) for key, value in row.items()})
    return buffer.getvalue()


def _cell(value: object, float_digits: int | None) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and float_digits is not None:
        return f"{value:.{float_digits}f}"
    return spreadsheet_safe(value)
