"""``pipelines.downstream_experiment``: the whole protocol, end to end at ``--quick`` settings,
on an ImageFolder of real scans (pydicom and pydicom-data files, written as PNG and JPEG):
two classes of four images, five patients, one patient with two images in each class.

The run's outputs are checked against the manifests themselves (read again here), not against
the experiment's own account of them: the leak audit is redone row by row.

The command runs in this process (``main()``), with the cohort's tasks on a thread instead of
a spawned process pool (the pool and its recovery are tested in ``tests/test_cohort.py``):
each pool start imports torch again, ~10 s on two busy cores, four times per quick run.
``--iters 4`` keeps the eight models at seconds each; every other setting is ``--quick``'s.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import doctest
import io
import json
import math
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from medsingan import cohort
from medsingan.dataset import FolderOptions, manifest_from_folder
from medsingan.manifest import check_manifest, read_manifest, resolve_image
from pipelines import downstream_experiment
from pipelines.classify import ARMS
from pipelines.downstream_experiment import (
    PNEUMONIA_SUBJECT_REGEX,
    QUICK,
    WHEEL,
    WHEEL_IMAGES,
    ExperimentError,
    ExperimentSettings,
    audit_fold,
    fetch_pneumonia,
    main,
    run_experiment,
    subject_folds,
    t_interval,
)
from tests.pipelines.test_classify import crop, display_pixels, write_raster

RADIOGRAPH, SLICE = "radiograph", "tomographic"
SUBJECT_REGEX = r"^([^_]+)_"  # the file names below start with the patient


def real_scans(folder: Path) -> Path:
    """ImageFolder of 8 real scans, ``<label>/<patient>_<what>.png|jpg``: the CR chest film
    (9RG1) whole and a crop, the CR leg film (11RG3) whole and a crop (JPEG); the CT (1CT1)
    and MR (4MR1) slices and two frames of the multi-frame MR (emri)."""
    for name, subject in (("RG1_UNCR.dcm", "9RG1"), ("RG3_UNCR.dcm", "11RG3")):
        pixels = display_pixels(name)
        write_raster(pixels, folder / RADIOGRAPH / f"{subject}_whole.png", side=64)
        write_raster(crop(pixels, .1, .1, .7), folder / RADIOGRAPH / f"{subject}_crop.jpg",
                     side=64, rgb=subject == "11RG3")
    for name, subject in (("CT_small.dcm", "1CT1"), ("MR_small.dcm", "4MR1")):
        write_raster(display_pixels(name), folder / SLICE / f"{subject}_slice.png", side=64)
    for frame in (3, 7):
        write_raster(display_pixels("emri_small.dcm", frame=frame),
                     folder / SLICE / f"emri_frame{frame}.png", side=64)
    return folder


SUBJECTS = {"9RG1": RADIOGRAPH, "11RG3": RADIOGRAPH, "1CT1": SLICE, "4MR1": SLICE,
            "emri": SLICE}


@contextlib.contextmanager
def on_a_thread(executing: cohort.Executing):
    with futures.ThreadPoolExecutor(1) as pool:
        yield lambda: pool


def run_command(*args: str | Path) -> tuple[int, str, str]:
    """``python -m pipelines.downstream_experiment ARGS`` in this process: (exit code,
    stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with (pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exited):
        patch.setattr(sys, "argv", ["downstream_experiment", *map(str, args)])
        patch.setattr(cohort, "open_executor", on_a_thread)
        main()
    return exited.value.code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("downstream")
    data = real_scans(root / "data")
    out = root / "out"
    code, _, log = run_command("--data", data, "--out", out, "--quick", "--iters", 4,
                               "--subject-regex", SUBJECT_REGEX)
    assert code == 0, log[-3000:]
    return out, json.loads((out / "downstream.json").read_text()), log


# --- the quick run, end to end ------------------------------------------------------------------

def test_quick_run_writes_the_table_and_the_plot(quick: tuple[Path, dict, str]) -> None:
    out, document, _ = quick
    table = (out / "downstream.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(ARMS)
    for arm in ARMS:
        summary = document["summary"][arm]
        for metric in ("macro_auc", "balanced_accuracy"):
            assert 0 <= summary[metric]["mean"] <= 1
            low, high = summary[metric]["ci"]
            assert low <= summary[metric]["mean"] <= high
        assert f"| {arm} | 2 | {summary['macro_auc']['mean']:.3f} [" in table
    assert "--quick" in table and "Wall time" in table
    with Image.open(out / "downstream.png") as figure:
        assert figure.format == "PNG" and figure.size == (1460, 720)
        pixels = np.asarray(figure.convert("RGB"))
    bars, roc = pixels[:, :760], pixels[:, 760:]
    # one colour per arm in both panels: its bars, and its ROC curve's legend line
    for colour in ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167)):
        assert (bars == colour).all(axis=2).sum() > 2000  # two bars, not a legend swatch only
        assert (roc == colour).all(axis=2).sum() >= 32 * 4
    assert (roc == (204, 121, 167)).all(axis=2).sum() > 1500  # the last arm's curve, on top
    assert (pixels.min(axis=2) < 100).mean() > 0.01  # axes, ticks and text in black


def test_progress_lines_per_fold_and_arm(quick: tuple[Path, dict, str]) -> None:
    _, _, log = quick
    assert "8 real images of 5 subjects (radiograph 4, tomographic 4)" in log
    for fold in (1, 2):
        tag = f"[repeat 1 fold {fold}/2]"
        assert f"{tag} SinGAN: " in log and f"{tag} manifest check passed" in log
        for arm in ARMS:
            assert f"{tag} {arm}: macro AUC " in log


def test_every_fold_manifest_passes_check_and_no_test_patient_reaches_training(
        quick: tuple[Path, dict, str]) -> None:
    out, document, _ = quick
    assert len(document["folds"]) == 2
    tested: list[str] = []
    for fold in document["folds"]:
        manifest = out / fold["manifest"]
        assert fold["check"] == "passed" and check_manifest(manifest) == []
        table = read_manifest(manifest)
        real, synthetic = table[~table["synthetic"]], table[table["synthetic"]]
        test_subjects = set(real.loc[real["split"] == "test", "subject_id"])
        train = real[real["split"] == "train"]
        assert test_subjects == set(fold["test_subjects"])
        assert not test_subjects & set(train["subject_id"])
        assert {SUBJECTS[s] for s in test_subjects} == {RADIOGRAPH, SLICE}  # stratified
        # every synthetic row: in training, of a training patient, from a training image
        train_files = {os.path.realpath(resolve_image(manifest, i)) for i in train["image"]}
        assert len(synthetic) == QUICK.per_scan * len(train)
        assert set(synthetic["split"]) == {"train"}
        assert not set(synthetic["subject_id"]) & test_subjects
        assert {os.path.realpath(resolve_image(manifest, source))
                for source in synthetic["source_image"]} == train_files
        tested += sorted(test_subjects)
    assert sorted(tested) == sorted(SUBJECTS)  # each patient tested once in the repeat


def test_each_arm_has_one_paired_evaluation_per_fold(quick: tuple[Path, dict, str]) -> None:
    out, document, _ = quick
    evaluations = document["evaluations"]
    assert len(evaluations) == len(ARMS) * 2
    for arm in ARMS:
        assert document["summary"][arm]["evaluations"] == 2
        assert sorted(e["fold"] for e in evaluations if e["arm"] == arm) == [1, 2]
    for fold in document["folds"]:
        results = {arm: json.loads((out / "evaluations" / fold["name"] / arm /
                                    "results.json").read_text()) for arm in ARMS}
        seeds = {r["seed"] for r in results.values()}
        hyper = {json.dumps(r["hyperparameters"], sort_keys=True) for r in results.values()}
        assert len(seeds) == 1 and len(hyper) == 1  # arms differ in their data only
        subjects = set(fold["test_subjects"])
        for arm, result in results.items():
            assert {p["subject_id"] for p in result["predictions"]} == subjects
            synthetic = result["counts"]["train_synthetic"]
            assert (synthetic > 0) == (arm in ("medsingan", "both")), arm
            assert result["counts"]["train_real"] == fold["train_images"]
    trained = {run.name for run in (out / "runs").iterdir()}
    assert len(trained) == 8  # one model per image, each trained in the fold it is not tested


def test_the_same_command_resumes_and_redoes_what_is_missing_identically(
        quick: tuple[Path, dict, str]) -> None:
    """One model and the two evaluations using its samples are removed: the same command
    trains, samples and evaluates exactly those again, to the same numbers, and reuses the
    rest."""
    out, document, _ = quick
    fold = document["folds"][0]
    source = read_manifest(out / fold["split_manifest"]).query("split == 'train'")["image"]
    run = next(path for path in (out / "runs").iterdir()
               if path.name.startswith(Path(source.iloc[0]).stem + "-"))
    shutil.rmtree(run)
    for arm in ("medsingan", "both"):
        shutil.rmtree(out / "evaluations" / fold["name"] / arm)
    code, stdout, log = run_command("--data", document["data"]["folder"], "--out", out,
                                    "--quick", "--iters", 4, "--subject-regex", SUBJECT_REGEX)
    assert code == 0, log[-3000:]
    assert "[repeat 1 fold 1/2] SinGAN: 1 model(s) trained, " in log
    assert "[repeat 1 fold 2/2] SinGAN: 0 model(s) trained, " in log
    redone = re.findall(r"\] (\w+): macro AUC .* synthetic, \d+ s\)", log)
    assert redone == ["medsingan", "both"]
    assert log.count(" synthetic, reused)") == 2 * len(ARMS) - 2
    again = json.loads((out / "downstream.json").read_text())
    assert again["summary"] == document["summary"]
    assert again["pooled_auc"] == document["pooled_auc"]
    for first, second in zip(document["evaluations"], again["evaluations"], strict=True):
        assert {k: v for k, v in first.items() if k != "wall_time_s"} == {
            k: v for k, v in second.items() if k != "wall_time_s"}
    assert stdout.startswith("| arm | evaluations | macro AUC")


# --- the parts ----------------------------------------------------------------------------------

def test_subject_regex_groups_both_pneumonia_file_names(tmp_path: Path) -> None:
    pixels = display_pixels("CT_small.dcm")
    names = {"normal": ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1430-0001.jpeg"),
             "pneumonia": ("person1946_bacteria_4874.jpeg", "person1946_bacteria_4875.jpeg",
                           "person1947_bacteria_4876.jpeg")}
    for label, files in names.items():
        for k, name in enumerate(files):
            write_raster(np.roll(pixels, 5 * k, axis=0), tmp_path / "data" / label / name,
                         side=48, rgb=True)
    manifest = tmp_path / "real.csv"
    manifest_from_folder(tmp_path / "data", manifest,
                         FolderOptions(subject_regex=PNEUMONIA_SUBJECT_REGEX))
    table = read_manifest(manifest)
    subject = dict(zip(table["image"].map(lambda p: Path(p).name), table["subject_id"],
                       strict=True))
    assert subject == {"NORMAL2-IM-1427-0001.jpeg": "NORMAL2-IM-1427",
                       "NORMAL2-IM-1430-0001.jpeg": "NORMAL2-IM-1430",
                       "person1946_bacteria_4874.jpeg": "person1946",
                       "person1946_bacteria_4875.jpeg": "person1946",
                       "person1947_bacteria_4876.jpeg": "person1947"}


def test_fetch_extracts_the_validation_films_of_a_cached_wheel_without_pip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in wheel (the package's layout, real scans as its JPEGs) in the cache: no
    download is attempted, only the validation JPEGs come out, labelled by name."""
    films = {"NORMAL2-IM-1427-0001.jpeg": "RG1_UNCR.dcm",
             "person1946_bacteria_4874.jpeg": "RG3_UNCR.dcm",
             "person1946_bacteria_4875.jpeg": "RG1_UNCR.dcm"}
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / WHEEL, "w") as wheel:
        for name, source in films.items():
            path = write_raster(display_pixels(source), tmp_path / name, side=48)
            wheel.write(path, WHEEL_IMAGES + name)
        wheel.writestr("pneumonia_model_package/trained_models/model.pkl", b"not extracted")
        wheel.writestr(WHEEL_IMAGES + ".DS_Store", b"")

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(downstream_experiment.subprocess, "run", no_download)
    folder = fetch_pneumonia(cache)
    listed = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert listed == ["normal/NORMAL2-IM-1427-0001.jpeg",
                      "pneumonia/person1946_bacteria_4874.jpeg",
                      "pneumonia/person1946_bacteria_4875.jpeg"]
    assert fetch_pneumonia(cache) == folder  # extracted once


def test_folds_are_stratified_patient_partitions_seeded_per_repeat() -> None:
    subjects = [f"n{k}" for k in range(8)] + [f"p{k}" for k in range(7)]
    table = pd.DataFrame({"subject_id": subjects + ["p0"],  # p0 has two images
                          "label": ["normal"] * 8 + ["pneumonia"] * 8})
    folds = subject_folds(table, folds=4, repeats=5, seed=0)
    assert len(folds) == 20
    partitions = []
    for repeat in range(1, 6):
        tests = [set(f.test_subjects) for f in folds if f.repeat == repeat]
        assert sorted(s for test in tests for s in test) == sorted(subjects)  # once each
        for test in tests:
            assert sum(s.startswith("n") for s in test) == 2
            assert sum(s.startswith("p") for s in test) in (1, 2)
        partitions.append(sorted(map(sorted, tests)))
    assert len({json.dumps(p) for p in partitions}) == 5  # a new partition per repeat
    assert subject_folds(table, folds=4, repeats=5, seed=0) == folds  # seeded
    with pytest.raises(ExperimentError, match="needs 8 subjects per class"):
        subject_folds(table, folds=8, repeats=1, seed=0)


def test_the_docstring_examples_hold() -> None:
    # pytest collects doctests from medsingan/ only (pyproject's testpaths)
    failed, tried = doctest.testmod(downstream_experiment)
    assert tried >= 3 and failed == 0


def test_t_interval_matches_scipy() -> None:
    values = [0.61, 0.75, 0.5, 0.92, 0.66, 0.8]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    result = t_interval(values)
    assert result["mean"] == pytest.approx(np.mean(values))
    assert result["ci"] == pytest.approx([low, high])
    assert t_interval([0.7])["ci"] is None and t_interval([])["mean"] is None
    assert t_interval([0.5, math.nan, 0.7])["n"] == 2


def test_audit_refuses_a_synthetic_image_of_a_test_patient_in_training(
        quick: tuple[Path, dict, str], tmp_path: Path) -> None:
    out, document, _ = quick
    record = document["folds"][0]
    fold = downstream_experiment.Fold(1, 1, 2, tuple(record["test_subjects"]))
    manifest = out / record["manifest"]
    audit_fold(manifest, fold)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    # one synthetic row relabelled as a test patient's (it keeps its training split)
    index = int(np.flatnonzero(table["synthetic"] == "true")[0])
    table.loc[index, "subject_id"] = record["test_subjects"][0]
    leaky = manifest.with_name("leaky.csv")
    table.to_csv(leaky, index=False)
    with pytest.raises(ExperimentError, match="manifest check"):
        audit_fold(leaky, fold)


def test_other_settings_over_an_experiment_are_refused(
        quick: tuple[Path, dict, str]) -> None:
    out, document, _ = quick
    data = Path(document["data"]["folder"])
    with pytest.raises(ExperimentError, match=r"other settings \(settings\)"):
        run_experiment(data, out, ExperimentSettings(**{**document["settings"], "iters": 7}),
                       subject_regex=SUBJECT_REGEX)


def test_the_command_wants_exactly_one_data_source(tmp_path: Path) -> None:
    code, stdout, stderr = run_command("--out", tmp_path / "out", "--quick")
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == ["error: give exactly one of --data DIR and --fetch"]
    assert not (tmp_path / "out").exists()
