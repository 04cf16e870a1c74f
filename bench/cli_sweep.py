"""CLI commands for the sweep verb (registered on cli.app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Placeholder until the sweep issue lands; registers nothing."""
