"""Arguments and options shared by several ``medsingan`` commands (one help text each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunArg = Annotated[Path, typer.Argument(help="A run directory written by train.",
                                        show_default=False)]
ManifestOpt = Annotated[Path | None, typer.Option(
    "--manifest", help="Manifest CSV rows are appended to [default: "
    "data_manifests/<run name>.csv].", show_default=False)]
LabelOpt = Annotated[str | None, typer.Option(
    "--label", help="Label column, e.g. fracture [default: the run's --label].",
    show_default=False)]
KeepIdsOpt = Annotated[bool, typer.Option(
    "--keep-identifiers", help="Keep the source's patient identifiers in written DICOMs "
    "(needs the original source file).")]
