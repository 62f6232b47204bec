"""stage_memory hands memory back only after stages that grew the process."""

from __future__ import annotations

import pytest

from include.recsys.core import memory


def _fake_rss(monkeypatch, sizes):
    it = iter(sizes)
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(it))
    calls = []
    monkeypatch.setattr(memory, "release_memory", lambda: calls.append(1))
    return calls


@pytest.mark.parametrize(
    ("sizes", "released"),
    [
        ((1_000 * 2**20, 1_000 * 2**20 + memory.RELEASE_MIN_GROWTH), True),  # grew by the bound
        ((1_000 * 2**20, 3_000 * 2**20), True),
        ((1_000 * 2**20, 1_000 * 2**20 + memory.RELEASE_MIN_GROWTH - 1), False),  # small stage
        ((1_000 * 2**20, 500 * 2**20), False),  # the process shrank
        ((None, 1_000 * 2**20), True),  # size unknown: release to be safe
        ((1_000 * 2**20, None), True),
    ],
)
def test_release_only_after_growth(monkeypatch, sizes, released) -> None:
    calls = _fake_rss(monkeypatch, sizes)
    with memory.stage_memory():
        pass
    assert calls == ([1] if released else [])


def test_a_failing_stage_still_releases(monkeypatch) -> None:
    calls = _fake_rss(monkeypatch, (100 * 2**20, 900 * 2**20))
    with pytest.raises(RuntimeError, match="boom"), memory.stage_memory():
        raise RuntimeError("boom")
    assert calls == [1]


def test_resident_bytes_reads_this_process() -> None:
    import numpy as np

    before = memory.resident_bytes()
    assert before is not None and before > 10 * 2**20
    block = np.ones(64 * 2**20, np.uint8)  # touched pages count
    assert memory.resident_bytes() >= before + 32 * 2**20
    del block


def test_release_memory_frees_the_pool_collects_cycles_and_freezes_survivors() -> None:
    # in its own interpreter: freezing is per process and must not touch the test session's
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import gc, weakref, pyarrow as pa\n"
        "from include.recsys.core.memory import release_memory\n"
        "assert gc.get_freeze_count() == 0\n"
        "buf = pa.allocate_buffer(32 * 2**20); del buf\n"
        "release_memory()\n"
        "first = gc.get_freeze_count()\n"
        "assert pa.default_memory_pool().bytes_allocated() < 32 * 2**20\n"
        "class Node: pass\n"
        "def ring(n):\n"
        "    nodes = [Node() for _ in range(n)]\n"
        "    for a, b in zip(nodes, nodes[1:] + nodes[:1]): a.next = b\n"
        "    return nodes\n"
        "garbage = ring(1000); probe = weakref.ref(garbage[0]); del garbage\n"
        "kept = ring(1000)\n"
        "release_memory()\n"
        "print(first, gc.get_freeze_count(), probe() is None)\n"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    first, second, collected = out.stdout.split()
    assert int(first) > 1000  # the survivors of the first full collection (the imported modules)
    assert collected == "True"  # a cycle that died before a release is collected, not frozen
    assert int(second) >= int(first) + 1000  # what is alive at a release is frozen
