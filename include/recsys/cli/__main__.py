"""``python -m include.recsys.cli``: the ``recsys`` command without the installed script."""

from __future__ import annotations

from include.recsys.cli import main

main()
