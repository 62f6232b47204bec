"""Named crash points for fault injection: ``crashpoint("after_log_append")`` kills this process
with SIGKILL when ``$RECSYS_CRASH_AT`` names that point, and does nothing otherwise (one
environment lookup).

SIGKILL, not an exception: no ``finally``, no atexit, no flush of Python buffers, exactly what
an OOM kill or a lost node does. The fault tests (``tests/faults/test_commit_protocol.py``) run
a real subprocess with the variable set and check what the next reader and writer see.

Points: in :mod:`include.recsys.tables.versions` ``after_first_part``,
``after_staged_manifest``, ``mid_retention``; in :mod:`include.recsys.tables.current`
``before_log_append``, ``after_log_append``, ``before_current_replace``,
``after_current_replace``; in :mod:`include.recsys.tables.retention` ``mid_retention``; in
:mod:`include.recsys.stages.publish` ``between_current_and_alias``.
"""

from __future__ import annotations

import os
import signal

ENV = "RECSYS_CRASH_AT"


def crashpoint(name: str) -> None:
    """SIGKILL the current process when ``$RECSYS_CRASH_AT == name``."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
