"""Image + mask pairs (SinGAN-Seg): ``train --mask``, and ``augment`` writing each sample's mask.

Real data, masks made here (never committed):

* CT: pydicom's ``CT_small.dcm`` (a vertebra, 128 x 128 px) with a bone mask: HU > 200, a
  binary closing (2 iterations), holes filled, the largest connected component kept: the
  vertebral body and its posterior arch (13% of the slice), saved as a 0/255 PNG.
* MR: nibabel's ``anatomical.nii`` (33 x 41 x 25 voxels, a crop of the brain's interior with
  no background, so no brain mask: its CSF is the structure): a 3D CSF mask, voxels darker
  than 60% of the volume's median, opened once in 3D, saved as a NIfTI on the same grid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from medsingan.augment import AugmentRequest, augment
from medsingan.errors import InvalidImageError
from medsingan.io import read_scan
from medsingan.masks import (
    OUTLINE_RGB,
    MaskLevels,
    pair_statistics,
    write_mask,
)
from medsingan.pyramid import build_image_pyramid, pyramid_shapes
from medsingan.runs import prepare_training, train_scan
from medsingan.train import load_run
from tests.cli.in_process import assert_one_line_error_in_process, run_in_process
from tests.conftest import dicom_file, nifti_file

TINY = {"max_size": 32, "min_size": 25, "iters": 16, "nfc": 16, "max_nfc": 16, "seed": 0,
        "device": "cpu"}
# Tolerance of the quality check, in the image channel's [-1, 1] units: 0.15 is 12% of the real
# pair's contrast (bone inside the mask 0.87, soft tissue and air outside -0.37: 1.24 apart)
# and under a fifth of what a mask misplaced on the same image changes (0.8, measured by the
# flipped-mask control below), so a synthetic mask that covers the synthetic bone passes and
# one beside it cannot.
STAT_TOLERANCE = 0.15


def bone_mask(hu: np.ndarray) -> np.ndarray:
    bone = ndi.binary_fill_holes(ndi.binary_closing(hu > 200, iterations=2))
    labelled, count = ndi.label(bone)
    sizes = ndi.sum(bone, labelled, range(1, count + 1))
    return labelled == 1 + int(np.argmax(sizes))


def ct_hu() -> np.ndarray:
    dataset = pydicom.dcmread(dicom_file("CT_small.dcm"))
    return dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)


@pytest.fixture(scope="module")
def bone_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("masks") / "bone.png"
    Image.fromarray(bone_mask(ct_hu()).astype(np.uint8) * 255).save(path)
    return path


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory, bone_png) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "ct_bone"
    train_scan(dicom_file("CT_small.dcm"), run_dir, overrides=TINY, progress=False,
               mask=bone_png, split="train", subject_id="P1")
    return run_dir


@pytest.fixture(scope="module")
def augmented(mask_run, tmp_path_factory):
    """4 pairs from scale N-1 (the coarsest scale reconstructs the vertebra's layout; the
    finer ones draw its texture and edges, image and mask together): ``(folder of the
    manifest, sample folder, manifest, result)``."""
    folder = tmp_path_factory.mktemp("cohort")
    result = augment(AugmentRequest(run_dir=mask_run, n=4, start_scale="N-1", sifid=False,
                                    progress=False, out=folder / "samples",
                                    manifest=folder / "pairs.csv"))
    return folder, result.out, result.manifest, result


# --- levels -----------------------------------------------------------------------------------

def test_binary_and_label_masks_map_to_evenly_spaced_levels():
    binary = MaskLevels.of_values(np.array([[0, 255], [255, 0]]), labels=False, name="m.png")
    assert binary.levels == [-1.0, 1.0]
    assert binary.to_unit(np.array([0.0, 255.0])).tolist() == [-1.0, 1.0]
    # SinGAN-Seg's threshold: 0.5 in [0, 1] is 0 here
    assert binary.indices(np.array([-0.9, -0.01, 0.0, 0.7])).tolist() == [0, 0, 1, 1]
    labels = MaskLevels.of_values(np.array([0, 10, 20, 30, 0]), labels=True, name="l.nii")
    assert labels.levels == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0])
    assert labels.indices(np.array([-1.2, -0.6, 0.1, 0.4, 2.0])).tolist() == [0, 1, 2, 2, 3]


@pytest.mark.parametrize(("values", "labels", "fragment"), [
    (np.zeros((4, 4)), False, "empty"),
    (np.full((4, 4), 255.0), False, "the whole image"),
    (np.arange(16.0).reshape(4, 4) % 3, False, "not binary: 3 distinct values"),
    (np.arange(20.0).reshape(4, 5), True, "at most 16"),
])
def test_what_is_not_a_mask_is_refused(values, labels, fragment):
    with pytest.raises(InvalidImageError, match=fragment):
        MaskLevels.of_values(values, labels=labels, name="m.png")


# --- geometry ---------------------------------------------------------------------------------

def test_a_volume_mask_is_read_on_the_scans_slice_and_grid(tmp_path):
    """The NIfTI scan's middle axial slice and the CSF mask's: every masked pixel is dark in
    the pair's image channel (the mask is a subset of the thresholded voxels), and as many
    pixels are masked as nibabel counts in that slice of the mask volume: a transposed,
    flipped or other slice breaks one of the two."""
    source = nib.load(nifti_file("anatomical.nii"))
    volume = np.asarray(source.dataobj, dtype=np.float64)
    threshold = 0.6 * np.median(volume)
    csf = ndi.binary_opening(volume < threshold)
    mask_path = tmp_path / "csf.nii.gz"
    nib.save(nib.Nifti1Image(csf.astype(np.uint8), source.affine), mask_path)
    prepared = prepare_training(nifti_file("anatomical.nii"), tmp_path / "run", mask=mask_path,
                                overrides={"max_size": 64, "min_size": 25})
    image, mask = prepared.image[0, 0].numpy(), prepared.image[0, 1].numpy()
    mapping = prepared.extra["intensity_mapping"]
    unit_threshold = 2 * (threshold - mapping["low"]) / (mapping["high"] - mapping["low"]) - 1
    middle = volume.shape[2] // 2
    assert prepared.image.shape == (1, 2, volume.shape[1], volume.shape[0])
    assert set(np.unique(mask)) == {-1.0, 1.0}
    assert int((mask > 0).sum()) == int(csf[:, :, middle].sum()) > 10
    assert np.all(image[mask > 0] < unit_threshold)
    assert prepared.extra["mask"]["kind"] == "binary"
    assert prepared.extra["mask"]["sha256"] == hashlib.sha256(mask_path.read_bytes()).hexdigest()


def test_every_scale_of_the_mask_channel_keeps_its_labels_and_the_image_its_own(bone_png,
                                                                                tmp_path):
    """A label map (background, soft tissue, bone) through the pyramid: nearest neighbours
    never invent an in-between label; the image channel is exactly an image-only run's."""
    hu = ct_hu()
    labels = np.where(bone_mask(hu), 2, np.where(hu > -300, 1, 0)).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    pair = prepare_training(dicom_file("CT_small.dcm"), tmp_path / "run", overrides=TINY,
                            mask=tmp_path / "labels.png", labels=True)
    alone = prepare_training(dicom_file("CT_small.dcm"), tmp_path / "run", overrides=TINY)
    shapes = pyramid_shapes(128, 128, 25, 32, alone.config.scale_factor)
    pyramid = build_image_pyramid(pair.image, shapes, label_channels=1)
    for scale, reference in zip(pyramid, build_image_pyramid(alone.image, shapes), strict=True):
        assert torch.equal(scale[:, :1], reference)
        assert set(np.unique(scale[0, 1].numpy())) == {-1.0, 0.0, 1.0}
    assert pair.extra["mask"]["values"] == [0.0, 1.0, 2.0]


def test_label_masks_are_written_on_the_sources_voxel_grid(tmp_path):
    """A NIfTI sample's mask is a NIfTI on the source's grid; its voxels (read by nibabel)
    hold the labels that the source's own voxels give, with the label values themselves."""
    source_path = nifti_file("anatomical.nii")
    scan = read_scan(source_path)
    source = nib.load(source_path)
    voxels = np.asarray(source.dataobj, dtype=np.float64)[:, :, scan.meta.slice_index]
    edges = np.percentile(voxels, [33, 66])
    levels = MaskLevels("labels", (0.0, 10.0, 20.0))
    written = write_mask(np.digitize(scan.image, edges), levels, scan.meta, tmp_path / "m.nii.gz")
    mask = nib.load(written)
    at_slice = source.affine.copy()  # a one-slice volume where the slice lies
    at_slice[:, 3] = source.affine @ [0, 0, scan.meta.slice_index, 1]
    assert np.allclose(mask.affine, at_slice)
    stored = np.asarray(mask.dataobj)[:, :, 0]
    assert stored.dtype == np.uint8
    assert np.array_equal(stored, np.array([0, 10, 20])[np.digitize(voxels, edges)])


# --- bad input --------------------------------------------------------------------------------

def test_a_3d_mask_applies_to_every_volume_of_a_4d_scan(tmp_path):
    """A 4D scan (here anatomical.nii's volume twice, the second brighter) trained on
    --volume 1 with the anatomy's 3D mask: the mask's slice is the scan's."""
    source = nib.load(nifti_file("anatomical.nii"))
    volume = np.asarray(source.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.stack([volume, 2 * volume], axis=-1), source.affine),
             tmp_path / "four.nii.gz")
    csf = ndi.binary_opening(volume < 0.6 * np.median(volume))
    nib.save(nib.Nifti1Image(csf.astype(np.uint8), source.affine), tmp_path / "csf.nii.gz")
    prepared = prepare_training(tmp_path / "four.nii.gz", tmp_path / "run", volume=1,
                                mask=tmp_path / "csf.nii.gz",
                                overrides={"max_size": 64, "min_size": 25})
    middle = volume.shape[2] // 2
    assert int((prepared.image[0, 1] > 0).sum()) == int(csf[:, :, middle].sum()) > 10


def _bad_masks(folder: Path) -> dict[str, tuple[list[str], str]]:
    bone = bone_mask(ct_hu()).astype(np.uint8) * 255
    files = {"small.png": bone[::2, ::2], "empty.png": np.zeros_like(bone),
             "full.png": np.full_like(bone, 255), "three.png": (bone // 255) + (ct_hu() > 0)}
    for name, pixels in files.items():
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # three slices, the CT's bone in only one: which of them lies on the 2D scan cannot be
    # told from a volume's affine, so such a mask is refused rather than its middle taken
    stack = np.stack([np.zeros_like(bone), bone // 255, np.zeros_like(bone)], axis=-1)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.swapaxes(stack, 0, 1)), np.eye(4)),
             folder / "volume.nii.gz")
    return {
        "size": (["--mask", "small.png"], "64 x 64 px, the scan 128 x 128"),
        "empty": (["--mask", "empty.png"], "empty"),
        "full": (["--mask", "full.png"], "the whole image"),
        "non-binary": (["--mask", "three.png"], "give --labels"),
        "unreadable": (["--mask", "broken.png"], "broken.png"),
        "region": (["--mask", "empty.png", "--roi", "0,0,64,64"], "--roi"),
        "labels alone": (["--labels"], "--mask"),
        "volume for one image": (["--mask", "volume.nii.gz"], "give the mask's slice"),
    }


BAD = ("size", "empty", "full", "non-binary", "unreadable", "region", "labels alone",
       "volume for one image")


@pytest.mark.parametrize("case", BAD)
def test_bad_masks_are_one_line_and_write_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    options, fragment = _bad_masks(tmp_path)[case]
    result = run_in_process(monkeypatch, capsys, "train", dicom_file("CT_small.dcm"), "-o",
                            tmp_path / "run", "--max-size", "32", *options)
    assert_one_line_error_in_process(result, fragment)
    assert not (tmp_path / "run").exists()


def test_the_patch_engine_takes_no_mask(tmp_path, bone_png, monkeypatch, capsys):
    result = run_in_process(monkeypatch, capsys, "augment", dicom_file("CT_small.dcm"),
                            "--engine", "patch", "--mask", bone_png, "-o", tmp_path / "out")
    assert_one_line_error_in_process(result, "--mask")
    assert not (tmp_path / "out").exists()


def test_edits_refuse_a_mask_run(mask_run, tmp_path, monkeypatch, capsys):
    result = run_in_process(monkeypatch, capsys, "super-resolve", mask_run, "-o",
                            tmp_path / "sr")
    assert_one_line_error_in_process(result, "image+mask run")
    assert not (tmp_path / "sr").exists()


# --- a mask run -------------------------------------------------------------------------------

def test_a_mask_run_records_its_mask_and_previews_its_outline(mask_run, bone_png):
    extra = json.loads((mask_run / "config.json").read_text())["extra"]
    assert extra["mask"]["sha256"] == hashlib.sha256(bone_png.read_bytes()).hexdigest()
    assert (extra["mask"]["kind"], extra["mask"]["values"]) == ("binary", [0.0, 255.0])
    assert (mask_run / extra["mask"]["path"]).resolve() == bone_png.resolve()
    scales = pd.read_csv(mask_run / "scales.csv")
    assert scales["patch_swd_median"].notna().all() and len(scales) == 3
    preview = np.asarray(Image.open(mask_run / "samples_scale_0.png").convert("RGB"))
    assert (preview == OUTLINE_RGB).all(axis=2).sum() > 50


def test_augment_writes_binary_masks_beside_the_samples(augmented, monkeypatch, capsys):
    folder, out, manifest, result = augmented
    table = pd.read_csv(manifest)
    assert len(table) == 4
    areas = []
    for row in table.itertuples():
        sample = pydicom.dcmread(folder / row.image)
        mask = np.asarray(Image.open(folder / row.mask))
        assert mask.shape == sample.pixel_array.shape == (row.height, row.width) == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
        assert row.mask_area == pytest.approx((mask == 255).mean())
        areas.append((mask == 255).mean())
    summary = json.loads((out / "summary.json").read_text())["masks"]
    assert summary["area_mean"] == pytest.approx(np.mean(areas))
    assert (summary["area_min"], summary["area_max"]) == pytest.approx((min(areas), max(areas)))
    assert run_in_process(monkeypatch, capsys, "manifest", "check", manifest)[0] == 0
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    assert (grid == OUTLINE_RGB).all(axis=2).sum() > 5 * 50  # the real pair and 4 samples


def test_synthetic_masks_cover_the_synthetic_bone(mask_run, augmented):
    """Intensity inside vs outside the mask, image channel in [-1, 1]: the synthetic pairs'
    match the real pair's within STAT_TOLERANCE; the same masks flipped upside down do not."""
    folder, out, manifest, result = augmented
    real = load_run(mask_run).reals[0][0]
    expected = pair_statistics(real[0], real[1].numpy() > 0)
    low, high = -160.0, 240.0  # the ct preset's soft-tissue window, as the rows record it
    table = pd.read_csv(manifest)
    assert set(table["intensity_window"]) == {"-160..240 HU"}
    for row in table.itertuples():
        sample = pydicom.dcmread(folder / row.image)
        hu = sample.pixel_array * float(sample.RescaleSlope) + float(sample.RescaleIntercept)
        unit = 2 * (np.clip(hu, low, high) - low) / (high - low) - 1
        inside = np.asarray(Image.open(folder / row.mask)) > 0
        own = pair_statistics(unit, inside)
        flipped = pair_statistics(unit, inside[::-1])
        for key in ("inside_mean", "outside_mean", "inside_std", "outside_std"):
            assert own[key] == pytest.approx(expected[key], abs=STAT_TOLERANCE), key
        assert abs(flipped["inside_mean"] - expected["inside_mean"]) > 2 * STAT_TOLERANCE


def test_a_missing_mask_is_drawn_again_and_the_others_read_back(mask_run, augmented,
                                                               monkeypatch, capsys):
    """Run last in this module: it completes the shared cohort through the command line."""
    folder, out, manifest, _ = augmented
    table = pd.read_csv(manifest)
    lost = folder / table["mask"][2]
    before = lost.read_bytes()
    lost.unlink()
    code, stdout, stderr = run_in_process(
        monkeypatch, capsys, "augment", mask_run, "--n", "4", "--start-scale", "N-1",
        "--no-sifid", "-q", "-o", out, "--manifest", manifest)
    assert code == 0, stderr
    assert "1 sample(s) written" in stdout and "(3 already there)" in stdout
    assert "masks: area fraction mean" in stdout
    assert lost.read_bytes() == before  # sample i depends on (seed, i) only
    assert json.loads((out / "summary.json").read_text())["masks"]["pairs"] == 4


def test_a_picked_sweep_keeps_the_masks_of_its_samples_only(mask_run, tmp_path):
    from medsingan.sweep import augment_sweep

    augment_sweep(AugmentRequest(run_dir=mask_run, n=2, start_scale="all", sifid=False,
                                 progress=False, out=tmp_path / "sweep",
                                 manifest=tmp_path / "sweep.csv"), "best")
    table = pd.read_csv(tmp_path / "sweep.csv")
    listed = {(tmp_path / path).resolve() for path in table["mask"]}
    on_disk = {path.resolve() for path in (tmp_path / "sweep").rglob("*_mask.png")}
    assert len(listed) == 2 and on_disk == listed
