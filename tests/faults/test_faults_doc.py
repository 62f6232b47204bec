"""docs/faults.md is generated from the fault tests' names and docstrings; it must be current."""

from __future__ import annotations

from tests.faults import list_faults


def test_faults_doc_is_generated_and_current() -> None:
    cases = list_faults.cases()
    assert len(cases) >= 15
    assert all(c["outcome"] != "(see the test)" for c in cases), [c["test"] for c in cases if c["outcome"] == "(see the test)"]
    assert list_faults.DOC.exists(), "run: python tests/faults/list_faults.py --write"
    assert list_faults.DOC.read_text() == list_faults.render(), (
        "docs/faults.md is stale: run python tests/faults/list_faults.py --write"
    )
