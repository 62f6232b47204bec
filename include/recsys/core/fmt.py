"""Numbers as people read them: one parser (:func:`as_number`) and one formatter (:func:`fmt_num`).

Every table a person reads (the gate table, the run card, Slack, the approval request, the demo
screen, validation messages) formats its numbers here, in one of a few named styles, so the same
value reads the same everywhere it is shown in that style.
"""

from __future__ import annotations

import html
import math
from typing import Any, Literal

Style = Literal["plain", "int", "compact", "pct", "html"]

_DIGITS = {"plain": 4, "int": 4, "compact": 4, "pct": 2, "html": 4}


def as_number(x: Any, *, finite: bool = False) -> float | None:
    """``x`` as a float, or None when it is missing, a bool, not a number or NaN (and, with
    ``finite``, also +-inf): report values arrive as JSON, so a metric may be absent or text."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    if math.isnan(v) or (finite and math.isinf(v)):
        return None
    return v


def fmt_num(x: Any, style: Style = "plain", *, digits: int | None = None) -> str:
    """``x`` as text in one of the styles below (``digits`` defaults to 4, 2 for ``pct``).

    * ``plain``: floats fixed-point (``0.1235``), other values as ``str``, None ``n/a``.
    * ``int``: ints with thousands separators (``1,234``), other values as ``str``, None ``n/a``.
    * ``compact``: floats with ``digits`` significant digits (``0.1235``, ``1.2e+04``), a pair
      as ``[lo, hi]``, other values as ``str``, None ``-``.
    * ``pct``: a percentage (``12.50%``; below 0.01 with ``digits`` significant digits so a
      tiny share never reads as 0), None ``n/a``.
    * ``html``: finite numbers only (:func:`as_number`): ints ``1,234``, the rest fixed-point;
      None ``&ndash;``; anything else HTML-escaped text.
    """
    if style not in _DIGITS:
        raise ValueError(f"unknown number style {style!r}")
    d = _DIGITS[style] if digits is None else digits
    if style == "html":
        v = as_number(x, finite=True)
        if v is None:
            return "&ndash;" if x is None else html.escape(str(x))
        return f"{x:,}" if isinstance(x, int) else f"{v:.{d}f}"
    if x is None:
        return "-" if style == "compact" else "n/a"
    if style == "pct":
        return f"{x:.{d}f}%" if x == 0 or x >= 0.01 else f"{x:.{d}g}%"
    if style == "int":
        return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)
    if style == "compact":
        if isinstance(x, list | tuple) and len(x) == 2:
            return f"[{fmt_num(x[0], 'compact', digits=d)}, {fmt_num(x[1], 'compact', digits=d)}]"
        return f"{x:.{d}g}" if isinstance(x, float) else str(x)
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)  # plain
