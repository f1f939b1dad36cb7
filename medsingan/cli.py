"""The ``medsingan`` command line: parse and validate, call one library function, report.

Library code raises :class:`MedsinganError` subclasses; this module alone turns them into a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from medsingan import __version__
from medsingan.errors import MedsinganError

app = typer.Typer(
    name="medsingan",
    help="Single-image GAN (SinGAN) augmentation for medical scans.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Modality(str, Enum):
    auto = "auto"
    xray = "xray"
    ct = "ct"
    mri = "mri"
    dental = "dental"
    generic = "generic"


ScanArg = Annotated[Path, typer.Argument(help="Scan file: DICOM, NIfTI (.nii/.nii.gz), PNG, "
                                          "TIFF or JPEG.", show_default=False)]
ModalityOpt = Annotated[Modality, typer.Option(
    "--modality", "-m", help="Modality preset; auto picks it from the DICOM Modality tag "
    "(CR/DX/MG -> xray, IO/PX -> dental, CT -> ct, MR -> mri, else generic).")]
WindowOpt = Annotated[str | None, typer.Option(
    "--window", help="CT window: lung, soft_tissue, bone or full [default: the preset's, "
    "soft_tissue].", show_default=False)]
FrameOpt = Annotated[int | None, typer.Option(
    "--frame", help="Frame of a multi-frame DICOM, from 0 [default: the middle frame].",
    show_default=False)]
SliceOpt = Annotated[int | None, typer.Option(
    "--slice", help="Slice index of a NIfTI volume along --slice-axis [default: the middle "
    "slice].", show_default=False)]
SliceAxisOpt = Annotated[int, typer.Option(
    "--slice-axis", help="Voxel axis (0, 1 or 2) a NIfTI slice is taken across.")]
VolumeOpt = Annotated[int | None, typer.Option(
    "--volume", help="Volume of a 4D NIfTI, from 0 (required when it has several).",
    show_default=False)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medsingan {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Single-image GAN (SinGAN) augmentation for medical scans."""


@app.command()
def inspect(
    scan: ScanArg,
    modality: ModalityOpt = Modality.auto,
    window: WindowOpt = None,
    frame: FrameOpt = None,
    slice_index: SliceOpt = None,
    slice_axis: SliceAxisOpt = 2,
    volume: VolumeOpt = None,
    preview: Annotated[Path | None, typer.Option(
        "--preview", help="Write the image as the trainer sees it (after the preset's "
        "mapping) to this 8-bit PNG, rows x columns of the scan.", show_default=False)] = None,
    preview_max_size: Annotated[int | None, typer.Option(
        "--preview-max-size", min=1, help="Shrink the preview so its longer side is at most "
        "this many px [default: no resizing].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Show what the reader and the modality preset make of a scan."""
    from medsingan.inspection import describe, inspect_scan, write_preview

    if preview is not None and preview.suffix.lower() != ".png":
        raise MedsinganError(f"--preview must name a .png file, not '{preview.name}'")
    result = inspect_scan(scan, modality=modality.value, window=window, frame=frame,
                          slice_index=slice_index, slice_axis=slice_axis, volume=volume)
    if preview is not None:
        write_preview(result.unit_image, preview, max_size=preview_max_size)
    if as_json:
        report = result.to_dict()
        report["preview"] = str(preview) if preview else None
        typer.echo(json.dumps(report, indent=2))
        return
    for line in describe(result):
        typer.echo(line)
    if preview is not None:
        typer.echo(f"preview     {preview}")


def main() -> None:
    """Console entry point: MedsinganError -> one line on stderr, exit code 2."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(monai|pydicom)\b")
    try:
        app(standalone_mode=False)
    except MedsinganError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message} (see --help)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
