"""The ``recsys`` command: the published tables, the runs and the HTTP service in one place.

Installed into the venv by ``make venv`` (``pyproject.toml``: ``recsys =
"include.recsys.cli:main"``). One module per group of subcommands: :mod:`.tables` (status,
versions, recommend, similar, rollback), :mod:`.runs` (card), :mod:`.service` (serve).
Human output by default (rich on a terminal, plain text otherwise), ``--json`` for scripts.
"""

from __future__ import annotations

from pathlib import Path

import typer

from include.recsys.cli import runs, service, tables
from include.recsys.cli._common import EXIT_CODES_HELP, STATE, RecsysGroup

HELP = f"""Nightly recommender: what is served, the runs behind it, and the tools around it.

Examples:

  recsys status                       what is served, how fresh, last runs

  recsys recommend u42 -n 5           one user's top 5 from the served table

  recsys versions --json              every complete version, for scripts

  recsys rollback --reason "bad run"  serve the previous version (and its model) again

  xdg-open "$(recsys card)"           open the newest run card

Configuration comes from the same RECSYS_* environment variables as the pipeline
(RECSYS_DATA_DIR, RECSYS_RECOMMENDATIONS_DIR, RECSYS_MLFLOW_TRACKING_URI).

{EXIT_CODES_HELP}
"""

app = typer.Typer(
    cls=RecsysGroup, help=HELP, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    data_dir: Path = typer.Option(
        None, "--data-dir", help="The data folder (default: $RECSYS_DATA_DIR or ./data)."
    ),
    root: str = typer.Option(
        None, "--root",
        help="The recommendations root, a folder or s3:// URL (default: \\[data dir]/recommendations).",
    ),
) -> None:
    STATE.data_dir = data_dir
    STATE.root = root


app.command()(tables.status)
app.command()(tables.versions)
app.command()(tables.recommend)
app.command()(tables.similar)
app.command()(tables.rollback)
app.command()(runs.card)
app.command()(service.serve)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="recsys")
