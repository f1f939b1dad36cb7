"""The paper's manipulations on the command line: edit, harmonize, paint, super-resolve."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the manipulation commands to the ``medsingan`` app."""
