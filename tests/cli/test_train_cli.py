"""`medsingan train`, `info` and `manifest` from the command line, on a real CT slice."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import dicom_file

TINY = ("--max-size", "32", "--iters", "4", "--quiet")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "ct"
    result = run_cli("train", dicom_file("CT_small.dcm"), "--out", run_dir, *TINY)
    assert result.returncode == 0, result.stderr
    return run_dir


def test_train_writes_a_self_describing_run(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "weights.safetensors", "history.csv", "curves.png"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle"))]
    config = json.loads((tiny_run / "config.json").read_text())
    extra = config["extra"]
    assert extra["modality_preset"] == "ct"
    assert extra["source"]["sha256"] and extra["source"]["units"] == "HU"
    assert "dicom_header" not in extra["source"]  # no identifying header in the run
    assert extra["intensity_mapping"]["method"] == "window"


def test_info_lists_every_scale(tiny_run):
    result = run_cli("info", tiny_run, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["complete"] is True
    shapes = [(s["height"], s["width"]) for s in summary["scales"]]
    assert shapes[0] == (32, 32) and shapes[-1] == (25, 25)
    assert all(s["iters"] == 4 for s in summary["scales"])
    text = run_cli("info", tiny_run)
    assert text.returncode == 0 and "noise amp" in text.stdout


def test_the_quick_preset_trains_a_real_scan_and_is_recorded(tmp_path, monkeypatch, capsys):
    """``--preset quick``: fast's networks and pyramid with 500 iterations per scale, and
    ``balanced``'s 1000 with the penalty on every step (README, configs/training.yaml); an
    explicit ``--iters`` still wins."""
    import dataclasses

    import medsingan.runs
    from medsingan.train import load_run
    from tests.cli.in_process import run_in_process

    real_train, given = medsingan.runs.train, {}

    def shortened(image, config, run_dir, **kwargs):  # what the CLI asked for, then 2 iters
        given[run_dir.name] = config
        return real_train(image, dataclasses.replace(config, iters=2), run_dir, **kwargs)

    monkeypatch.setattr(medsingan.runs, "train", shortened)
    for preset in ("quick", "fast", "balanced", "concurrent", "paper"):
        code, _, err = run_in_process(monkeypatch, capsys, "train", dicom_file("CT_small.dcm"),
                                      "--out", tmp_path / "asked" / preset, "--preset", preset,
                                      "--max-size", "32", "--quiet")
        assert code == 0, err
    assert {name: c.iters for name, c in given.items()} == \
        {"quick": 500, "fast": 2000, "balanced": 1000, "concurrent": 500, "paper": 2000}
    assert {name for name, c in given.items() if c.norm == "instance"} == \
        {"quick", "fast", "balanced", "concurrent"}
    assert {name: c.gp_every for name, c in given.items()} == \
        {"quick": 4, "fast": 4, "balanced": 1, "concurrent": 1, "paper": 1}
    assert {name: (c.max_nfc, c.scale_factor) for name, c in given.items()} == \
        {"quick": (64, 0.7), "fast": (64, 0.7), "balanced": (64, 0.7),
         "concurrent": (64, 0.7), "paper": (128, 0.75)}
    assert {name: (c.concurrent, c.alpha) for name, c in given.items()} == \
        {"quick": (1, 10), "fast": (1, 10), "balanced": (1, 10), "concurrent": (2, 20),
         "paper": (1, 10)}
    monkeypatch.undo()
    run_dir = tmp_path / "quick"
    result = run_cli("train", dicom_file("CT_small.dcm"), "--out", run_dir, "--preset", "quick",
                     *TINY)
    assert result.returncode == 0, result.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["extra"]["speed_preset"] == "quick"
    train = config["train"]
    assert (train["iters"], train["max_nfc"], train["scale_factor"], train["norm"],
            train["gp_every"]) == (4, 64, 0.7, "instance", 4)
    pyramid = load_run(run_dir)
    assert pyramid.is_complete and tuple(pyramid.reals[0].shape[-2:]) == (32, 32)
    info = run_cli("info", run_dir)
    assert info.returncode == 0 and "quick" in info.stdout


def test_a_finished_run_is_not_overwritten_by_accident(tiny_run):
    before = (tiny_run / "weights.safetensors").read_bytes()
    result = run_cli("train", dicom_file("CT_small.dcm"), "--out", tiny_run, *TINY)
    assert_one_line_error(result, "--overwrite")
    assert (tiny_run / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize(("args", "fragment"), [
    (("--min-size", "40", "--max-size", "30"), "max_size"),
    (("--scale-factor", "1.5"), "scale_factor"),
    (("--iters", "0"), "iters"),
    (("--nfc", "64", "--max-nfc", "32"), "max_nfc"),
    (("--preset", "turbo"), "--preset"),
    (("--device", "mps"), "--device"),
    (("--seed", "-1"), "--seed"),
    (("--resume",), "no run to resume"),
    (("--resume", "--overwrite"), "choose one"),
])
def test_bad_hyper_parameters(tmp_path, args, fragment):
    result = run_cli("train", dicom_file("CT_small.dcm"), "--out", tmp_path / "run", "--quiet",
                     *args)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_bad_run_directories(tmp_path, tiny_run):
    assert_one_line_error(run_cli("info", tmp_path / "nothing"), "does not exist")
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(run_cli("info", tmp_path / "a-file"), "is a file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("info", tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "history.csv"):
        (broken / name).write_bytes((tiny_run / name).read_bytes())
    (broken / "weights.safetensors").write_bytes(b"\x00" * 100)
    assert_one_line_error(run_cli("info", broken))


def test_manifest_check_exit_codes(tmp_path):
    from PIL import Image

    from medsingan.manifest import ManifestRow, append_rows

    for name in ("real.png", "fake.png"):
        Image.new("L", (8, 8)).save(tmp_path / name)
    manifest = tmp_path / "m.csv"
    append_rows(manifest, [
        ManifestRow(image="real.png", label="normal", split="test", subject_id="P1",
                    modality="ct", height=8, width=8),
        ManifestRow(image="fake.png", label="normal", split="train", synthetic=True,
                    source_image="real.png", subject_id="P1", modality="ct", method="random",
                    height=8, width=8),
    ])
    result = run_cli("manifest", "check", manifest)
    assert result.returncode == 1 and "leak" in result.stdout
    assert_one_line_error(run_cli("manifest", "check", tmp_path / "none.csv"), "no such")


def test_burned_in_text_is_warned_about_in_train_and_augment(tmp_path):
    import pydicom

    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    ds.save_as(tmp_path / "annotated.dcm")
    run_dir = tmp_path / "run"
    trained = run_cli("train", tmp_path / "annotated.dcm", "--out", run_dir, *TINY)
    assert trained.returncode == 0, trained.stderr
    warning = [line for line in trained.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "Burned In Annotation YES" in warning[0]
    augmented = run_cli("augment", run_dir, "--n", "2", "--no-sifid", "--quiet",
                        "--out", tmp_path / "samples", "--manifest", tmp_path / "m.csv")
    assert augmented.returncode == 0, augmented.stderr
    assert "warning: the source says Burned In Annotation YES" in augmented.stderr
    summary = json.loads((tmp_path / "samples" / "summary.json").read_text())
    assert any("Burned In Annotation" in w for w in summary["warnings"])
    for sample in (tmp_path / "samples").glob("*.dcm"):
        header = pydicom.dcmread(sample, stop_before_pixels=True)
        assert header.BurnedInAnnotation == "YES" and header.PatientIdentityRemoved == "NO"


def test_augment_without_a_run_directory_takes_the_latest_run(tiny_run, tmp_path):
    import shutil

    empty = run_cli("augment", "--n", "2", "--no-sifid", cwd=tmp_path)
    assert_one_line_error(empty, "no complete run under runs/")
    shutil.copytree(tiny_run, tmp_path / "runs" / "older")
    shutil.copytree(tiny_run, tmp_path / "runs" / "ct")
    (tmp_path / "runs" / "half").mkdir()  # not a run: ignored
    result = run_cli("augment", "--n", "2", "--start-scale", "N-1", "--no-sifid", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "using runs/ct (the most recently trained run" in result.stderr
    assert len(list((tmp_path / "runs" / "ct" / "samples").glob("*.dcm"))) == 2
