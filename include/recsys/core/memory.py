"""Handing memory back to the OS between and inside stages.

Several stages run in one process (``dag.test``, a reused Celery worker, the benchmarks), so a
stage's freed buffers must not stay in the process for the next stage to stack its peak on:
:func:`stage_memory` wraps every stage (the DAG's ``_run``), and a stage calls
:func:`release_memory` itself only before a second peak inside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stage_memory() -> Iterator[None]:
    """Release freed memory when the stage ends (even when it fails). Once per stage, at its
    end: the previous stage in the same process has released already, and a release costs
    about 0.2 s (a full ``gc.collect`` over Airflow, MLflow and GX's objects)."""
    try:
        yield
    finally:
        release_memory()


def release_memory() -> None:
    """Give freed Arrow buffers back to the OS.

    pyarrow's allocator (mimalloc) keeps freed pages for reuse: after a stage has dropped a
    20M-row frame the process still holds hundreds of MB, which the next stage run in the same
    process (``dag.test``, a reused worker) stacks its own peak on. Great Expectations' global
    context (which keeps the last validated frame alive) is dropped first. Called by :func:`stage_memory` at the end of every stage.
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
    pa.default_memory_pool().release_unused()
    try:  # glibc keeps freed numpy/pandas heap in its arenas until trimmed
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
