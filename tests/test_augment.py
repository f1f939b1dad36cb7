"""`augment` on tiny runs trained on real scans: files, geometry, scores, manifest, resume."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medsingan.augment import AugmentRequest, augment, load_complete_run, parse_scale
from medsingan.errors import ConfigError, MedsinganError, RunDirError
from medsingan.io import read_scan
from medsingan.manifest import check_manifest, read_manifest
from medsingan.runs import train_scan
from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import dciodvfy_errors, dicom_file, nifti_file

TINY = {"max_size": 32, "iters": 12, "nfc": 16, "max_nfc": 16, "seed": 0}


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ct"
    train_scan(dicom_file("CT_small.dcm"), run_dir, overrides=TINY, progress=False,
               split="test", label="normal", subject_id="P007")
    return run_dir


def request(run_dir, tmp_path, **kwargs) -> AugmentRequest:
    defaults = {"n": 4, "sifid": False, "progress": False, "out": tmp_path / "samples",
                "manifest": tmp_path / "manifest.csv"}
    return AugmentRequest(run_dir=run_dir, **{**defaults, **kwargs})


def test_dicom_samples_are_valid_derived_dicoms_in_hu(ct_run, tmp_path, dciodvfy):
    result = augment(request(ct_run, tmp_path, n=5))
    assert len(result.written) == 5 and all(p.suffix == ".dcm" for p in result.written)
    source = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    source_scan = read_scan(dicom_file("CT_small.dcm"))
    for path in result.written:
        scan = read_scan(path)
        assert scan.shape == (32, 32)
        assert scan.meta.units == "HU" and scan.meta.bits_stored == source_scan.meta.bits_stored
        assert scan.meta.rescale_intercept == source_scan.meta.rescale_intercept
        # soft-tissue window of the ct preset: samples live inside it, in HU
        assert scan.image.min() >= -160.5 and scan.image.max() <= 240.5
        assert scan.meta.pixel_spacing == pytest.approx(
            tuple(s * 128 / 32 for s in source_scan.meta.pixel_spacing), rel=1e-4)
        written = pydicom.dcmread(path)
        assert written.PatientID == "P007" and str(source.PatientName) not in str(written)
        assert written.SOPInstanceUID != source.SOPInstanceUID
    assert len(dciodvfy_errors(result.written[0])) <= len(dciodvfy_errors(dicom_file(
        "CT_small.dcm")))
    # the cohort is one series of the derived study, numbered by sample index
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in result.written]
    assert len({(h.StudyInstanceUID, h.SeriesInstanceUID) for h in headers}) == 1
    assert [h.InstanceNumber for h in headers] == [1, 2, 3, 4, 5]
    assert (result.out / "grid.png").is_file() and (result.out / "summary.json").is_file()


def test_manifest_rows_inherit_split_and_subject_and_load_in_pandas_and_monai(ct_run,
                                                                              tmp_path):
    from monai.data import CSVDataset
    from monai.transforms import Compose, Lambdad, LoadImaged

    result = augment(request(ct_run, tmp_path, n=3))
    assert check_manifest(result.manifest) == []
    frame = pd.read_csv(result.manifest)
    assert list(frame.columns[:18]) == ["image", "label", "split", "synthetic", "source_image",
                                        "subject_id", "modality", "method", "model",
                                        "start_scale", "seed", "sifid", "sifid_variant",
                                        "diversity", "similarity_to_source", "height", "width",
                                        "created_at"]
    assert set(frame["split"]) == {"test"} and set(frame["subject_id"]) == {"P007"}
    assert set(frame["label"]) == {"normal"} and frame["synthetic"].all()
    assert frame["diversity"].notna().all() and frame["patch_swd"].notna().all()
    assert (frame["method"] == "random").all() and (frame["start_scale"] == 2).all()
    folder = str(result.manifest.parent)
    dataset = CSVDataset(src=str(result.manifest), transform=Compose([
        Lambdad("image", lambda p: f"{folder}/{p}"), LoadImaged(keys="image")]))
    assert len(dataset) == 3 and tuple(dataset[0]["image"].shape) == (32, 32)


def test_every_sample_has_its_engine_and_a_copy_score(ct_run, tmp_path):
    result = augment(request(ct_run, tmp_path, n=3, max_copy=0.0))
    frame = read_manifest(result.manifest)
    assert set(frame["engine"]) == {"singan"}
    assert frame["copy_score"].between(0, 1).all() and (frame["copy_region_px"] >= 0).all()
    flagged = {entry["image"] for entry in result.summary["over_max_copy"]}
    assert flagged == set(frame.loc[frame["copy_score"] > 0, "image"])
    assert result.summary["copy_score_mean"] == pytest.approx(frame["copy_score"].mean())


def test_a_synthetic_sample_cannot_leave_its_source_split(ct_run, tmp_path):
    with pytest.raises(ConfigError, match="leak"):
        augment(request(ct_run, tmp_path, split="train"))
    assert not (tmp_path / "samples").exists()


def test_variety_falls_as_the_start_scale_gets_finer(ct_run, tmp_path):
    values = {}
    for scale in ("N", "N-1", "0"):
        result = augment(request(ct_run, tmp_path / scale, n=6, start_scale=scale))
        values[scale] = result.summary["diversity"]
    assert values["N"] > values["N-1"] > values["0"] > 0


def test_samples_do_not_depend_on_batch_size_and_resume_without_duplicates(ct_run, tmp_path):
    whole = augment(request(ct_run, tmp_path / "whole", n=6, batch_size=4))
    first = augment(request(ct_run, tmp_path / "parts", n=4, batch_size=1))
    rest = augment(request(ct_run, tmp_path / "parts", n=6, batch_size=3))
    assert len(first.written) == 4 and len(rest.written) == 2 and rest.skipped == 4
    frame = read_manifest(rest.manifest)
    assert len(frame) == 6 and frame["image"].is_unique
    for a, b in zip(sorted(whole.out.glob("*.dcm")), sorted(rest.out.glob("*.dcm")),
                    strict=True):
        # equal up to float rounding (convolution kernels differ by batch size), i.e. at most
        # one quantisation step (1 HU) after writing
        np.testing.assert_allclose(read_scan(a).image, read_scan(b).image, atol=1.0)
    # the resumed cohort's diversity covers all six samples, four of them read back from disk
    assert rest.summary["diversity"] == pytest.approx(whole.summary["diversity"], rel=0.02)
    assert rest.summary["diversity"] != pytest.approx(first.summary["diversity"], rel=0.02)
    with pytest.raises(ConfigError, match="other settings"):
        augment(request(ct_run, tmp_path / "parts", n=6, seed=1))


def test_the_default_batch_is_sized_for_the_output_asked_for(ct_run, tmp_path):
    from medsingan.augment import default_batch_size

    pyramid, _ = load_complete_run(ct_run)
    assert default_batch_size(pyramid, (32, 32)) == 64  # a 32-px run: the cap
    # --height 12000 on a 32-px run: a 12000x32 sample needs 375 times the activations, so
    # the batch shrinks until one batch's finest activations fit about 1 GiB again
    tall = default_batch_size(pyramid, (12000, 32))
    width = max(g.spec.width for g in pyramid.generators.values())
    assert 1 <= tall < 64 and tall * 12000 * 32 * width * 4 * 8 <= 2**30


def test_samples_inherit_label_and_subject_and_a_resumed_cohort_keeps_them(ct_run, tmp_path):
    for option in ({"label": "fracture"}, {"subject_id": "P999"}):
        with pytest.raises(ConfigError, match="inherit"):
            augment(request(ct_run, tmp_path, **option))
    assert not (tmp_path / "samples").exists()
    augment(request(ct_run, tmp_path, n=2, label="normal"))  # the run's own label: fine
    # completing it with the source's identifiers would mix two kinds of file in one cohort
    with pytest.raises(ConfigError, match="other settings.*keep_identifiers"):
        augment(request(ct_run, tmp_path, n=3, keep_identifiers=True))
    frame = read_manifest(tmp_path / "manifest.csv")
    assert len(frame) == 2 and set(frame["label"]) == {"normal"}


def test_the_ct_window_the_samples_are_clipped_to_is_recorded_everywhere(ct_run, tmp_path):
    dcm = augment(request(ct_run, tmp_path / "dcm", n=2))
    nii = augment(request(ct_run, tmp_path / "nii", n=2, output_format="nii"))
    assert set(read_manifest(dcm.manifest)["intensity_window"]) == {"-160..240 HU"}
    written = pydicom.dcmread(dcm.written[0])
    assert float(written.WindowCenter) == 40 and float(written.WindowWidth) == 400
    assert "clipped to [-160, 240] HU" in written.DerivationDescription
    header = nib.load(nii.written[0]).header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (-160, 240)


def test_a_resized_dicom_sample_covers_the_source_slice(ct_run, tmp_path):
    source = pydicom.dcmread(dicom_file("CT_small.dcm"), stop_before_pixels=True)
    written = pydicom.dcmread(augment(request(ct_run, tmp_path, n=1)).written[0])
    cosines = np.array(source.ImageOrientationPatient, float)
    spacing = [float(v) for v in source.PixelSpacing]
    # 128 -> 32 px: the first pixel's centre sits 1.5 source pixels in along both axes, and
    # the last one as far from the source's last centre
    expected = (np.array(source.ImagePositionPatient, float)
                + 1.5 * spacing[0] * cosines[3:] + 1.5 * spacing[1] * cosines[:3])
    np.testing.assert_allclose(np.array(written.ImagePositionPatient, float), expected,
                               atol=1e-3)


def test_a_sample_changed_on_disk_stops_its_cohort_with_one_line(ct_run, tmp_path):
    first = augment(request(ct_run, tmp_path, n=2, output_format="png"))
    with Image.open(first.written[0]) as image:
        image.transpose(Image.Transpose.TRANSPOSE).crop((0, 0, 20, 32)).save(first.written[0])
    with pytest.raises(RunDirError, match="reads back as 32x20 px, not the cohort's 32x32"):
        augment(request(ct_run, tmp_path, n=3, output_format="png"))


def test_sifid_is_scored_per_sample_with_a_weights_file(ct_run, tmp_path, inception_weights):
    result = augment(request(ct_run, tmp_path, n=3, sifid=True,
                             inception_weights=inception_weights))
    frame = read_manifest(result.manifest)
    assert (frame["sifid"] > 0).all() and (frame["sifid_variant"] == "paper").all()


def test_nifti_source_gives_nifti_samples_with_the_slice_geometry(tmp_path):
    run_dir = tmp_path / "mr"
    train_scan(nifti_file("anatomical.nii"), run_dir, modality="mri", slice_index=12,
               overrides=TINY, progress=False)
    result = augment(request(run_dir, tmp_path, n=2))
    source = nib.load(nifti_file("anatomical.nii"))
    for path in result.written:
        assert path.name.endswith(".nii.gz")
        image = nib.load(path)
        assert image.shape[2] == 1 and image.get_data_dtype().name == source.get_data_dtype().name
        # the (smaller) slice covers slice 12 of the source: the grids' outer corners meet
        np.testing.assert_allclose(image.affine @ [-0.5, -0.5, 0, 1],
                                   source.affine @ [-0.5, -0.5, 12, 1], atol=1e-4)
        far = [image.shape[0] - 0.5, image.shape[1] - 0.5, 0, 1]
        np.testing.assert_allclose(image.affine @ far, source.affine @ [
            source.shape[0] - 0.5, source.shape[1] - 0.5, 12, 1], atol=1e-4)


def test_png16_source_gives_png16_samples(tmp_path):
    pixels = pydicom.dcmread(dicom_file("RG3_UNCR.dcm")).pixel_array[::40, ::40]
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "hand.png")
    run_dir = tmp_path / "hand"
    train_scan(tmp_path / "hand.png", run_dir, overrides=TINY, progress=False)
    result = augment(request(run_dir, tmp_path, n=2))
    for path in result.written:
        with Image.open(path) as image:
            assert path.suffix == ".png" and image.mode.startswith("I;16")
            assert np.asarray(image).max() <= pixels.max()


def test_other_sizes_and_aspect_ratios(ct_run, tmp_path):
    wide = augment(request(ct_run, tmp_path / "wide", n=2, width=64))
    tall = augment(request(ct_run, tmp_path / "tall", n=2, scale_h=1.5))
    assert read_scan(wide.written[0]).shape == (32, 64)
    assert read_scan(tall.written[0]).shape == (48, 32)
    with pytest.raises(ConfigError, match="too small"):
        augment(request(ct_run, tmp_path / "tiny", n=2, scale_w=0.2))


@pytest.mark.parametrize(("text", "expected"), [("N", 8), ("N-1", 7), ("n - 3", 5), ("0", 0),
                                                ("8", 8)])
def test_scale_syntax(text, expected):
    assert parse_scale(text, 8) == expected


@pytest.mark.parametrize("text", ["N-9", "9", "-1", "coarse"])
def test_bad_scale_syntax(text):
    with pytest.raises(ConfigError):
        parse_scale(text, 8)


def test_bad_input_fails_before_writing(ct_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for kwargs, error in (({"n": 0}, ConfigError), ({"start_scale": "N-5"}, ConfigError),
                          ({"out": blocker / "sub"}, MedsinganError)):
        with pytest.raises(error):
            augment(request(ct_run, tmp_path, **kwargs))
    with pytest.raises(RunDirError):
        augment(request(tmp_path / "no-run", tmp_path))
    assert not (tmp_path / "samples").exists() and not (tmp_path / "manifest.csv").exists()


def test_cli_errors_are_one_line(ct_run, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert_one_line_error(run_cli("augment", ct_run, "--n", "0", "--no-sifid", "--out", out),
                          "--n")
    assert_one_line_error(run_cli("augment", ct_run, "--start-scale", "N-7", "--no-sifid",
                                  "--out", out), "out of range")
    empty_hub = tmp_path / "hub"
    result = run_cli("augment", ct_run, "--out", out, "--manifest", tmp_path / "m.csv",
                     env={"TORCH_HOME": str(empty_hub), "MEDSINGAN_INCEPTION_WEIGHTS": ""})
    assert_one_line_error(result, "--no-sifid", "--inception-weights")
    assert not out.exists()
    # a run that does not exist is named first, not the (also missing) SIFID weights
    missing = tmp_path / "no_such_run"
    result = run_cli("augment", missing, "--out", out, "--manifest", tmp_path / "m.csv",
                     env={"TORCH_HOME": str(empty_hub), "MEDSINGAN_INCEPTION_WEIGHTS": ""})
    assert_one_line_error(result, "no_such_run")
    assert "inception" not in result.stderr.lower()
    assert not out.exists()
    # and score names a missing scan (the real one or a generated one) before the weights
    for files in ([tmp_path / "no_such.dcm", dicom_file("CT_small.dcm")],
                  [dicom_file("CT_small.dcm"), tmp_path / "no_such.dcm"]):
        result = run_cli("score", *files, env={"TORCH_HOME": str(empty_hub),
                                               "MEDSINGAN_INCEPTION_WEIGHTS": ""})
        assert_one_line_error(result, "no_such.dcm", "no such file")
        assert "inception" not in result.stderr.lower()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**70)], "--seed"),
    (["--start-scale=--1"], "--start-scale"),
    (["--scale-w", "inf"], "--scale-w"),
    (["--height", "100000"], "16384"),
    (["--device", "mps"], "--device"),
    (["--manifest", "{tmp}"], "is a directory"),
    (["--manifest", "{tmp}/bad.csv"], "bad.csv"),
])
def test_more_bad_input_is_one_line_and_writes_nothing(ct_run, tmp_path, args, fragment):
    (tmp_path / "bad.csv").write_text("image,colour\nx.dcm,red\n")
    before = sorted(tmp_path.rglob("*"))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("augment", ct_run, "--no-sifid", "--out", tmp_path / "o",
                     "--manifest", tmp_path / "m.csv", *args)
    assert_one_line_error(result, fragment)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_corrupt_settings_file_is_reported_not_a_traceback(ct_run, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "augment.json").write_text("{not json")
    assert_one_line_error(run_cli("augment", ct_run, "--no-sifid", "--out", out, "--manifest",
                                  tmp_path / "m.csv"), "corrupt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["augment.json"]


def test_score_reproduces_the_scores_augment_wrote(ct_run, tmp_path, inception_weights):
    result = augment(request(ct_run, tmp_path, n=3, sifid=True,
                             inception_weights=inception_weights))
    frame = read_manifest(result.manifest).sort_values("image")
    scored = run_cli("score", dicom_file("CT_small.dcm"), *sorted(result.written), "--json",
                     "--inception-weights", inception_weights)
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout)
    rows = report["images"]
    # the same files re-read (1 HU quantisation) against the scan resized to 32 px, as trained
    np.testing.assert_allclose([r["similarity_to_source"] for r in rows],
                               frame["similarity_to_source"], atol=0.005)
    np.testing.assert_allclose([r["patch_swd"] for r in rows], frame["patch_swd"], rtol=0.05)
    np.testing.assert_allclose([r["sifid"] for r in rows], frame["sifid"], rtol=0.05)
    assert report["diversity"] == pytest.approx(result.summary["diversity"], rel=0.02)


def test_a_wrong_weights_file_fails_before_anything_is_written(ct_run, tmp_path):
    import torch

    wrong = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(2)}, wrong)
    with pytest.raises(MedsinganError, match="not torchvision's ImageNet InceptionV3 weights"):
        augment(request(ct_run, tmp_path, sifid=True, inception_weights=wrong))
    assert not (tmp_path / "samples").exists() and not (tmp_path / "manifest.csv").exists()
