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
from medsingan.animate_cli import register as register_animation
from medsingan.cli_options import (
    Engine,
    EngineOpt,
    ItersOpt,
    KeepIdsOpt,
    LossOpt,
    ManifestOpt,
    MaxCopyOpt,
    MaxSizeOpt,
    MinSizeOpt,
    Modality,
    ModalityOpt,
    OutputFormat,
    PresetOpt,
    RunArg,
    ScanArg,
    SeedOpt,
    SifidVariant,
    SpeedPreset,
    TrainDeviceOpt,
    VariantOpt,
    WeightsOpt,
    WindowOpt,
)
from medsingan.cohort_cli import register as register_cohort
from medsingan.errors import MedsinganError, MedsinganWarning
from medsingan.manipulate_cli import register as register_manipulations

app = typer.Typer(
    name="medsingan",
    help="Single-image GAN (SinGAN) augmentation for medical scans.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # help texts are plain: with rich markup, "[default: ...]" would be taken for a tag
    rich_markup_mode=None,
)


FrameOpt = Annotated[int | None, typer.Option(
    "--frame", help="Frame of a multi-frame DICOM, from 0 [default: the middle frame].",
    show_default=False)]
SliceOpt = Annotated[int | None, typer.Option(
    "--slice", help="Slice of a NIfTI/MHA/NRRD volume along --slice-axis, or of a DICOM series "
    "folder in order along the slice normal (0 = lowest) [default: the middle slice].",
    show_default=False)]
SliceAxisOpt = Annotated[int | None, typer.Option(
    "--slice-axis", help="Voxel axis (0, 1 or 2; MHA/NRRD: SimpleITK's x, y, z) a slice is "
    "taken across [default: the volume's only one-voxel axis, else 2].", show_default=False)]
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
    slice_axis: SliceAxisOpt = None,
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

    if preview_max_size is not None and preview is None:
        raise MedsinganError("--preview-max-size needs --preview FILE.png")
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


class Norm(str, Enum):
    batch = "batch"
    instance = "instance"
    none = "none"


class Activation(str, Enum):
    lrelu = "lrelu"
    relu = "relu"
    elu = "elu"


class Padding(str, Enum):
    zero = "zero"
    reflect = "reflect"
    circular = "circular"


def _value(choice: Enum | None) -> str | None:
    return None if choice is None else str(choice.value)


@app.command()
def train(
    scan: ScanArg,
    modality: ModalityOpt = Modality.auto,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run directory [default: runs/<scan name>].",
        show_default=False)] = None,
    preset: PresetOpt = SpeedPreset.fast,
    window: WindowOpt = None,
    frame: FrameOpt = None,
    slice_index: SliceOpt = None,
    slice_axis: SliceAxisOpt = None,
    volume: VolumeOpt = None,
    iters: ItersOpt = None,
    min_size: MinSizeOpt = None,
    max_size: MaxSizeOpt = None,
    scale_factor: Annotated[float | None, typer.Option(
        "--scale-factor", help="Scale factor between scales, in (0, 1) [default: paper 0.75, "
        "the other presets 0.7; then adjusted so the coarsest side is exactly --min-size].",
        show_default=False)] = None,
    nfc: Annotated[int | None, typer.Option(
        "--nfc", help="Channels at the coarsest scales, doubled every 4 scales [default: 32].",
        show_default=False)] = None,
    max_nfc: Annotated[int | None, typer.Option(
        "--max-nfc", help="Channel cap [default: paper 128, the other presets 64].",
        show_default=False)] = None,
    norm: Annotated[Norm | None, typer.Option(
        "--norm", help="Normalisation layer [default: paper batch, the other "
        "presets instance].",
        show_default=False)] = None,
    activation: Annotated[Activation | None, typer.Option(
        "--activation", help="Activation [default: lrelu (slope 0.2)].",
        show_default=False)] = None,
    padding: Annotated[Padding | None, typer.Option(
        "--padding", help="How the input is padded by the receptive-field margin "
        "[default: zero].", show_default=False)] = None,
    gp_every: Annotated[int | None, typer.Option(
        "--gp-every", help="Gradient penalty on every k-th critic step (lazy, scaled by k) "
        "[default: preset's; fast and quick 4, the others 1].",
        show_default=False)] = None,
    alpha: Annotated[float | None, typer.Option(
        "--alpha", help="Reconstruction loss weight [default: 10; --preset concurrent 20].",
        show_default=False)] = None,
    concurrent: Annotated[int | None, typer.Option(
        "--concurrent", help="Scales trained together (ConSinGAN): the K-1 coarser scales "
        "above the one in training train on through its losses, each at a tenth of the "
        "learning rate of the scale below; needs --norm instance or none [default: 1, one "
        "scale at a time; --preset concurrent 2].", show_default=False)] = None,
    crop: Annotated[int | None, typer.Option(
        "--crop", help="Train each scale larger than N px on a random N x N window of it (a "
        "side shorter than N taken whole), a new one every iteration (the losses of a window "
        "estimate the whole scale's at a fraction of the cost); samples stay whole-scale "
        "[default: 0, the whole scale].",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", help="Adam learning rate of the generator and (wgan-gp) critic [default: 5e-4].",
        show_default=False)] = None,
    loss: LossOpt = None,
    patch_size: Annotated[int | None, typer.Option(
        "--patch-size", help="Explicit losses: patch side, px (at most --min-size) "
        "[default: 7].", show_default=False)] = None,
    patch_stride: Annotated[int | None, typer.Option(
        "--patch-stride", help="Explicit losses: patch grid step, px [default: 1].",
        show_default=False)] = None,
    patches: Annotated[int | None, typer.Option(
        "--patches", help="Explicit losses: patches drawn per generator step (nn-patch: as "
        "many real ones too) [default: 2048].", show_default=False)] = None,
    seed: SeedOpt = None,
    device: TrainDeviceOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from its last finished scale.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a run already in the run directory.")] = False,
    label: Annotated[str, typer.Option(
        "--label", help="Class label every sample of this model inherits in manifests.")] = "",
    split: Annotated[str, typer.Option(
        "--split", help="Data split of the source scan (train/val/test); its samples inherit "
        "it and can never be written to another split.")] = "",
    subject_id: Annotated[str | None, typer.Option(
        "--subject-id", help="Subject (patient) pseudonym for manifests and written DICOMs "
        "[default: src-<first 12 hex digits of the source's sha256>].",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bars or per-scale summaries.")] = False,
    roi: Annotated[str | None, typer.Option(
        "--roi", help="X,Y,W,H: train on this region only (source px; X column, Y row of its "
        "top-left corner) at the scan's native resolution; edit, harmonize, paint and augment "
        "then write the full-size scan with only the region changed [default: the whole "
        "scan].", show_default=False)] = None,
    spacing: Annotated[float | None, typer.Option(
        "--spacing", help="Pixel spacing, mm, the --roi region is resampled to before "
        "training (not finer than the scan's) [default: the scan's own].",
        show_default=False)] = None,
    mask: Annotated[Path | None, typer.Option(
        "--mask", exists=True, help="Binary mask on the scan's pixels (any format train reads;"
        " a volume's slice chosen as the scan's): trains an image+mask pair (SinGAN-Seg); "
        "augment then writes each sample's mask beside it.", show_default=False)] = None,
    labels: Annotated[bool, typer.Option(
        "--labels", help="--mask is a label map (up to 16 values, background the lowest), "
        "not a binary mask.")] = False,
    tensorboard: Annotated[Path | None, typer.Option(
        "--tensorboard", help="Also write the losses and per-scale scores to this folder "
        "for TensorBoard (needs the tensorboard package).", show_default=False)] = None,
    sifid_variant: VariantOpt = SifidVariant.paper,
    inception_weights: WeightsOpt = None,
) -> None:
    """Train a SinGAN on one scan: one model per scan, written to a run directory. Each
    scale's random samples are scored against the scan at that scale (patch SWD, and SIFID
    when the Inception weights are found): scales.csv, info, curves.png."""
    from medsingan.monitor import MonitorOptions
    from medsingan.runs import train_scan

    if labels and mask is None:
        raise MedsinganError("--labels describes the --mask file: give --mask LABEL_MAP")
    overrides = {
        "iters": iters, "min_size": min_size, "max_size": max_size,
        "scale_factor": scale_factor, "nfc": nfc, "max_nfc": max_nfc, "norm": _value(norm),
        "activation": _value(activation), "padding": _value(padding), "gp_every": gp_every,
        "alpha": alpha, "lr_g": lr, "lr_d": lr, "seed": seed, "device": device,
        "loss": _value(loss), "patch_size": patch_size, "patch_stride": patch_stride,
        "patches": patches, "concurrent": concurrent, "crop": crop,
    }
    run_dir, _ = train_scan(scan, out, modality=modality.value, window=window, frame=frame,
                            slice_index=slice_index, slice_axis=slice_axis, volume=volume,
                            speed_preset=preset.value, overrides=overrides, resume=resume,
                            overwrite=overwrite, progress=not quiet, label=label,
                            split=split, subject_id=subject_id, roi=roi, spacing=spacing,
                            monitor=MonitorOptions(sifid_variant=sifid_variant.value,
                                                   inception_weights=inception_weights,
                                                   tensorboard=tensorboard),
                            mask=mask, labels=labels)
    typer.echo(f"run directory: {run_dir}")


@app.command()
def info(
    run_dir: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a run's pyramid: sizes, widths, noise amplitudes, iterations and time per scale."""
    from medsingan.run_privacy import privacy_reminder, run_identifiers, stored_config
    from medsingan.train import run_summary

    summary = run_summary(run_dir)
    identifiers = run_identifiers(stored_config(run_dir))
    if as_json:
        typer.echo(json.dumps({**summary, "identifiers": identifiers}, indent=2, default=str))
        return
    extra = summary.get("extra") or {}
    source = (extra.get("source") or {}).get("source_path", "?")
    state = "complete" if summary["complete"] else "incomplete (resume with train --resume)"
    typer.echo(f"run         {summary['run_dir']}  ({state})")
    typer.echo(f"source      {source}" + ("" if Path(source).exists() else "  (not found)"))
    region = _region_line(extra)
    if region:
        typer.echo(region)
    if extra.get("mask"):
        from medsingan.masks import info_line

        typer.echo(info_line(extra["mask"]))
    train_settings = summary["train"]
    loss = train_settings.get("loss", "wgan-gp")
    typer.echo(f"presets     {extra.get('modality_preset', '?')} / "
               f"{extra.get('speed_preset', '?')}, scale factor {summary['scale_factor']:.4f}"
               + ("" if loss == "wgan-gp" else
                  f", loss {loss} ({train_settings.get('patch_size')} px patches)"))
    typer.echo("scale  size (h x w)  channels  noise amp   iters   seconds")
    for entry in summary["scales"]:
        amp = "-" if entry["noise_amp"] is None else f"{entry['noise_amp']:.4g}"
        secs = "-" if entry["seconds"] is None else f"{entry['seconds']:.1f}"
        typer.echo(f"{entry['scale']:>5}  {entry['height']:>4} x {entry['width']:<6} "
                   f"{entry['channels']:>8}  {amp:>9}  {entry['iters']:>6}  {secs:>8}")
    typer.echo(f"total       {summary['total_seconds']:.1f} s")
    _echo_scale_scores(summary)
    reminder = privacy_reminder(identifiers)
    if reminder:
        typer.echo(reminder)


def _region_line(extra: dict) -> str | None:
    """``info``'s line for a region run (train --roi): the region and the source's size."""
    roi, source = extra.get("roi"), extra.get("source") or {}
    if not isinstance(roi, dict):
        return None
    spacing = roi.get("spacing_mm")
    return (f"region      X,Y,W,H {roi['x']},{roi['y']},{roi['w']},{roi['h']} of the "
            f"{source.get('columns', '?')} x {source.get('rows', '?')} px source (W x H)"
            + (f", resampled to {spacing:g} mm" if spacing else ""))


def _echo_scale_scores(summary: dict) -> None:
    """The per-scale scores of ``info``: medians over each scale's random samples."""
    scored = [s for s in summary["scales"] if s.get("score_samples")]
    if not scored:
        return
    variant = next((s["sifid_variant"] for s in scored if s["sifid_variant"]), None)
    typer.echo(f"scores      {scored[0]['score_samples']} random samples per scale vs the scan "
               "at that scale (medians)")
    typer.echo("scale  patch SWD  " + (f"SIFID ({variant})" if variant else
                                      "SIFID (not scored: no Inception weights)"))
    for entry in scored:
        sifid = "-" if entry["sifid"] is None else f"{entry['sifid']:.4g}"
        typer.echo(f"{entry['scale']:>5}  {entry['patch_swd']:>9.4g}  {sifid:>5}")


def _latest_run(folder: Path = Path("runs")) -> Path:
    """The most recently trained complete run under ``folder``, said on stderr."""
    from medsingan.augment import latest_complete_run

    run_dir = latest_complete_run(folder)
    typer.echo(f"using {run_dir} (the most recently trained run under {folder}/)", err=True)
    return run_dir


@app.command()
def augment(
    run_dir: Annotated[Path | None, typer.Argument(
        help="A run directory written by train, or with --engine patch the scan itself "
        "[default: the most recently trained complete run under runs/].",
        show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 20,
    engine: EngineOpt = Engine.singan,
    start_scale: Annotated[str, typer.Option(
        "--start-scale", help="Scale where fresh noise starts: N (coarsest, most variety), "
        "N-k, or an index (0 = finest); coarser scales reconstruct the scan. all: a sweep, "
        "every start scale 0..N (patch engine: N-1..N) into OUT/start_scale_S [OUT default: "
        "the cohort folder + _sweep], with OUT/sweep.png and OUT/summary.json; a list "
        "(N-1,N): a sweep of those scales.")] = "N",
    seed: Annotated[int, typer.Option(
        "--seed", help="Cohort seed: sample i of seed s is the same whatever the batch "
        "size.")] = 0,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", help="Samples per forward pass [default: about 1 GiB of activations, "
        "at most 64].", show_default=False)] = None,
    height: Annotated[int | None, typer.Option(
        "--height", help="Output height, px [default: the run's finest size].",
        show_default=False)] = None,
    width: Annotated[int | None, typer.Option(
        "--width", help="Output width, px [default: the run's finest size].",
        show_default=False)] = None,
    scale_h: Annotated[float | None, typer.Option(
        "--scale-h", help="Output height as a multiple of the run's [default: 1].",
        show_default=False)] = None,
    scale_w: Annotated[float | None, typer.Option(
        "--scale-w", help="Output width as a multiple of the run's [default: 1].",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output folder [default: RUN_DIR/samples; --engine patch: "
        "samples/<scan name>_patch].",
        show_default=False)] = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="same: the source's format (DICOM -> de-identified derived DICOM, "
        "NIfTI -> NIfTI with the source affine, MHA/NRRD -> the same, PNG/TIFF/JPEG -> PNG).")
    ] = OutputFormat.same,
    manifest: ManifestOpt = None,
    label: Annotated[str | None, typer.Option(
        "--label", help="Label column [default: the run's; another label than the run's is "
        "refused: a sample shows its source's finding].", show_default=False)] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Split column [default: the run's; another split than the source's "
        "is refused].", show_default=False)] = None,
    subject_id: Annotated[str | None, typer.Option(
        "--subject-id", help="Subject column and DICOM Patient ID [default: the run's; "
        "another subject than the run's is refused].", show_default=False)] = None,
    no_sifid: Annotated[bool, typer.Option(
        "--no-sifid", help="Skip SIFID (no Inception weights needed); the weight-free "
        "patch_swd score is still written.")] = False,
    sifid_variant: VariantOpt = SifidVariant.paper,
    inception_weights: WeightsOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")] = "auto",
    keep_identifiers: KeepIdsOpt = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start the cohort over (every sample regenerated, other settings "
        "allowed) instead of completing it; files of an earlier cohort under other names stay, "
        "with their manifest rows.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    max_copy: MaxCopyOpt = 0.5,
    modality: Annotated[Modality, typer.Option(
        "--modality", "-m", help="--engine patch: the modality preset, as train's.")
    ] = Modality.auto,
    window: WindowOpt = None,
    frame: FrameOpt = None,
    slice_index: SliceOpt = None,
    slice_axis: SliceAxisOpt = None,
    volume: VolumeOpt = None,
    max_size: Annotated[int | None, typer.Option(
        "--max-size", help="--engine patch: longer side of the scan's finest scale, px "
        "[default: the modality preset's, 250].", show_default=False)] = None,
    pick: Annotated[str | None, typer.Option(
        "--pick", help="With --start-scale all or a list (N-1,N): best keeps only the "
        "samples (files and manifest rows) of the start scale with the lowest mean SIFID "
        "(mean patch SWD with --no-sifid) among those that do not reproduce the scan (mean "
        "copy_score at most --max-copy, mean SSIM to the scan at most 0.9).",
        show_default=False)] = None,
) -> None:
    """Generate N scored samples of a trained scan (or, with --engine patch, of the scan
    itself without training), in its format, with manifest rows."""
    from medsingan.augment import AugmentRequest
    from medsingan.augment import augment as run_augment
    from medsingan.manipulate_cli import report_sweep
    from medsingan.sweep import augment_sweep, is_scale_list, is_sweep

    patch = engine is Engine.patch
    request = AugmentRequest(
        run_dir=None if patch else run_dir or _latest_run(), n=n, start_scale=start_scale,
        seed=seed, engine=engine.value, scan=run_dir if patch else None,
        modality=modality.value, window=window, frame=frame, slice_index=slice_index,
        slice_axis=slice_axis, volume=volume, max_size=max_size, max_copy=max_copy,
        batch_size=batch_size,
        height=height, width=width, scale_h=scale_h, scale_w=scale_w, out=out,
        output_format=output_format.value, manifest=manifest, label=label,
        split=split, subject_id=subject_id, sifid=not no_sifid,
        sifid_variant=sifid_variant.value, inception_weights=inception_weights, device=device,
        overwrite=overwrite, keep_identifiers=keep_identifiers, progress=not quiet)
    if is_sweep(start_scale) or is_scale_list(start_scale) or pick is not None:
        report_sweep(augment_sweep(request, pick))
        return
    result = run_augment(request)
    summary = result.summary
    typer.echo(f"{len(result.written)} sample(s) written to {result.out}"
               + (f" ({result.skipped} already there)" if result.skipped else ""))
    scores = ", ".join(f"{key} {summary[key]:.4g}" for key in
                       ("diversity", "sifid_mean", "similarity_mean", "patch_swd_mean",
                        "copy_score_mean") if summary.get(key) is not None)
    typer.echo(f"scores: {scores}")
    if summary.get("masks"):
        from medsingan.masks import summary_line

        typer.echo(summary_line(summary["masks"]))
    if summary["over_max_copy"]:
        typer.echo(f"{len(summary['over_max_copy'])} sample(s) copy over --max-copy "
                   f"{max_copy:g} of their patches from the scan: see "
                   f"{result.out / 'summary.json'}")
    typer.echo(f"manifest: {result.manifest}")


@app.command()
def score(
    real: Annotated[Path, typer.Argument(help="The real (training) scan.", show_default=False)],
    fakes: Annotated[list[Path], typer.Argument(help="Generated scans to score.",
                                                show_default=False)],
    modality: ModalityOpt = Modality.auto,
    window: WindowOpt = None,
    no_sifid: Annotated[bool, typer.Option("--no-sifid", help="Skip SIFID.")] = False,
    sifid_variant: VariantOpt = SifidVariant.paper,
    inception_weights: WeightsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score generated scans against a real one: SIFID, SSIM, patch SWD and diversity."""
    from medsingan.scoring import score_files

    report = score_files(real, fakes, modality=modality.value, window=window,
                         sifid=not no_sifid, inception_weights=inception_weights,
                         sifid_variant=sifid_variant.value)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo("image  sifid  similarity_to_source  patch_swd")
    for row in report["images"]:
        sifid = "-" if row["sifid"] is None else f"{row['sifid']:.4g}"
        typer.echo(f"{row['image']}  {sifid}  {row['similarity_to_source']:.4f}  "
                   f"{row['patch_swd']:.4g}")
    if report["diversity"] is not None:
        typer.echo(f"diversity {report['diversity']:.4f}")
    if report["sifid_variant"]:
        typer.echo(f"sifid variant {report['sifid_variant']}")


register_manipulations(app)
register_animation(app)

manifest_app = typer.Typer(help="Validate and combine CSV manifests.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
register_cohort(app, manifest_app)

ManifestArg = Annotated[Path, typer.Argument(help="A manifest CSV.", show_default=False)]


@manifest_app.command("check")
def manifest_check(manifest: ManifestArg) -> None:
    """Find missing files, duplicates, schema problems and split leaks (exit 1 if any)."""
    from medsingan.manifest import check_manifest

    problems = check_manifest(manifest)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {manifest}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{manifest}: OK")


@manifest_app.command("merge")
def manifest_merge(
    manifests: Annotated[list[Path], typer.Argument(help="Manifests to combine.",
                                                    show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The combined manifest "
                                         "(paths rewritten relative to its folder).",
                                         show_default=False)],
    allow_leaks: Annotated[bool, typer.Option(
        "--allow-leaks", help="Write the merged manifest even if a synthetic image's source "
        "or subject is in another split (manifest check will still report it).")] = False,
) -> None:
    """Combine manifests into one, dropping duplicate rows and refusing invalid values,
    conflicts and split leaks."""
    from medsingan.manifest import merge_manifests

    count = merge_manifests(manifests, output, allow_leaks=allow_leaks)
    typer.echo(f"{output}: {count} row(s)")


def run_app(typer_app: typer.Typer, interrupted: str = "interrupted") -> None:
    """Run a Typer app as a command: MedsinganError and OSError -> one ``error:`` line on
    stderr and exit code 2, usage errors the same with a pointer to --help, Ctrl-C -> 130;
    :class:`MedsinganWarning` -> one ``warning:`` line. ``pipelines`` use it too."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(monai|pydicom)\b")
    warnings.simplefilter("always", MedsinganWarning)
    python_shows = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        """Ours as one ``warning:`` line on stderr; others as Python shows them."""
        if issubclass(category, MedsinganWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            python_shows(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        # without standalone mode, typer.Exit(code) comes back as the return value
        code = typer_app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except MedsinganError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        sys.exit(130)
    except OSError as exc:
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option values, missing arguments
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message} (see --help)", err=True)
        sys.exit(getattr(exc, "exit_code", 2))


def main() -> None:
    """Console entry point: MedsinganError -> one line on stderr, exit code 2."""
    run_app(app)


if __name__ == "__main__":
    main()
