"""What every subcommand shares: exit codes, errors, the config, and human vs JSON output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from include.recsys.cli._console import Out, emit_json
from include.recsys.errors import PermanentError, PublishError, TransientError

EXIT_OK = 0
EXIT_USAGE = 1  # bad arguments or input (unknown option, n out of range, ...)
EXIT_NOT_FOUND = 2  # nothing published yet, unknown user / version / run / table
EXIT_REFUSED = 3  # the action was refused (no previous version, unsafe serve settings, ...)
EXIT_UNAVAILABLE = 4  # MLflow or the object store could not be reached (or was busy): retry later

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 usage or bad input; 2 not found (nothing published, unknown user, "
    "version or run); 3 refused (e.g. no previous version to roll back to); 4 MLflow or the "
    "storage unreachable or busy (retry later)."
)

JSON_OPTION = typer.Option(False, "--json", help="Machine-readable JSON on stdout instead of a table.")


class CliError(PermanentError):
    """A failure the user can act on, found by the CLI itself: one line, its own exit code."""

    def __init__(self, message: str, code: int = EXIT_NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


class RecsysGroup(TyperGroup):
    """Typer's group, with usage errors exiting 1 (click's default is 2, which here means
    "not found")."""

    def make_context(self, *args: Any, **kwargs: Any):
        try:
            return super().make_context(*args, **kwargs)
        except typer._click.exceptions.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer._click.exceptions.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


class State:
    """Options of the ``recsys`` command itself, shared by its subcommands."""

    data_dir: Path | None = None
    root: str | None = None


STATE = State()


def config():
    """The pipeline config: environment (``RECSYS_*``), then ``--data-dir`` / ``--root``."""
    from include.recsys.config.settings import load_config

    overrides: dict[str, Any] = {}
    if STATE.data_dir is not None:
        overrides["data_dir"] = STATE.data_dir
    if STATE.root:
        overrides["recommendations_dir"] = STATE.root
    return load_config(overrides or None)


def out() -> Out:
    return Out(sys.stdout)


def _classify(exc: Exception) -> tuple[str, int] | None:
    """(message, exit code) for the errors a user can act on, by the library's error hierarchy
    (:mod:`include.recsys.errors`); None: a bug (raise, with its traceback)."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, TransientError):
        return f"{exc} (retry later)", EXIT_UNAVAILABLE
    if isinstance(exc, PublishError):
        text = str(exc)
        absent = "no manifest" in text or "incomplete or absent" in text
        return text, EXIT_NOT_FOUND if absent else EXIT_REFUSED
    if isinstance(exc, LookupError):
        return str(exc).strip("'\""), EXIT_NOT_FOUND
    if isinstance(exc, ValueError):  # a PermanentError that is bad input, or bad arguments
        return str(exc), EXIT_USAGE
    if isinstance(exc, PermanentError):
        return str(exc), EXIT_REFUSED
    return None


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors into one line on stderr (and a JSON object on stdout with
    ``--json``) and a meaningful exit code; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            known = _classify(exc)
            if known is None:
                raise
            message, code = known
            message = " ".join(message.split())
            if kwargs.get("as_json"):
                emit_json({"error": message, "exit_code": code})
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code) from None

    return wrapper
