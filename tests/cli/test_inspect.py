"""`medsingan inspect` and the CLI's error contract: one line on stderr, exit 2, no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.in_process import run_command
from tests.conftest import dicom_file, nifti_file


def run_cli(*args: str | Path, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``medsingan ARGS`` in the test's process, with what a console would show (see
    :func:`tests.cli.in_process.run_command`)."""
    return run_command(*args, cwd=cwd, env=env)


def run_console(*args: str | Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console entry point in a new interpreter, as a user would."""
    command = [sys.executable, "-c", "from medsingan.cli import main; main()", *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "default", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_inspect_cr_chest_writes_an_upright_preview_with_bone_bright(tmp_path):
    preview = tmp_path / "chest.png"
    result = run_console("inspect", dicom_file("RG1_UNCR.dcm"), "--preview", preview)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing on the console but the report: no warnings
    assert "MONOCHROME1" in result.stdout and "preset      xray" in result.stdout
    with Image.open(preview) as image:
        assert image.mode == "L"
        pixels = np.asarray(image, dtype=float)
    assert pixels.shape == (1955, 1841)
    rows, cols = pixels.shape
    lung = pixels[int(0.25 * rows):int(0.40 * rows), int(0.20 * cols):int(0.35 * cols)].mean()
    spine = pixels[int(0.25 * rows):int(0.40 * rows), int(0.47 * cols):int(0.53 * cols)].mean()
    abdomen = pixels[int(0.80 * rows):int(0.95 * rows)].mean()
    assert spine > lung + 25 and abdomen > lung


def test_inspect_json_report_and_resized_preview(tmp_path):
    preview = tmp_path / "ct.png"
    result = run_cli("inspect", dicom_file("693_UNCR.dcm"), "--json", "--window", "lung",
                     "--preview", preview, "--preview-max-size", "128")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["preset"]["name"] == "ct"
    assert report["mapping"]["low"] == -1350 and report["mapping"]["high"] == 150
    assert report["scan"]["units"] == "HU"
    assert report["pyramid"][0] == [250, 250] and report["pyramid"][-1] == [25, 25]
    assert "dicom_header" not in report["scan"]
    with Image.open(preview) as image:
        assert image.size == (128, 128)


def test_inspect_nifti_slice(tmp_path):
    result = run_cli("inspect", nifti_file("example4d.nii.gz"), "--volume", "0", "--slice", "5",
                     "--modality", "mri")
    assert result.returncode == 0, result.stderr
    # shown as viewers show it (radiological orientation), not in voxel storage order
    assert "96 x 128 px" in result.stdout and "preset      mri" in result.stdout


def _file(name: str, content: bytes):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return make


def _constant_png(folder: Path) -> Path:
    Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(folder / "flat.png")
    return folder / "flat.png"


def _nan_nifti(folder: Path) -> Path:
    import nibabel as nib

    data = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32)
    data[5, 5, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / "nan.nii.gz"))
    return folder / "nan.nii.gz"


def _truncated(folder: Path) -> Path:
    data = dicom_file("CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[:-5000])
    return folder / "cut.dcm"


@pytest.mark.parametrize(("make", "args", "fragments"), [
    (_file("empty.dcm", b""), [], ["empty"]),
    (_file("notes.txt", b"hello"), [], ["unknown file type"]),
    (_file("x.dcm", b"hello"), [], ["not a DICOM file"]),
    (_truncated, [], ["truncated or corrupt"]),
    (lambda d: dicom_file("rtplan.dcm"), [], ["no pixel data"]),
    (lambda d: dicom_file("SC_rgb.dcm"), [], ["colour DICOM"]),
    (lambda d: dicom_file("JPEG-LL.dcm"), [], ["no decoder is installed"]),
    (lambda d: nifti_file("example4d.nii.gz"), [], ["--volume 0..1"]),
    (lambda d: nifti_file("anatomical.nii"), ["--slice", "99"], ["out of range"]),
    (_constant_png, [], ["constant"]),
    (lambda d: nifti_file("standard.nii.gz"), [], ["smaller than the coarsest"]),
    (_nan_nifti, ["--slice", "1"], ["NaN"]),
    (lambda d: d / "missing.dcm", [], ["no such file"]),
    (lambda d: dicom_file("CT_small.dcm"), ["--window", "brain"], ["unknown CT window"]),
    (lambda d: dicom_file("MR_small.dcm"), ["--window", "lung"], ["ct preset only"]),
    (lambda d: dicom_file("CT_small.dcm"), ["--modality", "pet"], ["Invalid value"]),
    (lambda d: dicom_file("CT_small.dcm"), ["--slice-axis", "1"], ["not to a dicom file"]),
])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, make, args, fragments):
    source = make(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    preview = out / "preview.png"
    result = run_cli("inspect", source, *args, "--preview", preview)
    assert_one_line_error(result, *fragments)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("make", "fragments"), [
    (_truncated, ["truncated or corrupt"]),
    (lambda d: dicom_file("JPEG-LL.dcm"), ["no decoder is installed"]),
])
def test_bad_input_on_a_real_console_is_one_line(tmp_path, make, fragments):
    """The same contract in a new interpreter: nothing printed at start-up or by native code
    beside the one line (the tests above run the command in their own process)."""
    out = tmp_path / "out"
    out.mkdir()
    result = run_console("inspect", make(tmp_path), "--preview", out / "preview.png")
    assert_one_line_error(result, *fragments)
    assert list(out.iterdir()) == []


def test_help_documents_every_option():
    result = run_cli("inspect", "--help")
    assert result.returncode == 0
    for option in ("--modality", "--window", "--frame", "--slice", "--slice-axis", "--volume",
                   "--preview", "--preview-max-size", "--json"):
        assert option in result.stdout
    top = run_cli("--help")
    assert top.returncode == 0 and "inspect" in top.stdout


@pytest.mark.parametrize(("command", "default"), [
    ("augment", "[default: data_manifests/<run name>.csv]"),
    ("edit", "[default: the run's --label]"),
    ("train", "[default: 0]"),
])
def test_help_keeps_the_defaults_written_in_help_texts(command, default):
    result = run_cli(command, "--help", env={"COLUMNS": "400"})
    assert result.returncode == 0
    assert default in " ".join(result.stdout.split())


def test_an_option_that_would_be_ignored_is_refused():
    result = run_cli("inspect", dicom_file("CT_small.dcm"), "--preview-max-size", "64")
    assert_one_line_error(result, "--preview")
