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
#: worth handing back: the release (a full ``gc.collect`` over the objects created since the
#: last release, the pool release and ``malloc_trim``) is skipped
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
    already; small stages (the gate, planning, publish) skip it."""
    before = resident_bytes()
    try:
        yield
    finally:
        after = resident_bytes()
        if before is None or after is None or after - before >= RELEASE_MIN_GROWTH:
            release_memory()


def release_memory() -> None:
    """Give freed Arrow buffers back to the OS.

    pyarrow's allocator (mimalloc) keeps freed pages for reuse: after a stage has dropped a
    20M-row frame the process still holds hundreds of MB, which the next stage run in the same
    process (``dag.test``, a reused worker) stacks its own peak on. Great Expectations' global
    context (which keeps the last validated frame alive) is dropped first. Called by
    :func:`stage_memory` at the end of every stage that grew the process.

    Each call freezes the survivors of its full collection (``gc.freeze``: the imported modules
    of Airflow, pandas, pyarrow, GX, MLflow and what the stages keep), so later collections, ours
    and CPython's automatic ones, walk only the objects created since. Every release, not only
    the first: GX and MLflow are imported by stages after the first release, and a full
    collection over their objects cost ~0.25 s per stage (preset l, 15 stages in one process:
    0.16-0.29 s per release frozen once, 0.002-0.14 s frozen each time, the process's resident
    size after the run 825 -> 683 MB). What a release freezes was alive at that moment; should
    it later become unreachable in a reference cycle it is never collected: a cost bounded by
    what the process held at its releases.
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
    gc.freeze()
    pa.default_memory_pool().release_unused()
    try:  # glibc keeps freed numpy/pandas heap in its arenas until trimmed
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
