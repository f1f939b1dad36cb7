"""Region runs (`train --roi`): a region of a real film trained at native resolution, and its
edits and samples written into the full-size film, unchanged outside the blend margin.

The film is pydicom-data's RG3_UNCR.dcm (CR, 1760 x 1760 px, 10-bit, MONOCHROME1); the region
is a 56 px square on the tibial shaft, so that a run trains in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsingan.augment import AugmentRequest, augment, source_meta
from medsingan.errors import ConfigError, MedsinganWarning, RunDirError
from medsingan.io import read_scan, write_scan
from medsingan.manifest import check_manifest, read_manifest
from medsingan.manipulate import (
    EditRequest,
    PaintRequest,
    SuperResolveRequest,
    edit,
    harmonize,
    paint,
    super_resolve,
)
from medsingan.roi import blend_margin
from medsingan.runs import train_scan
from medsingan.train import load_run
from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import dciodvfy_errors, dicom_file
from tests.test_manipulate import far_from, lesion_png, mask_png

TINY = {"max_size": 64, "iters": 8, "nfc": 16, "max_nfc": 16, "seed": 0}
FILM = "RG3_UNCR.dcm"
REGION = (830, 640, 56, 56)  # X, Y, W, H in px of the film: the tibial shaft
LESION_AT = "852,662"  # a 12 px patch, 22 px inside the region's left and top edges


@pytest.fixture(scope="module")
def region_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tibia"
    train_scan(dicom_file(FILM), run_dir, overrides=TINY, progress=False, roi=REGION,
               label="normal", split="train", subject_id="P003")
    return run_dir


def stored_film() -> np.ndarray:
    """The film's stored pixels as pydicom decodes them (independent of medsingan's reader)."""
    return pydicom.dcmread(dicom_file(FILM)).pixel_array.astype(np.int64)


def region_box(margin: int = 0) -> np.ndarray:
    """The region grown by ``margin`` px, as a full-size boolean image."""
    x, y, w, h = REGION
    box = np.zeros((1760, 1760), bool)
    box[y - margin:y + h + margin, x - margin:x + w + margin] = True
    return box


def edit_request(run_dir: Path, folder: Path, **kwargs) -> EditRequest:
    defaults = {"out": folder / "out", "manifest": folder / "manifest.csv", "label": "fracture"}
    return EditRequest(run_dir=run_dir, **{**defaults, **kwargs})


def test_the_region_is_trained_at_the_films_own_resolution(region_run):
    pyramid = load_run(region_run)
    assert pyramid.shapes[0] == (56, 56)  # max size 64: the region is not shrunk
    x, y, w, h = REGION
    display = 1023 - stored_film()[y:y + h, x:x + w]  # MONOCHROME1, 10-bit stored range
    expected = 2 * display / 1023 - 1
    assert np.allclose(pyramid.reals[0][0, 0].numpy(), expected, atol=1e-6)
    extra = pyramid.metadata["extra"]
    assert extra["roi"] == {"x": 830, "y": 640, "w": 56, "h": 56, "spacing_mm": None}
    assert (extra["source"]["rows"], extra["source"]["columns"]) == (1760, 1760)
    assert extra["source"]["source_path"] == str(dicom_file(FILM))


def test_an_edit_writes_the_full_film_changed_only_near_the_finding(region_run, tmp_path,
                                                                    dciodvfy):
    lesion = lesion_png(tmp_path, region_run)
    result = edit(edit_request(region_run, tmp_path, lesion=lesion, at=LESION_AT, n=2))
    assert result.box == (852, 662, 12, 12) and result.region == "830,640,56,56"
    mask = np.asarray(Image.open(result.mask)) > 0
    assert mask.shape == (1760, 1760) and mask.sum() == 144 and mask[662:674, 852:864].all()
    outside = far_from(mask, blend_margin((56, 56), "edit"))
    source = stored_film()
    for path in result.written:
        written = pydicom.dcmread(path)
        assert (written.Rows, written.Columns) == (1760, 1760)
        assert written.PhotometricInterpretation == "MONOCHROME1" and written.BitsStored == 10
        pixels = written.pixel_array.astype(np.int64)
        assert np.array_equal(pixels[outside], source[outside])  # bit-identical
        assert np.abs(pixels[mask] - source[mask]).mean() > 20  # of a 0..1023 range
        assert not (pixels != source)[~region_box()].any()
    assert len(dciodvfy_errors(result.written[0])) <= len(dciodvfy_errors(dicom_file(FILM)))
    frame = read_manifest(result.manifest)
    assert frame[["lesion_x", "lesion_y", "lesion_w", "lesion_h"]].values.tolist() == \
        [[852, 662, 12, 12]] * 2
    assert frame[["height", "width"]].values.tolist() == [[1760, 1760]] * 2
    assert check_manifest(result.manifest) == []


def test_harmonize_and_paint_write_the_full_film_too(region_run, tmp_path):
    lesion = lesion_png(tmp_path, region_run, size=10, name="CT_small.dcm")
    result = harmonize(edit_request(region_run, tmp_path, lesion=lesion, at=LESION_AT))
    mask = np.asarray(Image.open(result.mask)) > 0
    pixels = pydicom.dcmread(result.written[0]).pixel_array.astype(np.int64)
    outside = far_from(mask, blend_margin((56, 56), "harmonize"))
    assert np.array_equal(pixels[outside], stored_film()[outside])
    assert (pixels != stored_film())[mask].mean() > 0.5
    drawing = tmp_path / "drawing.png"
    Image.fromarray(np.tile(np.linspace(60, 200, 28), (28, 1)).astype(np.uint8)).save(drawing)
    painted = paint(PaintRequest(run_dir=region_run, paint=drawing, intensity="display",
                                 out=tmp_path / "paint", manifest=tmp_path / "paint.csv"))
    pixels = pydicom.dcmread(painted.written[0]).pixel_array.astype(np.int64)
    assert pixels.shape == (1760, 1760) and painted.region == "830,640,56,56"
    assert np.array_equal(pixels[~region_box(-1)], stored_film()[~region_box(-1)])


def test_a_png_film_stays_a_png_of_its_own_size_changed_only_near_the_finding(tmp_path):
    display = 1023 - stored_film()[::2, ::2]  # 880 x 880, dense tissue bright
    film = tmp_path / "film.png"
    Image.fromarray((display >> 2).astype(np.uint8)).save(film)
    run_dir = tmp_path / "run"
    train_scan(film, run_dir, overrides=TINY, progress=False, roi=(415, 320, 56, 56))
    lesion = lesion_png(tmp_path, run_dir)
    result = edit(edit_request(run_dir, tmp_path, lesion=lesion, at="437,342"))
    written = result.written[0]
    assert written.suffix == ".png"
    source = np.asarray(Image.open(film)).astype(np.int64)
    with Image.open(written) as image:
        assert image.size == (880, 880) and image.mode == "L"
        pixels = np.asarray(image).astype(np.int64)
    mask = np.asarray(Image.open(result.mask)) > 0
    outside = far_from(mask, blend_margin((56, 56), "edit"))
    assert np.array_equal(pixels[outside], source[outside])
    assert np.abs(pixels[mask] - source[mask]).mean() > 5  # of a 0..255 range
    assert read_manifest(result.manifest)["width"].tolist() == [880]


def test_a_full_size_composite_and_mask_are_cut_to_the_region(region_run, tmp_path):
    """A fracture drawn into the full film: a dark line across the shaft."""
    film = read_scan(dicom_file(FILM))
    drawn = film.image.copy()
    rows = np.arange(660, 680)
    drawn[rows, rows + 195] = film.image.min()  # a diagonal line, columns 855..874
    meta = source_meta(load_run(region_run).metadata["extra"], False)
    composite = write_scan(drawn, meta, tmp_path / "composite.dcm")
    line = np.zeros(drawn.shape, bool)
    line[rows, rows + 195] = True
    mask = mask_png(tmp_path / "mask.png", line)
    result = edit(edit_request(region_run, tmp_path, composite=composite, mask=mask))
    assert result.box == (855, 660, 20, 20)
    pixels = pydicom.dcmread(result.written[0]).pixel_array.astype(np.int64)
    outside = far_from(line, blend_margin((56, 56), "edit"))
    assert np.array_equal(pixels[outside], stored_film()[outside])
    assert (pixels != stored_film())[line].mean() > 0.5


def test_augment_replaces_the_region_blended_at_its_border(region_run, tmp_path):
    result = augment(AugmentRequest(run_dir=region_run, n=2, sifid=False, progress=False,
                                    out=tmp_path / "samples", manifest=tmp_path / "m.csv"))
    source = stored_film()
    inner = region_box(-blend_margin((56, 56), "harmonize") - 1)  # the taper is 1 in here
    samples = []
    for path in result.written:
        pixels = pydicom.dcmread(path).pixel_array.astype(np.int64)
        assert pixels.shape == (1760, 1760)
        assert np.array_equal(pixels[~region_box(-1)], source[~region_box(-1)])  # border too
        assert (pixels != source)[inner].mean() > 0.9
        samples.append(pixels)
    assert not np.array_equal(samples[0], samples[1])
    frame = read_manifest(result.manifest)
    assert frame[["height", "width"]].values.tolist() == [[1760, 1760]] * 2
    assert frame["region"].tolist() == ["830,640,56,56"] * 2  # X,Y,W,H of the film


def test_a_resampled_region_is_scaled_back_into_the_slice_and_says_so(tmp_path):
    """CT_small (128 x 128 px, 0.66 mm): a region at twice its spacing, then over max size."""
    ct = dicom_file("CT_small.dcm")
    spacing = 2 * 0.661468
    with pytest.warns(MedsinganWarning, match="scaled back up"):
        train_scan(ct, tmp_path / "run", overrides={**TINY, "max_size": 32}, progress=False,
                   roi=(20, 24, 80, 72), spacing=spacing)
    pyramid = load_run(tmp_path / "run")
    assert pyramid.shapes[0] == (29, 32)  # 36 x 40 px at 1.32 mm, then max size 32
    assert pyramid.metadata["extra"]["roi"]["spacing_mm"] == spacing
    result = augment(AugmentRequest(run_dir=tmp_path / "run", n=1, sifid=False,
                                    progress=False, out=tmp_path / "samples",
                                    manifest=tmp_path / "m.csv"))
    written = pydicom.dcmread(result.written[0])
    source = pydicom.dcmread(ct).pixel_array
    outside = np.ones((128, 128), bool)
    outside[25:95, 21:99] = False  # the region without its outermost pixels
    assert (written.Rows, written.Columns) == (128, 128)
    assert np.array_equal(written.pixel_array[outside], source[outside])
    assert (written.pixel_array != source)[40:80, 35:85].mean() > 0.9
    assert "clipped" not in written.DerivationDescription  # outside the region nothing was


@pytest.mark.parametrize(("roi", "fragment"), [
    ("1700,100,100,100", "leaves the 1760 x 1760 px scan"),
    ("900,700,20,20", "smaller than the coarsest pyramid size 25 px"),
])
def test_a_bad_region_is_one_line_and_trains_nothing(tmp_path, roi, fragment):
    result = run_cli("train", dicom_file(FILM), "--roi", roi, "--out", tmp_path / "run",
                     "--max-size", "64", "--iters", "1", "--quiet")
    assert_one_line_error(result, "--roi", fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"roi": "1,2,3"}, "X,Y,W,H"),
    ({"roi": (10, 10, 0, 50)}, "empty"),
    ({"roi": (-5, 10, 50, 50)}, "leaves"),
    ({"roi": REGION, "spacing": 0.5}, "pixel spacing"),  # the film records none
    ({"spacing": 0.5}, "--roi"),
])
def test_bad_region_options_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        train_scan(dicom_file(FILM), tmp_path / "run", overrides=TINY, progress=False,
                   **kwargs)
    assert not (tmp_path / "run").exists()


def test_edits_that_leave_the_region_are_refused_before_anything_is_written(region_run,
                                                                           tmp_path):
    lesion = lesion_png(tmp_path, region_run)
    everywhere = mask_png(tmp_path / "everywhere.png", np.ones((1760, 1760), bool))
    cases = [
        ({"lesion": lesion, "at": "800,662"}, "outside the run's region"),
        ({"lesion": lesion, "at": "833,662"}, "cross the border"),  # 3 px inside its edge
        ({"composite": dicom_file(FILM), "mask": everywhere}, "outside the run's region"),
        ({"composite": lesion, "mask": mask_png(tmp_path / "m.png", np.ones((12, 12), bool))},
         "full scan"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            edit(edit_request(region_run, tmp_path, **kwargs))
    with pytest.raises(ConfigError, match="super-resolve"):
        super_resolve(SuperResolveRequest(run_dir=region_run, out=tmp_path / "out",
                                          manifest=tmp_path / "manifest.csv"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "manifest.csv").exists()


def test_a_missing_or_changed_source_is_refused(region_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(region_run, run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    moved = tmp_path / "film.dcm"
    config["extra"]["source"]["source_path"] = str(moved)
    (run_dir / "config.json").write_text(json.dumps(config))
    lesion = lesion_png(tmp_path, run_dir)
    with pytest.raises(RunDirError, match="missing"):
        edit(edit_request(run_dir, tmp_path, lesion=lesion, at=LESION_AT))
    shutil.copyfile(dicom_file(FILM), moved)
    with moved.open("ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(RunDirError, match="changed"):
        augment(AugmentRequest(run_dir=run_dir, n=1, sifid=False, progress=False,
                               out=tmp_path / "samples", manifest=tmp_path / "m.csv"))
    assert not (tmp_path / "samples").exists()  # refused before anything was written


def test_output_sizes_of_a_region_run_are_refused_before_anything_is_written(region_run,
                                                                            tmp_path):
    for size in ({"height": 100}, {"scale_w": 1.5}):
        with pytest.raises(ConfigError, match="whole-scan runs"):
            augment(AugmentRequest(run_dir=region_run, n=1, sifid=False, progress=False,
                                   out=tmp_path / "samples", manifest=tmp_path / "m.csv",
                                   **size))
    assert not (tmp_path / "samples").exists() and not (tmp_path / "m.csv").exists()


def test_an_interrupted_region_cohort_completes_as_an_uninterrupted_one(region_run, tmp_path):
    def cohort(folder: Path, n: int):
        return augment(AugmentRequest(run_dir=region_run, n=n, sifid=False, progress=False,
                                      out=folder / "samples", manifest=folder / "m.csv"))

    whole = cohort(tmp_path / "whole", 3)
    cohort(tmp_path / "parts", 2)
    rest = cohort(tmp_path / "parts", 3)
    assert rest.skipped == 2
    # the samples read back from the full-size films score as they did when generated:
    # as written, blended into the region's border (10-bit films: a small rounding)
    assert rest.summary["diversity"] == pytest.approx(whole.summary["diversity"], rel=1e-2)
    for name in ("similarity_to_source", "patch_swd"):
        assert read_manifest(rest.manifest)[name].tolist() == pytest.approx(
            read_manifest(whole.manifest)[name].tolist(), rel=1e-6)
    assert check_manifest(rest.manifest) == []


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
def test_a_region_of_a_simpleitk_or_nifti_slice_changes_only_its_region(tmp_path, suffix):
    """anatomical.nii's slice 12, as the NIfTI volume itself or as SimpleITK writes it (a 2D
    MHA): the output, read by nibabel / SimpleITK, is the whole slice in the file's own voxel
    order, changed only inside the region, which nibabel's orientation maps from display to
    voxels (SimpleITK's array of a NIfTI slice is nibabel's, transposed)."""
    import nibabel as nib
    import SimpleITK as sitk

    from tests.conftest import nifti_file
    from tests.io.test_sitk import SHOWN_CODES
    volume = nifti_file("anatomical.nii")
    nifti = nib.load(volume)
    rows, columns = read_scan(volume, slice_index=12).image.shape
    roi = (columns - 29, rows - 27, 28, 26)  # X, Y, W, H in display px: off centre
    shown = np.zeros(nib.orientations.apply_orientation(
        np.zeros(nifti.shape), nib.orientations.ornt_transform(
            nib.io_orientation(nifti.affine),
            nib.orientations.axcodes2ornt(SHOWN_CODES[2]))).shape, bool)
    shown[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2], :] = True
    region = nib.orientations.apply_orientation(shown, nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(SHOWN_CODES[2]), nib.io_orientation(nifti.affine)))
    region = region[:, :, 12]  # the region in the file's voxels (i, j)
    if suffix == ".mha":
        source = tmp_path / "plane.mha"
        sitk.WriteImage(sitk.ReadImage(str(volume))[:, :, 12], str(source))
        selection = {}
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
        region = region.T
    else:
        source = volume
        selection = {"slice_index": 12}
        original = np.asanyarray(nifti.dataobj)[:, :, 12]
    train_scan(source, tmp_path / "run", overrides={**TINY, "iters": 4}, progress=False,
               roi=roi, **selection)
    result = augment(AugmentRequest(run_dir=tmp_path / "run", n=1, sifid=False,
                                    progress=False, out=tmp_path / "samples",
                                    manifest=tmp_path / "m.csv"))
    (written,) = result.written
    assert written.name.endswith(suffix)
    if suffix == ".mha":
        image = sitk.ReadImage(str(written))
        assert image.GetDimension() == 2
        pixels = sitk.GetArrayFromImage(image)
    else:
        pixels = np.asanyarray(nib.load(written).dataobj)
        pixels = pixels.reshape(pixels.shape[:2])
    assert pixels.shape == original.shape
    assert np.array_equal(pixels[~region], original[~region])  # bit-identical outside
    assert (pixels != original)[region].mean() > 0.3


def test_a_float64_source_is_warned_about(tmp_path):
    import SimpleITK as sitk

    from medsingan.roi import Region, region_unit
    from tests.conftest import nifti_file
    plane = sitk.Cast(sitk.ReadImage(str(nifti_file("anatomical.nii")))[:, :, 12],
                      sitk.sitkFloat64)
    sitk.WriteImage(plane, str(tmp_path / "plane.mha"))
    scan = read_scan(tmp_path / "plane.mha")
    unit = 2 * (scan.image - scan.image.min()) / np.ptp(scan.image) - 1
    with pytest.warns(MedsinganWarning, match="float32 precision"):
        region_unit(unit, Region(0, 0, 30, 30), scan.meta, min_size=25)


def test_resuming_with_another_region_or_none_is_refused(region_run, tmp_path):
    """A run killed in its first scale holds config.json only; resuming it on another region
    would composite the new model into the old region."""
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    shutil.copyfile(region_run / "config.json", run_dir / "config.json")
    for roi in ((830, 700, 56, 56), None):
        with pytest.raises(RunDirError, match="another scan or region"):
            train_scan(dicom_file(FILM), run_dir, overrides=TINY, progress=False, roi=roi,
                       resume=True, label="normal", split="train", subject_id="P003")
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
