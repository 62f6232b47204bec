"""The number styles of ``include.recsys.core.fmt``: what each table has always shown."""

from __future__ import annotations

import math

import numpy as np
import pytest

from include.recsys.core.fmt import as_number, fmt_num


@pytest.mark.parametrize(
    ("x", "expected"),
    [(None, None), (True, None), ("abc", None), ([1], None), (float("nan"), None),
     (3, 3.0), ("0.25", 0.25), (np.float32(0.5), 0.5), (np.int64(7), 7.0)],
)
def test_as_number(x, expected) -> None:
    assert as_number(x) == expected


def test_as_number_inf_only_when_not_finite() -> None:
    assert as_number(float("inf")) == math.inf and as_number("-inf") == -math.inf
    assert as_number(float("inf"), finite=True) is None and as_number(1.5, finite=True) == 1.5


@pytest.mark.parametrize(
    ("x", "style", "expected"),
    [
        # plain: the gate table, the CLI summary, the approval request
        (None, "plain", "n/a"), (0.123456, "plain", "0.1235"), (20, "plain", "20"), ("x", "plain", "x"),
        (True, "plain", "True"), (np.float64(0.5), "plain", "0.5000"),
        # int: the demo's progress lines
        (1234567, "int", "1,234,567"), (True, "int", "True"), (12.5, "int", "12.5"), (None, "int", "n/a"),
        # compact: Slack
        (None, "compact", "-"), (False, "compact", "False"), (0.123456, "compact", "0.1235"),
        (12345.678, "compact", "1.235e+04"), ((0.1, 0.25), "compact", "[0.1, 0.25]"),
        ([1, None], "compact", "[1, -]"), ([1, 2, 3], "compact", "[1, 2, 3]"), (7, "compact", "7"),
        # pct: validation messages
        (None, "pct", "n/a"), (0, "pct", "0.00%"), (12.5, "pct", "12.50%"), (0.01, "pct", "0.01%"),
        (0.001234, "pct", "0.0012%"),
        # html: the run card
        (None, "html", "&ndash;"), (1234, "html", "1,234"), (0.5, "html", "0.5000"), ("0.5", "html", "0.5000"),
        (float("inf"), "html", "inf"), (float("nan"), "html", "nan"), ("<b>", "html", "&lt;b&gt;"),
        (True, "html", "True"), (np.int64(3), "html", "3.0000"),
    ],
)
def test_styles(x, style, expected) -> None:
    assert fmt_num(x, style) == expected


def test_digits_and_unknown_style() -> None:
    assert fmt_num(0.951, "html", digits=2) == "0.95"
    assert fmt_num(0.123456, digits=2) == "0.12"
    assert fmt_num(12345.678, "compact", digits=6) == "12345.7"
    with pytest.raises(ValueError, match="'fancy'"):
        fmt_num(1.0, "fancy")  # type: ignore[arg-type]
