"""``pipelines.classify``: a MONAI classifier trained and scored from a manifest of real scans.

The task is trivially separable (tomographic slices, CT and MR, against projection
radiographs) so that a few epochs at 32 px must find it; the scans are the real ones shipped
by pydicom, pydicom-data and nibabel, as DICOM files, PNG/JPEG crops and a NIfTI slice, with
one subject per patient and no patient on both sides.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from medsingan.manifest import ManifestRow, append_rows, check_manifest
from pipelines.classify import (
    ClassifyError,
    classification_metrics,
    main,
    preprocessing,
    roc_auc,
    roc_curve,
    train_and_evaluate,
)
from tests.conftest import dicom_file, nifti_file

REPO = Path(__file__).resolve().parents[2]
SLICE, RADIOGRAPH = "tomographic", "radiograph"  # sorted: "tomographic" is the positive class
TINY = {"epochs": 5, "size": 32, "batch_size": 8, "lr": 1e-3, "model": "densenet121",
        "device": "cpu", "seed": 7}
RESULT_KEYS = {"arm", "seed", "classes", "positive_class", "macro_auc", "balanced_accuracy",
               "accuracy", "sensitivity", "specificity", "per_class", "counts", "predictions",
               "history", "hyperparameters", "manifest", "train_split", "test_split", "device",
               "versions", "created_at", "wall_time_s"}


# --- a cohort of real scans ---------------------------------------------------------------------

def display_pixels(name: str, frame: int | None = None) -> np.ndarray:
    """A DICOM test file's pixels in physical units and display polarity (bone bright)."""
    dataset = pydicom.dcmread(dicom_file(name))
    pixels = pydicom.pixels.apply_modality_lut(dataset.pixel_array, dataset).astype(float)
    if frame is not None:
        pixels = pixels[frame]
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels


def write_raster(pixels: np.ndarray, path: Path, *, side: int = 96, rgb: bool = False) -> Path:
    """``pixels`` min-max scaled to 8 bits, resized to ``side`` px, as PNG or (RGB) JPEG."""
    scaled = (pixels - pixels.min()) / (np.ptp(pixels) or 1.0) * 255
    image = Image.fromarray(scaled.astype(np.uint8)).resize((side, side), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert("RGB") if rgb else image).save(path)
    return path


def crop(pixels: np.ndarray, top: float, left: float, side: float) -> np.ndarray:
    """A square crop: corner and side as fractions of the image's shorter side."""
    unit = min(pixels.shape)
    top, left, side = (int(fraction * unit) for fraction in (top, left, side))
    return pixels[top:top + side, left:left + side]


def row(image: Path | str, label: str, split: str, subject: str, **synthetic: object
        ) -> ManifestRow:
    if synthetic:
        return ManifestRow(image=str(image), label=label, split=split, subject_id=subject,
                           synthetic=True, method="random", modality="generic", **synthetic)
    return ManifestRow(image=str(image), label=label, split=split, subject_id=subject,
                       modality="generic")


# (top, left, side) of the radiograph crops: the chest film all over, most of the leg film
RADIOGRAPH_CROPS = {
    "RG1_UNCR.dcm": ((0, 0, .6), (0, .4, .6), (.4, 0, .6), (.4, .4, .6), (.2, .2, .6),
                     (.1, .25, .45), (.5, .3, .45)),
    "RG3_UNCR.dcm": ((0, 0, .85), (.15, .15, .85), (.1, .05, .9)),
}


def build_cohort(folder: Path) -> Path:
    """15 real training images of 5 subjects (+ 4 synthetic stand-ins of 2 of them), 8 real
    test images of 4 other subjects; returns the manifest."""
    scans = folder / "scans"
    rows: list[ManifestRow] = []
    # radiographs: the CR chest (training) and the CR leg (test), whole and cropped
    for name, split in (("RG1_UNCR.dcm", "train"), ("RG3_UNCR.dcm", "test")):
        subject = str(pydicom.dcmread(dicom_file(name), stop_before_pixels=True).PatientID)
        rows.append(row(dicom_file(name), RADIOGRAPH, split, subject))
        pixels = display_pixels(name)
        for index, box in enumerate(RADIOGRAPH_CROPS[name]):
            rgb = index == 1  # one colour JPEG per patient: read back as one channel
            path = scans / f"{subject}_crop{index}.{'jpg' if rgb else 'png'}"
            rows.append(row(write_raster(crop(pixels, *box), path, rgb=rgb), RADIOGRAPH, split,
                            subject))
    # tomographic slices: DICOM files as shipped, PNGs of slices and frames, a NIfTI slice
    for name, subject in (("CT_small.dcm", "1CT1"), ("693_UNCI.dcm", "CQ500-CT-310")):
        rows.append(row(dicom_file(name), SLICE, "train", subject))
    rows.append(row(write_raster(crop(display_pixels("693_UNCI.dcm"), .2, .2, .6),
                                 scans / "693_crop.png"), SLICE, "train", "CQ500-CT-310"))
    rows.append(row(write_raster(display_pixels("eCT_Supplemental.dcm", frame=0),
                                 scans / "eCT_frame0.png"), SLICE, "train", "0010"))
    volume = np.asarray(nibabel.load(nifti_file("anatomical.nii")).dataobj, dtype=np.float32)
    nifti_slice = scans / "anatomical_z12.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume[:, :, 12:13], np.eye(4)), nifti_slice)
    rows.append(row(nifti_slice, SLICE, "train", "anatomical"))
    for z in (8, 16):
        rows.append(row(write_raster(volume[:, :, z], scans / f"anatomical_z{z}.png"), SLICE,
                        "train", "anatomical"))
    for name, subject in (("MR_small.dcm", "4MR1"), ("MR2_UNCR.dcm", "5MR2")):
        rows.append(row(dicom_file(name), SLICE, "test", subject))
    for frame in (3, 7):
        rows.append(row(write_raster(display_pixels("emri_small.dcm", frame=frame),
                                     scans / f"emri_frame{frame}.png"), SLICE, "test", "emri"))
    # synthetic stand-ins (shifted copies) of two training images, inheriting split and subject
    for source, label, subject in ((scans / "9RG1_crop0.png", RADIOGRAPH, "9RG1"),
                                   (scans / "anatomical_z16.png", SLICE, "anatomical")):
        pixels = np.asarray(Image.open(source))
        for sample in range(2):
            path = scans / f"{source.stem}_sample{sample}.png"
            Image.fromarray(np.roll(pixels, 3 * (sample + 1), axis=1)).save(path)
            rows.append(row(path, label, "train", subject, source_image=str(source),
                            model="runs/stand_in", seed=0))
    manifest = folder / "manifests" / "cohort.csv"
    append_rows(manifest, rows)
    assert check_manifest(manifest) == []
    return manifest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "none"
    return out, train_and_evaluate(cohort, out, arm="none", **TINY)


def variant(manifest: Path, name: str, change) -> Path:
    """A copy of ``manifest`` beside it (same relative paths), its table edited in place by
    ``change(table)``."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    change(table)
    path = manifest.with_name(name)
    table.to_csv(path, index=False)
    return path


# --- reading ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*(nvImageCodec|affine matrix):UserWarning")
def test_every_format_reaches_the_network_as_one_channel_in_display_polarity(
        cohort: Path, tmp_path: Path) -> None:
    load = preprocessing(32)

    def pixels(path: Path) -> np.ndarray:
        image = load({"image": str(path)})["image"]
        assert tuple(image.shape) == (1, 32, 32) and image.dtype == torch.float32
        assert (float(image.min()), float(image.max())) == (0.0, 1.0)
        return image[0].numpy()

    # the MONOCHROME1 chest film against a PNG of its pixels inverted here with pydicom
    png = write_raster(display_pixels("RG1_UNCR.dcm"), tmp_path / "chest.png", side=256)
    dicom = pixels(dicom_file("RG1_UNCR.dcm"))
    assert np.corrcoef(dicom.ravel(), pixels(png).ravel())[0, 1] > 0.95
    scans = cohort.parent.parent / "scans"
    for path in (scans / "9RG1_crop1.jpg", scans / "anatomical_z12.nii.gz",
                 dicom_file("CT_small.dcm")):
        pixels(path)  # an RGB JPEG, a one-slice NIfTI volume, a CT in HU


# --- training and scoring -----------------------------------------------------------------------

def test_separates_tomographic_slices_from_radiographs(trained: tuple[Path, dict]) -> None:
    _, results = trained
    assert results["classes"] == [RADIOGRAPH, SLICE]
    assert results["positive_class"] == SLICE
    assert results["macro_auc"] > 0.9, results["predictions"]
    assert results["per_class"][SLICE]["auc"] == pytest.approx(results["macro_auc"])
    assert results["counts"]["train_real"] == 15 and results["counts"]["test"] == 8
    assert results["counts"]["train_synthetic"] == 0  # arm none: the synthetic rows unused
    assert results["counts"]["train_subjects"] == 5 and results["counts"]["test_subjects"] == 4


def test_results_json_holds_metrics_predictions_and_settings(trained: tuple[Path, dict]) -> None:
    out, results = trained
    written = json.loads((out / "results.json").read_text())
    assert set(written) == RESULT_KEYS
    assert written["macro_auc"] == results["macro_auc"]
    assert written["arm"] == "none" and written["seed"] == TINY["seed"]
    assert len(written["predictions"]) == 8
    for prediction in written["predictions"]:
        assert set(prediction) == {"image", "subject_id", "label", "predicted", "probabilities"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    for key in ("sensitivity", "specificity", "balanced_accuracy"):
        assert 0 <= written[key] <= 1
    hyper = written["hyperparameters"]
    assert {hyper[key] for key in ("epochs", "size", "batch_size", "lr", "model")} == {
        TINY[key] for key in ("epochs", "size", "batch_size", "lr", "model")}
    assert hyper["classic"]["flip"] is False
    assert [entry["epoch"] for entry in written["history"]] == list(range(1, 6))
    assert written["wall_time_s"] > 0


def test_roc_png_is_a_legible_figure(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    with Image.open(out / "roc.png") as figure:
        assert figure.format == "PNG" and figure.size == (700, 720)
        pixels = np.asarray(figure.convert("RGB"))
    blue = (pixels == (0, 114, 178)).all(axis=2)  # the curve's colour
    assert blue.sum() > 500
    assert (pixels.min(axis=2) < 100).mean() > 0.01  # axes, ticks and text drawn in black


def test_the_same_seed_gives_the_same_numbers_from_the_command_line(
        cohort: Path, trained: tuple[Path, dict], tmp_path: Path) -> None:
    _, first = trained
    options = [f"--{key.replace('_', '-')}={value}" for key, value in TINY.items()]
    result = run_cli(cohort, "--out", tmp_path / "again", *options)
    assert result.returncode == 0, result.stderr
    assert "epoch 5/5" in result.stderr and "macro AUC" in result.stdout
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    for key in RESULT_KEYS - {"manifest", "created_at", "wall_time_s"}:
        assert again[key] == first[key], key


def test_medsingan_arm_adds_the_synthetic_rows_of_training_subjects(
        cohort: Path, tmp_path: Path) -> None:
    results = train_and_evaluate(cohort, tmp_path / "both", arm="both",
                                 **{**TINY, "epochs": 1}, synthetic_per_source=1)
    assert results["counts"]["train_real"] == 15
    assert results["counts"]["train_synthetic"] == 2  # one of the two per source image
    assert results["counts"]["test"] == 8
    assert results["hyperparameters"]["synthetic_per_source"] == 1


# --- refusals: nothing trained, nothing written -------------------------------------------------

def first_index(table: pd.DataFrame, **where: str) -> int:
    mask = np.logical_and.reduce([table[column] == value for column, value in where.items()])
    return int(np.flatnonzero(mask)[0])


def share_a_subject(table: pd.DataFrame) -> None:
    table.loc[first_index(table, split="test"), "subject_id"] = "9RG1"


def synthetic_in_test(table: pd.DataFrame) -> None:
    index = first_index(table, synthetic="true")
    test_source = table.loc[first_index(table, split="test", label=SLICE)]
    table.loc[index, ["split", "subject_id", "source_image", "label"]] = [
        "test", test_source["subject_id"], test_source["image"], SLICE]


def synthetic_from_a_test_image(table: pd.DataFrame) -> None:
    table.loc[first_index(table, synthetic="true"), "source_image"] = table.loc[
        first_index(table, split="test"), "image"]


def one_training_class(table: pd.DataFrame) -> None:
    table.loc[table["split"] == "train", "label"] = RADIOGRAPH


def missing_file(table: pd.DataFrame) -> None:
    table.loc[first_index(table, split="train"), "image"] = "../scans/not_there.png"


def no_synthetic_rows(table: pd.DataFrame) -> None:
    table.loc[table["synthetic"] == "true", "split"] = "val"  # none left in training


@pytest.mark.parametrize(("change", "options", "message"), [
    (share_a_subject, {}, "subject '9RG1' is in both 'train'"),
    (synthetic_in_test, {}, "synthetic image(s) in the test split"),
    (synthetic_from_a_test_image, {}, "made from a test image"),
    (one_training_class, {}, "one class only"),
    (missing_file, {}, "missing_file"),
    (no_synthetic_rows, {}, "arm 'medsingan' needs synthetic rows"),
    (None, {"test_split": "val"}, "no rows in split 'val'"),
    (None, {"arm": "mixup"}, "--augment must be one of"),
])
def test_refuses_a_dishonest_or_unusable_evaluation(
        cohort: Path, tmp_path: Path, change, options: dict, message: str) -> None:
    manifest = variant(cohort, f"{tmp_path.name}.csv", change) if change else cohort
    out = tmp_path / "out"
    with pytest.raises(ClassifyError) as refused:
        train_and_evaluate(manifest, out, **{"arm": "medsingan", **TINY, **options})
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not out.exists()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pipelines.classify", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_command_refuses_a_patient_on_both_sides_in_one_line(
        cohort: Path, tmp_path: Path) -> None:
    manifest = variant(cohort, "shared_subject.csv", share_a_subject)
    out = tmp_path / "out"
    result = run_cli(manifest, "--out", out, "--augment", "none", "--epochs", "1")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "'9RG1'" in lines[0] and "both" in lines[0]
    assert result.stdout == "" and not out.exists()


def test_the_command_refuses_an_unknown_arm_in_one_line(
        cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["classify", str(cohort), "--out", str(out),
                                      "--augment", "mixup"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'mixup'" in lines[0]
    assert not out.exists()


# --- the AUC ------------------------------------------------------------------------------------

def pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The AUC's definition, counted pair by pair: P(positive > negative) + P(tie) / 2."""
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_the_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(5, 40))
    scores = rng.integers(0, 6, size) / 5  # few distinct values: many ties
    positive = rng.random(size) < 0.4
    positive[:2] = [True, False]
    assert roc_auc(scores, positive) == pytest.approx(pairwise_auc(scores, positive), abs=1e-12)
    fpr, tpr = roc_curve(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise_auc(scores, positive), abs=1e-12)


def test_auc_of_a_perfect_an_inverted_and_a_constant_score() -> None:
    positive = np.array([False, False, True, True])
    assert roc_auc([0.1, 0.2, 0.8, 0.9], positive) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], positive) == 0.0
    assert roc_auc([0.5] * 4, positive) == 0.5
    assert np.isnan(roc_auc([0.1, 0.2], [True, True]))


def test_sensitivity_and_specificity_are_those_of_the_second_label() -> None:
    # 3 pneumonia (positive: the second label), 2 normal; one of each called wrongly
    targets = np.array([0, 0, 1, 1, 1])
    p_pneumonia = np.array([0.2, 0.7, 0.9, 0.8, 0.3])
    metrics = classification_metrics(targets, np.c_[1 - p_pneumonia, p_pneumonia],
                                     ["normal", "pneumonia"])
    assert metrics["sensitivity"] == pytest.approx(2 / 3)  # pneumonia found: 2 of 3
    assert metrics["specificity"] == pytest.approx(1 / 2)  # normal cleared: 1 of 2
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["per_class"]["normal"]["sensitivity"] == pytest.approx(1 / 2)
    assert metrics["per_class"]["pneumonia"]["auc"] == pytest.approx(5 / 6)  # 5 of 6 pairs
