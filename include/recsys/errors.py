"""Every exception the library raises on purpose, in one family.

``RecsysError`` is the root. Below it:

- ``PermanentError``: bad input, a failed check or gate, a broken contract or configuration.
  Retrying cannot help, so the DAG fails the task on its first try (``dags/_run``) and the CLI
  exits with a "refused" or "usage" code.
- ``TransientError``: a service or store could not be reached or was busy. The DAG retries the
  task with backoff; the CLI says "retry later".

Classes keep a builtin second base (``ValueError``, ``LookupError``) where callers and tests
already catch that builtin. Other modules import their exceptions from here, so the DAG and the
CLI classify any library error by importing one module. This module imports nothing of the
project (annotations only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RecsysError(Exception):
    """Root of every exception the library raises on purpose."""


class PermanentError(RecsysError):
    """Retrying cannot help: fix the input, the configuration or the code, then rerun."""


class TransientError(RecsysError):
    """A service or store was unreachable or busy: retrying later may help."""


class SourceError(PermanentError, ValueError):
    """The interaction source is missing, unreadable or does not match the contract."""


class EmptyWindowError(SourceError):
    """The source has no events in the requested window."""


class InputTypeError(SourceError):
    """A source column holds a value of the wrong type (a string in ``weight``, an unparsable
    ``event_ts``, a fractional id, ...). A data error: retrying cannot help, the DAG fails the
    task at once. Names the file, the column, the first bad row (0-based data row of that
    file; CSV: and its line) and its value."""

    def __init__(self, file: Path | str, column: str, row: int, value: Any, expected: str,
                 n_bad: int | None = None, *, csv: bool = False) -> None:
        self.file, self.column, self.row, self.value, self.expected = str(file), column, row, value, expected
        where = f"row {row}" + (f" (line {row + 2})" if csv else "")
        count = f"; {n_bad} bad value(s) in this file" if n_bad and n_bad > 1 else ""
        super().__init__(
            f"{file}: column {column!r} must hold {expected}, but {where} holds {value!r}{count}. "
            "Fix the source (or its producer) and rerun; retrying will not help."
        )


class GateSpecError(PermanentError, ValueError):
    """The gate spec file is missing, not YAML, or breaks the schema (names the bad key)."""


class GateFailed(PermanentError):
    """The candidate did not pass the gate; carries the :class:`GateResult`."""

    def __init__(self, result: Any) -> None:  # a validation.gate.GateResult
        self.result = result
        super().__init__(result.explain())


class PseudonymizationError(PermanentError):
    """Pseudonymization is enabled but no usable key is configured."""


class PublishError(PermanentError):
    """Publishing was refused (e.g. an incomplete version, or overwriting the served one)."""


class PublishConflict(PublishError):
    """CURRENT moved since the caller read it (``expected_previous`` did not match)."""


class StaleData(PublishError):
    """The version's data ends before the served version's: not served (``allow_older_data``
    overrides; a rollback is exempt). ``served_end`` / ``run_end``: the two ``data_window.end``."""

    def __init__(self, served_end: str, run_end: str, served: str | None = None, version: str | None = None):
        super().__init__(f"stale: serving data up to {served_end}, this run's data ends at {run_end}; not served")
        self.served_end, self.run_end = served_end, run_end
        self.served_version, self.version = served, version


class IdMapMismatch(PermanentError, ValueError):
    """The factors of a bundle were trained with other id maps than the ones beside them."""


class MlflowUnavailable(TransientError):
    """MLflow (tracking server or registry) could not be reached. Retrying may help."""


class RegistryError(PermanentError):
    """A registry operation was refused (e.g. no previous version to roll back to)."""


class StaleModel(RegistryError):
    """``champion`` would move to a model trained on data older than the champion's own.

    Refused unless the caller allows older data explicitly (``allow_older_data``); rolling
    back (``action="rollback"``) is the normal way back and is never refused. The message has
    the same shape as :class:`StaleData`'s.
    """

    def __init__(self, version: str, champion: str, champion_end: str, version_end: str) -> None:
        self.version, self.champion = version, champion
        self.served_end, self.run_end = champion_end, version_end
        super().__init__(
            f"stale: serving data up to {champion_end} (champion = version {champion}), "
            f"this run's data ends at {version_end} (version {version}); not served"
        )


class RulesError(SourceError):
    """The item rules file is missing, empty or malformed (a data error: no retries)."""


class ServeConfigError(PermanentError, ValueError):
    """The service cannot start as asked (no token, a bad token file, --no-auth off loopback)."""


class StorageError(TransientError):
    """The object store could not be reached or refused an operation (names the URL)."""


class WriteConflict(StorageError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class TrainingError(PermanentError):
    """Training refused its input or produced an unusable model (retrying will not help)."""


class DataValidationError(PermanentError, ValueError):
    """Raised when at least one error-severity check of the input data fails.

    Attributes:
        message: Human-readable description naming every failing error-severity check.
        report: The full :class:`ValidationReport` of the run.
    """

    def __init__(self, message: str, report: Any) -> None:  # a validation.report.ValidationReport
        super().__init__(message)
        self.message = message
        self.report = report


class OutputValidationError(DataValidationError):
    """The top-N table breaks its contract: it must not be published."""


class VariantError(SourceError):
    """The variants cannot be served as configured (bad shares, an alias that does not
    exist, ...): retrying cannot help, so the task fails at once."""


class PublishBusy(TransientError):
    """Another writer held the table's publish lock, or CURRENT kept changing, for too long."""


class IdRouteError(PermanentError):
    """A stage met a snapshot or split without the integer codes (``user_idx``/``item_idx``)
    into its id maps, or codes outside them: rerun the snapshot stage for this interval."""


class EngineError(PermanentError):
    """The configured compute engine cannot run here (``backend=spark`` without a Java runtime,
    or an engine that failed in a way a retry will not fix)."""


class FamilyTooLarge(TrainingError):
    """The catalog is beyond the memory/time budget of a model family (EASE's dense inverse)."""
