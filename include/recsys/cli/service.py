"""``recsys serve``: the read-only HTTP service over the served table (include.recsys.tables.serve)."""

from __future__ import annotations

import typer

from include.recsys.cli._common import EXIT_REFUSED, CliError, config, handle_errors


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Serve without a bearer token (loopback only; local use)."
    ),
) -> None:
    """Serve GET /recommendations/{user_id}, /version and /health over HTTP.

    Needs a bearer token (RECSYS_READER_TOKEN_FILE or RECSYS_READER_TOKEN) unless --no-auth.
    Examples: recsys serve --no-auth;  RECSYS_READER_TOKEN=... recsys serve --port 8001
    """
    _serve(host, port, no_auth)


@handle_errors
def _serve(host: str, port: int, no_auth: bool) -> None:
    from include.recsys.errors import ServeConfigError
    from include.recsys.tables.serve import run

    try:
        run(config().recommendations_root, host, port, no_auth=no_auth)
    except ServeConfigError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
