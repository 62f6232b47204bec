"""Checks that block a release: the Great Expectations suites (input and output), the history
(drift) checks and the declarative gate decision."""
