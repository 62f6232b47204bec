"""Handing memory back to the OS between and inside stages.

Several stages run in one process (``dag.test``, a reused Celery worker, the benchmarks), so a
stage's freed buffers must not stay in the process for the next stage to stack its peak on:
:func:`stage_memory` wraps every stage (the DAG's ``_run``), and a stage calls
:func:`release_memory` itself only before a second peak inside it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

#: a stage that leaves the process less than this much larger than it found it has nothing
#: worth handing back: the release (a full ``gc.collect`` over Airflow, MLflow and GX's
#: objects, ~0.2-0.5 s) is skipped
RELEASE_MIN_GROWTH = 64 * 2**20


def resident_bytes() -> int | None:
    """This process's resident set size now (``/proc/self/statm``; None where it does not exist)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def stage_memory() -> Iterator[None]:
    """Release freed memory when the stage ends (even when it fails), if the stage left the
    process at least :data:`RELEASE_MIN_GROWTH` larger than it found it (or the size cannot be
    read). Once per stage, at its end: the previous stage in the same process has released
    already; small stages (the gate, planning, publish) skip the ~0.2-0.5 s a release costs."""
    before = resident_bytes()
    try:
        yield
    finally:
        after = resident_bytes()
        if before is None or after is None or after - before >= RELEASE_MIN_GROWTH:
            release_memory()


def _freeze_survivors() -> None:
    """Move every object alive now (after the first full collection: the imported modules of
    Airflow, pandas, pyarrow, GX and the like) out of the cycle collector's sight, once per
    process. Later collections, ours and CPython's automatic ones, then walk only what was
    created since (a full collection over the imports alone costs ~0.2 s). Objects frozen here
    that later fall into unreachable cycles are never collected: a bounded cost, paid once."""
    import gc

    gc.freeze()


def release_memory() -> None:
    """Give freed Arrow buffers back to the OS.

    pyarrow's allocator (mimalloc) keeps freed pages for reuse: after a stage has dropped a
    20M-row frame the process still holds hundreds of MB, which the next stage run in the same
    process (``dag.test``, a reused worker) stacks its own peak on. Great Expectations' global
    context (which keeps the last validated frame alive) is dropped first. The first call in a
    process freezes the survivors of its full collection (:func:`_freeze_survivors`): in two
    back-to-back preset-l runs this took the nightly run's orchestration overhead from 12.3 to
    9.6 s (a big stage's release ~0.5 -> ~0.25 s). Called by :func:`stage_memory` at the end
    of every stage that grew the process.
    """
    import gc
    import sys

    import pyarrow as pa

    gx_factory = sys.modules.get("great_expectations.data_context.data_context.context_factory")
    if gx_factory is not None:
        # GX keeps the last context as its global "project": an ephemeral context keeps its
        # pandas datasource, whose batch holds the whole validated frame (GB on the snapshot)
        gx_factory.project_manager.set_project(None)
    gc.collect()
    if not gc.get_freeze_count():
        _freeze_survivors()
    pa.default_memory_pool().release_unused()
    try:  # glibc keeps freed numpy/pandas heap in its arenas until trimmed
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
