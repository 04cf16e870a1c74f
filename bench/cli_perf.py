"""CLI commands for the perf verb (registered on cli.app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the perf issue lands; registers nothing."""
