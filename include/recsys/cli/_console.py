"""Where the CLI and the demo write: rich on a terminal, plain text otherwise.

Plain text is what CI logs, pipes and tests get: no colour codes, no box drawing, no line
wrapping (paths stay whole, so they can be copied and grepped). ``RECSYS_RICH=1`` forces
rich, ``RECSYS_RICH=0`` or ``NO_COLOR`` / ``TERM=dumb`` forces plain.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

#: verdict / state words and the rich style they get on a terminal
STYLES = {
    "PASS": "bold green", "PASSED": "bold green", "success": "green", "ok": "green",
    "FAIL": "bold red", "FAILED": "bold red", "failed": "bold red", "error": "bold red",
    "SKIP": "yellow", "SKIPPED": "yellow", "skipped": "yellow", "retry": "yellow",
    "upstream_failed": "red", "FORCED": "bold magenta",
}


def wants_rich(stream: TextIO) -> bool:
    forced = os.environ.get("RECSYS_RICH", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Out:
    """One output stream, rendered rich (terminal) or plain (everything else)."""

    def __init__(self, stream: TextIO | None = None, rich: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.rich = wants_rich(self.stream) if rich is None else rich
        self.console = None
        if self.rich:
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False, soft_wrap=True)

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line; ``style`` only colours it on a terminal. Rich markup is not parsed."""
        if self.console is not None:
            self.console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def styled(self, parts: Sequence[tuple[str, str | None]]) -> None:
        """One line made of (text, style) pieces."""
        if self.console is None:
            self.line("".join(t for t, _ in parts))
            return
        from rich.text import Text

        self.console.print(Text.assemble(*[(t, s or "") for t, s in parts]), soft_wrap=True)

    def table(
        self, rows: list[dict[str, Any]], columns: Sequence[str], title: str | None = None, indent: str = ""
    ) -> None:
        """Aligned columns (numbers right-aligned); a rich table on a terminal."""
        cells = [[_cell(r.get(c)) for c in columns] for r in rows]
        numeric = [all(_is_number(r.get(c)) for r in rows if r.get(c) is not None) for c in columns]
        if self.console is not None:
            from rich.table import Table

            t = Table(title=title.strip() if title else None, title_justify="left")
            for c, num in zip(columns, numeric):
                t.add_column(c, justify="right" if num else "left", overflow="fold")
            for row in cells:
                t.add_row(*[_styled_cell(v) for v in row])
            self.console.print(t)
            return
        if title:
            self.line(title)
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

        def fmt(values: Sequence[str]) -> str:
            return "  ".join(
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
            ).rstrip()

        self.line(indent + fmt(list(columns)))
        for row in cells:
            self.line(indent + fmt(row))


def emit_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (``--json``; ``str`` for what JSON lacks)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def print_ranked(head: dict[str, Any], ids: Sequence[Any], scores: Sequence[float], title: str, as_json: bool) -> None:
    """A ranked list of items (``recsys recommend`` / ``similar``) on stdout: ``head`` plus
    ``items`` as JSON, or the bold ``title`` over a rank / item_id / score table."""
    items = [{"rank": i + 1, "item_id": it, "score": round(float(s), 6)} for i, (it, s) in enumerate(zip(ids, scores))]
    if as_json:
        emit_json({**head, "items": items})
        return
    o = Out(sys.stdout)
    o.line(title, "bold")
    o.table(items, ["rank", "item_id", "score"])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _styled_cell(v: str):
    from rich.text import Text

    return Text(v, style=STYLES.get(v, ""))
