"""``medsingan cohort train|augment`` and ``medsingan manifest from-folder|split``: a labelled
dataset in, one model per scan, one augmented manifest out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medsingan.cli_options import (
    Engine,
    EngineOpt,
    ItersOpt,
    LossOpt,
    MaxCopyOpt,
    MaxSizeOpt,
    MinSizeOpt,
    Modality,
    OutputFormat,
    PresetOpt,
    SeedOpt,
    SifidVariant,
    SpeedPreset,
    TrainDeviceOpt,
    VariantOpt,
    WeightsOpt,
    WindowOpt,
)

RealManifestArg = Annotated[Path, typer.Argument(
    help="The real-image manifest (manifest from-folder, then manifest split).",
    show_default=False)]
RunsOpt = Annotated[Path, typer.Option(
    "--runs", help="Folder of the run directories, one per scan.")]
SplitsOpt = Annotated[list[str] | None, typer.Option(
    "--split", help="Split(s) whose real rows get a model (repeat for several) [default: "
    "train only: a test image never gets a model].", show_default=False)]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", help="Local worker processes, each with cores/N intra-op threads (or the "
    "LocalCluster's size with --scheduler local).")]
SchedulerOpt = Annotated[str | None, typer.Option(
    "--scheduler", help="Dask scheduler address (tcp://HOST:8786), or local for a "
    "LocalCluster of --workers processes [default: a local process pool; needs "
    "medsingan[dask]].", show_default=False)]
GpusOpt = Annotated[int, typer.Option(
    "--gpus-per-task", help="GPUs each task takes (a Dask worker resource GPU).")]
RetriesOpt = Annotated[int, typer.Option(
    "--retries", help="Times a task whose worker died is run again (local pool and "
    "--scheduler local; a remote cluster follows its own allowed-failures).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
BatchModelsOpt = Annotated[int, typer.Option(
    "--batch-models", help="Train up to K scans of one size and one preset together as one "
    "batched network per task (each keeps its own run, weights as if trained alone); runs "
    "with an explicit --loss or a --crop window train alone.")]


def _executing(workers: int, scheduler: str | None, gpus: int, retries: int, quiet: bool):
    from medsingan.cohort import Executing

    return Executing(workers=workers, scheduler=scheduler, gpus_per_task=gpus,
                     retries=retries, progress=not quiet)


def _report(report, verb: str) -> None:
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    for result in report.failed:
        typer.echo(f"failed: {result.name}: {result.error}", err=True)
    typer.echo(f"{verb}: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))


def register(app: typer.Typer, manifest_app: typer.Typer) -> None:
    """Add the ``cohort`` group to ``app`` and the dataset commands to ``manifest_app``."""
    cohort_app = typer.Typer(help="Many scans -> many models -> one manifest, on a local "
                             "process pool or a Dask cluster.", no_args_is_help=True)
    app.add_typer(cohort_app, name="cohort")

    @manifest_app.command("from-folder")
    def manifest_from_folder(
        folder: Annotated[Path, typer.Argument(help="Folder of real scans (label = parent "
                                               "folder, ImageFolder layout).",
                                               show_default=False)],
        output: Annotated[Path, typer.Option("--output", "-o", help="The manifest to write.",
                                             show_default=False)],
        labels: Annotated[Path | None, typer.Option(
            "--labels", help="CSV with columns image (path relative to FOLDER, or file name) "
            "and label, instead of folder names.", show_default=False)] = None,
        subject_regex: Annotated[str | None, typer.Option(
            "--subject-regex", help="Subject from the file name: the first group (or the whole "
            "match) of this regular expression [default: a pseudonym of the DICOM Patient ID, "
            "else one subject per file].", show_default=False)] = None,
        slices: Annotated[str, typer.Option(
            "--slices", help="Slices of a volume (3D NIfTI, multi-frame DICOM): all, middle "
            "or an index; each becomes a 2D NIfTI in slices/ beside the manifest.")] = "middle",
        modality: Annotated[Modality, typer.Option(
            "--modality", "-m", help="Modality column (the preset cohort train uses).")
        ] = Modality.auto,
    ) -> None:
        """List every scan of a folder as real rows of a new manifest (split left empty)."""
        from medsingan.dataset import FolderOptions
        from medsingan.dataset import manifest_from_folder as build

        value = "" if modality is Modality.auto else modality.value
        count = build(folder, output, FolderOptions(labels=labels, subject_regex=subject_regex,
                                                    slices=slices, modality=value))
        typer.echo(f"{output}: {count} real row(s)")

    @manifest_app.command("split")
    def manifest_split(
        manifest: RealManifestArg,
        test: Annotated[float, typer.Option("--test", help="Fraction of subjects for test.")
                        ] = 0.2,
        val: Annotated[float, typer.Option("--val", help="Fraction of subjects for val.")
                       ] = 0.0,
        seed: Annotated[int, typer.Option("--seed", help="Shuffling seed.")] = 0,
        by: Annotated[str, typer.Option("--by", help="What a split keeps together: subject "
                                        "(the only choice).")] = "subject",
        output: Annotated[Path | None, typer.Option(
            "--output", "-o", help="Write the split manifest here [default: rewrite MANIFEST].",
            show_default=False)] = None,
    ) -> None:
        """Assign train/val/test by subject (stratified by label): no subject spans splits."""
        from medsingan.dataset import split_by_subject
        from medsingan.errors import ConfigError

        if by != "subject":
            raise ConfigError(f"--by must be subject, not {by!r}")
        counts = split_by_subject(manifest, test=test, val=val, seed=seed, output=output)
        typer.echo(f"{output or manifest}: " + ", ".join(f"{split} {n}" for split, n in
                                                         counts.items()) + " row(s)")

    @cohort_app.command("train")
    def cohort_train(
        manifest: RealManifestArg,
        runs: RunsOpt = Path("runs"),
        split: SplitsOpt = None,
        modality: Annotated[Modality | None, typer.Option(
            "--modality", "-m", help="Preset for every scan [default: the row's modality "
            "column, else auto].", show_default=False)] = None,
        window: WindowOpt = None,
        preset: PresetOpt = SpeedPreset.fast,
        iters: ItersOpt = None,
        min_size: MinSizeOpt = None,
        max_size: MaxSizeOpt = None,
        seed: SeedOpt = None,
        device: TrainDeviceOpt = None,
        loss: LossOpt = None,
        workers: WorkersOpt = 1,
        scheduler: SchedulerOpt = None,
        gpus_per_task: GpusOpt = 0,
        retries: RetriesOpt = 2,
        batch_models: BatchModelsOpt = 1,
        quiet: QuietOpt = False,
    ) -> None:
        """Train one model per real row of the selected splits; finished runs are skipped,
        interrupted ones resumed, failures listed (exit 1 if any)."""
        from medsingan.cohort import cohort_train as run

        report = run(manifest, runs, executing=_executing(workers, scheduler, gpus_per_task,
                                                          retries, quiet),
                     batch_models=batch_models, splits=tuple(split or ("train",)),
                     modality=None if modality is None else modality.value, window=window,
                     speed_preset=preset.value,
                     overrides={"iters": iters, "min_size": min_size, "max_size": max_size,
                                "seed": seed, "device": device,
                                "loss": None if loss is None else loss.value})
        _report(report, f"{len(report.results)} model(s) in {runs}")
        if report.failed:
            raise typer.Exit(1)

    @cohort_app.command("augment")
    def cohort_augment(
        manifest: RealManifestArg,
        output: Annotated[Path, typer.Option("--output", "-o", help="The merged manifest: real "
                                             "rows + every synthetic row.",
                                             show_default=False)],
        runs: RunsOpt = Path("runs"),
        per_scan: Annotated[int, typer.Option("--per-scan", help="Samples per run.")] = 10,
        engine: EngineOpt = Engine.singan,
        start_scale: Annotated[str, typer.Option(
            "--start-scale", help="N (coarsest), N-k or an index (0 = finest).")] = "N",
        seed: Annotated[int, typer.Option("--seed", help="Cohort seed.")] = 0,
        output_format: Annotated[OutputFormat, typer.Option(
            "--format", help="Format of the samples (same: the source's).")
        ] = OutputFormat.same,
        split: SplitsOpt = None,
        no_sifid: Annotated[bool, typer.Option("--no-sifid", help="Skip SIFID.")] = False,
        sifid_variant: VariantOpt = SifidVariant.paper,
        inception_weights: WeightsOpt = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")
                          ] = "auto",
        workers: WorkersOpt = 1,
        scheduler: SchedulerOpt = None,
        gpus_per_task: GpusOpt = 0,
        retries: RetriesOpt = 2,
        quiet: QuietOpt = False,
        max_copy: MaxCopyOpt = 0.5,
        modality: Annotated[Modality | None, typer.Option(
            "--modality", "-m", help="--engine patch: preset for every scan [default: the "
            "row's modality column, else auto].", show_default=False)] = None,
        window: WindowOpt = None,
    ) -> None:
        """Sample every trained run (or, with --engine patch, every scan: no cohort train
        needed) and write one manifest of real and synthetic rows."""
        from medsingan.cohort import cohort_augment as run
        from medsingan.metrics.sifid import find_inception_weights

        if not no_sifid:  # before any work
            find_inception_weights(inception_weights, sifid_variant.value)
        report = run(manifest, runs, output, per_scan=per_scan,
                     executing=_executing(workers, scheduler, gpus_per_task, retries, quiet),
                     start_scale=start_scale, seed=seed, output_format=output_format.value,
                     sifid=not no_sifid, sifid_variant=sifid_variant.value,
                     inception_weights=inception_weights, device=device,
                     splits=tuple(split or ("train",)), engine=engine.value,
                     modality=None if modality is None else modality.value, window=window,
                     max_copy=max_copy)
        _report(report, f"{len(report.results)} run(s) sampled")
        copies = sum(len((r.details.get("summary") or {}).get("over_max_copy") or [])
                     for r in report.results)
        if copies:
            typer.echo(f"{copies} sample(s) copy over --max-copy {max_copy:g} of their "
                       f"patches from their scan: see {report.summary}")
        typer.echo(f"manifest: {report.manifest}")
        typer.echo(f"summary: {report.summary}, {report.sheet}")
        if report.failed:
            raise typer.Exit(1)
