"""From the files users have, end to end on the command line: a DICOM series folder (a real MR
volume exported one file per slice) and an NRRD written by SimpleITK are inspected, trained and
augmented; the samples keep their slice's place in the patient, checked with pydicom and
SimpleITK; a folder that is not one series gets one line, exit 2, and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import nifti_file
from tests.io.test_series import _write_series

SLICE = 12
TINY = ("--max-size", "32", "--iters", "2", "--nfc", "8", "--max-nfc", "8", "--quiet")


def _train_and_augment(source: Path, folder: Path) -> list[Path]:
    inspected = run_cli("inspect", source, "--slice", str(SLICE), "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)
    trained = run_cli("train", source, "--slice", str(SLICE), "--out", folder / "run", *TINY)
    assert trained.returncode == 0, trained.stderr
    augmented = run_cli("augment", folder / "run", "--n", "2", "--no-sifid", "--quiet",
                        "--out", folder / "samples", "--manifest", folder / "m.csv")
    assert augmented.returncode == 0, augmented.stderr
    checked = run_cli("manifest", "check", folder / "m.csv")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return sorted((folder / "samples").glob("*_0000*"))


def test_a_series_folder_trains_and_augments_into_its_slices_place(tmp_path):
    series = _write_series(tmp_path / "mr")
    samples = _train_and_augment(series, tmp_path)
    assert [p.suffix for p in samples] == [".dcm", ".dcm"]
    # the slice at SLICE along the normal, found with pydicom alone
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()]
    cosines = np.array(headers[0].ImageOrientationPatient, float)
    normal = np.cross(cosines[:3], cosines[3:])
    source = sorted(headers, key=lambda ds: np.array(ds.ImagePositionPatient, float) @ normal)
    source = source[SLICE]
    for path in samples:
        written = pydicom.dcmread(path)
        assert written.Modality == "MR"
        np.testing.assert_allclose(np.array(written.ImageOrientationPatient, float), cosines,
                                   atol=1e-5)
        shift = (np.array(written.ImagePositionPatient, float)
                 - np.array(source.ImagePositionPatient, float))
        assert abs(shift @ normal) < 1e-3  # in the source slice's plane
        assert written.FrameOfReferenceUID and written.SeriesInstanceUID != \
            source.SeriesInstanceUID


def test_an_nrrd_trains_and_augments_into_an_nrrd_of_its_slice(tmp_path):
    source = tmp_path / "anatomical.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(nifti_file("anatomical.nii"))), str(source))
    samples = _train_and_augment(source, tmp_path)
    assert [p.suffix for p in samples] == [".nrrd", ".nrrd"]
    volume = sitk.ReadImage(str(source))
    normal = np.array(volume.GetDirection()).reshape(3, 3)[:, 2]
    plane = np.array(volume.TransformIndexToPhysicalPoint((0, 0, SLICE))) @ normal
    for path in samples:
        written = sitk.ReadImage(str(path))
        np.testing.assert_allclose(written.GetDirection(), volume.GetDirection(), atol=1e-6)
        assert abs(np.array(written.GetOrigin()) @ normal - plane) < 1e-3
        assert sitk.GetArrayFromImage(written).std() > 0


@pytest.mark.parametrize("command", ["inspect", "train"])
def test_a_folder_of_two_series_is_one_line_and_writes_nothing(tmp_path, command):
    series = _write_series(tmp_path / "mr")
    stray = pydicom.dcmread(next(iter(sorted(series.iterdir()))))
    stray.SeriesInstanceUID = "1.2.826.0.1.3680043.99.2"
    stray.save_as(series / "STRAY")
    extra = ("--out", tmp_path / "run", *TINY) if command == "train" else ()
    result = run_cli(command, series, *extra)
    assert_one_line_error(result, "2 DICOM series")
    assert not (tmp_path / "run").exists()
