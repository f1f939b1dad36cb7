"""Arguments and options shared by several ``medsingan`` commands (one help text each)."""

from __future__ import annotations

from enum import Enum
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


class SpeedPreset(str, Enum):
    fast = "fast"
    quick = "quick"
    balanced = "balanced"
    concurrent = "concurrent"
    lean = "lean"
    paper = "paper"


PresetOpt = Annotated[SpeedPreset, typer.Option(
    "--preset", help="Hyper-parameter preset: fast (measured default), quick (fast with 500 "
    "iterations per scale: a quarter of the time), balanced (fast with the gradient penalty "
    "on every step and 1000 iterations: closer to paper's quality, README 'Speed and "
    "memory'), concurrent (balanced's networks with two scales trained at a time, 500 "
    "iterations and --alpha 20: paper's quality at 64 px in a quarter of its iterations; at "
    "128 px its samples from N are 30 % further from the scan than paper's), lean (concurrent "
    "with 32 channels at every scale: a third of its time at 250 px and nearer paper's samples "
    "from N at 128 px; for scans trained at 128 px or more) or paper (the paper's settings "
    "exactly, ignoring the modality preset's training section).")]
ItersOpt = Annotated[int | None, typer.Option(
    "--iters", help="Iterations per scale [default: preset's; fast and paper 2000, balanced "
    "1000, quick, concurrent and lean 500].",
    show_default=False)]
MinSizeOpt = Annotated[int | None, typer.Option(
    "--min-size", help="Shorter side of the coarsest scale, px [default: 25].",
    show_default=False)]
MaxSizeOpt = Annotated[int | None, typer.Option(
    "--max-size", help="Longer side of the finest scale, px [default: 250].",
    show_default=False)]
SeedOpt = Annotated[int | None, typer.Option(
    "--seed", help="Random seed [default: 0].", show_default=False)]
TrainDeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="auto, cpu, cuda or cuda:N [default: auto].", show_default=False)]


class Modality(str, Enum):
    auto = "auto"
    xray = "xray"
    ct = "ct"
    mri = "mri"
    dental = "dental"
    generic = "generic"


ScanArg = Annotated[Path, typer.Argument(help="Scan file (DICOM, NIfTI .nii/.nii.gz, MHA/MHD, "
                                          "NRRD, PNG, TIFF or JPEG) or a folder of one DICOM "
                                          "series.", show_default=False)]
ModalityOpt = Annotated[Modality, typer.Option(
    "--modality", "-m", help="Modality preset; auto picks it from the DICOM Modality tag "
    "(CR/DX/MG/RG/XA/RF -> xray, IO/PX -> dental, CT -> ct, MR -> mri, else generic).")]
WindowOpt = Annotated[str | None, typer.Option(
    "--window", help="CT window: lung, soft_tissue, bone or full [default: the preset's, "
    "soft_tissue].", show_default=False)]


class OutputFormat(str, Enum):
    same = "same"
    dcm = "dcm"
    nii = "nii"
    png = "png"
    mha = "mha"
    nrrd = "nrrd"


class SifidVariant(str, Enum):
    paper = "paper"
    fid64 = "fid64"


WeightsOpt = Annotated[Path | None, typer.Option(
    "--inception-weights", help="The Inception weights file of the SIFID variant: paper "
    "inception_v3_google-0cc3c7bd.pth (torchvision), fid64 pt_inception-2015-12-05-6726825d.pth "
    "(pytorch-fid) [default: $MEDSINGAN_INCEPTION_WEIGHTS, else torch's hub cache].",
    show_default=False)]
VariantOpt = Annotated[SifidVariant, typer.Option(
    "--sifid-variant", help="paper: the paper's SIFID (torchvision ImageNet InceptionV3, "
    "192 channels of Conv2d_4a_3x3 before the 2nd max-pool); fid64: pytorch-fid's 64-channel "
    "block 0 (FID weights). Scores of two variants are not comparable.")]


class Loss(str, Enum):
    wgan_gp = "wgan-gp"
    frechet = "frechet"
    nn_patch = "nn-patch"
    aligned_nn = "aligned-nn"


LossOpt = Annotated[Loss | None, typer.Option(
    "--loss", help="Distribution loss: the WGAN-GP critic, or an explicit patch loss "
    "replacing it (frechet: Fréchet distance of patch means and covariances; nn-patch: "
    "distance to the nearest real patch; aligned-nn: to the real patch at the same place) "
    "[default: wgan-gp].", show_default=False)]


class Engine(str, Enum):
    singan = "singan"
    patch = "patch"


EngineOpt = Annotated[Engine, typer.Option(
    "--engine", help="singan: sample a run trained by train; patch: the training-free patch "
    "engine on the scan itself, in seconds, no training (it copies more of the scan: see the "
    "copy score).")]
MaxCopyOpt = Annotated[float, typer.Option(
    "--max-copy", help="The summary lists the samples whose copy_score (fraction of their "
    "16 px patches that are near-verbatim copies of the scan's) is over this.")]
