"""Local fakes of external services used by the test-suite (no network access)."""
