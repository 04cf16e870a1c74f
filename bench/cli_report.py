"""CLI commands for the report verb (registered on cli.app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the report issue lands; registers nothing."""
