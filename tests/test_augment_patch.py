"""`augment --engine patch` and `cohort augment --engine patch`: real scans sampled without
training, written in their own format, with manifest rows that pass `manifest check`."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsingan.augment import AugmentRequest, augment
from medsingan.errors import ConfigError
from medsingan.manifest import ManifestRow, append_rows, check_manifest, read_manifest
from medsingan.pyramid import pyramid_shapes
from tests.conftest import dicom_file


def run_cli(*args) -> tuple[int, str]:
    """The command line in this process (the cohort's workers are processes of their own):
    exit code and output."""
    from typer.testing import CliRunner

    from medsingan.cli import app

    result = CliRunner().invoke(app, [str(arg) for arg in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def chest_png(tmp_path_factory):
    """pydicom-data's CR chest as an 8-bit PNG of 80 x 75 px, in display polarity."""
    dataset = pydicom.dcmread(dicom_file("RG1_UNCR.dcm"))
    pixels = dataset.pixel_array.astype(np.float64)
    pixels = (pixels.max() - pixels) / np.ptp(pixels) * 255  # MONOCHROME1
    path = tmp_path_factory.mktemp("scans") / "chest.png"
    Image.fromarray(pixels.astype(np.uint8)).resize((75, 80), Image.Resampling.BOX).save(path)
    return path


def test_cli_samples_a_dicom_without_a_run(tmp_path):
    out, manifest = tmp_path / "samples", tmp_path / "mr.csv"
    code, output = run_cli("augment", dicom_file("MR_small.dcm"), "--engine", "patch", "--n",
                           "3", "--no-sifid", "--out", out, "--manifest", manifest, "--split",
                           "train", "--label", "normal", "--quiet")
    assert code == 0, output
    assert "copy_score_mean" in output
    files = sorted(out.glob("*.dcm"))
    assert [f.name for f in files] == [f"MR_small_patch_seed0_{i:05d}.dcm" for i in range(3)]
    source = pydicom.dcmread(dicom_file("MR_small.dcm"))
    for path in files:
        written = pydicom.dcmread(path)
        assert written.Modality == "MR" and written.pixel_array.shape == (64, 64)
        assert written.SOPInstanceUID != source.SOPInstanceUID
        assert not np.array_equal(written.pixel_array, source.pixel_array)
    assert check_manifest(manifest) == []
    frame = read_manifest(manifest)
    coarsest = len(pyramid_shapes(64, 64)) - 1
    assert set(frame["method"]) == {"random"} and set(frame["engine"]) == {"patch"}
    assert set(frame["model"]) == {""} and set(frame["start_scale"]) == {coarsest}
    assert set(frame["split"]) == {"train"} and set(frame["label"]) == {"normal"}
    assert frame["subject_id"].str.startswith("src-").all()
    assert frame["copy_score"].between(0, 1).all() and (frame["copy_region_px"] >= 0).all()
    assert frame["sample_index"].tolist() == [0, 1, 2]


def test_a_png_cohort_is_the_same_whatever_the_batch_size(chest_png, tmp_path):
    def run(name, batch_size):
        return augment(AugmentRequest(
            run_dir=None, engine="patch", scan=chest_png, n=3, batch_size=batch_size,
            sifid=False, progress=False, out=tmp_path / name,
            manifest=tmp_path / f"{name}.csv"))

    one, three = run("one", 1), run("three", 3)
    for a, b in zip(one.written, three.written, strict=True):
        with Image.open(a) as first, Image.open(b) as second:
            assert first.mode == "L" and first.size == (75, 80)
            assert np.array_equal(np.asarray(first), np.asarray(second))
    assert check_manifest(one.manifest) == []
    assert len(read_manifest(one.manifest)) == 3


def test_a_finer_start_copies_more_and_the_copies_are_flagged(chest_png, tmp_path):
    def run(start):
        return augment(AugmentRequest(
            run_dir=None, engine="patch", scan=chest_png, n=6, start_scale=start,
            sifid=False, progress=False, out=tmp_path / start,
            manifest=tmp_path / f"{start}.csv", max_copy=0.5))

    coarse, fine = run("N"), run("N-1")
    assert fine.summary["copy_score_mean"] > coarse.summary["copy_score_mean"]
    frame = read_manifest(fine.manifest)
    over = set(frame.loc[frame["copy_score"] > 0.5, "image"])
    assert {entry["image"] for entry in fine.summary["over_max_copy"]} == over
    summary = json.loads((fine.out / "summary.json").read_text())
    assert summary["engine"] == "patch" and summary["max_copy"] == 0.5
    with pytest.raises(ConfigError, match="starts at N or N-1"):
        run("N-2")


def test_bad_engine_input_is_refused_before_any_work(chest_png, tmp_path):
    with pytest.raises(ConfigError, match="--window applies to --engine patch"):
        augment(AugmentRequest(run_dir=tmp_path, n=1, window="lung", sifid=False))
    with pytest.raises(ConfigError, match="--engine patch needs the scan file itself"):
        augment(AugmentRequest(run_dir=None, engine="patch", n=1, sifid=False))
    with pytest.raises(ConfigError, match="--max-copy"):
        augment(AugmentRequest(run_dir=None, engine="patch", scan=chest_png, n=1,
                               max_copy=2.0, sifid=False, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cohort_augment_with_the_patch_engine_needs_no_training(chest_png, tmp_path):
    real = tmp_path / "real.csv"
    # a test scan never gets samples: only the training chest is sampled
    rows = [ManifestRow(image=str(chest_png), label="normal", split="train",
                        subject_id="P1", modality="xray", height=80, width=75),
            ManifestRow(image=str(dicom_file("MR_small.dcm")), label="abnormal",
                        split="test", subject_id="P2", modality="mri", height=64, width=64)]
    append_rows(real, rows)
    merged, runs = tmp_path / "all.csv", tmp_path / "runs"
    code, output = run_cli("cohort", "augment", real, "-o", merged, "--runs", runs, "--engine",
                           "patch", "--per-scan", "2", "--no-sifid", "--quiet")
    assert code == 0, output
    assert check_manifest(merged) == []
    frame = read_manifest(merged)
    synthetic = frame[frame["synthetic"]]
    assert len(synthetic) == 2 and set(synthetic["engine"]) == {"patch"}
    assert set(synthetic["split"]) == {"train"} and set(synthetic["subject_id"]) == {"P1"}
    assert not list(runs.glob("*/config.json"))  # nothing was trained
    assert (tmp_path / "all_summary.png").is_file()
