"""The manifest: one CSV row per image, readable unchanged by pandas and MONAI."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsingan.errors import MedsinganError
from medsingan.manifest import (
    COLUMNS,
    ManifestError,
    ManifestRow,
    append_rows,
    check_manifest,
    merge_manifests,
    read_manifest,
    relative_to_manifest,
    resolve_image,
)

CREATED = "2024-05-01T12:00:00Z"


def write_png(path: Path, height: int, width: int, value: int = 0) -> Path:
    """A small grayscale PNG standing in for a scan (no medical images are committed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(height * width).reshape(height, width) + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def real(image: Path, split: str, subject: str, label: str = "nodule") -> ManifestRow:
    return ManifestRow(image=str(image), label=label, split=split, subject_id=subject,
                       modality="CT", height=24, width=40, created_at=CREATED)


def synthetic(image: Path, source: Path, split: str, subject: str, seed: int = 0,
              label: str = "nodule") -> ManifestRow:
    return ManifestRow(image=str(image), label=label, split=split, synthetic=True,
                       source_image=str(source), subject_id=subject, modality="CT",
                       method="random", model="runs/p1", start_scale=3, seed=seed, sifid=0.125,
                       sifid_variant="pytorch-fid-pt_inception-2015-12-05/block64/no-resize",
                       diversity=0.41, similarity_to_source=0.8, height=24, width=40,
                       created_at=CREATED, extra={"patch_swd": 0.03})


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A clean manifest: two real scans (train, test), each with two synthetic samples."""
    manifest = tmp_path / "manifests" / "cohort.csv"
    rows = []
    for split, subject in (("train", "P1"), ("test", "P2")):
        source = write_png(tmp_path / "scans" / f"{subject}.png", 24, 40)
        rows.append(real(source, split, subject))
        for seed in range(2):
            sample = write_png(tmp_path / "samples" / f"{subject}_{seed}.png", 24, 40, seed + 1)
            rows.append(synthetic(sample, source, split, subject, seed))
    append_rows(manifest, rows)
    return manifest


def raw_rows(manifest: Path) -> list[list[str]]:
    with open(manifest, newline="") as handle:
        return list(csv.reader(handle))


# --- writing ------------------------------------------------------------------------------------

def test_columns_in_schema_order_with_extras_after(cohort: Path) -> None:
    header = raw_rows(cohort)[0]
    assert tuple(header) == (*COLUMNS, "patch_swd")
    assert COLUMNS[:4] == ("image", "label", "split", "synthetic")
    assert COLUMNS[-1] == "created_at" and len(COLUMNS) == 18


def test_paths_relative_to_the_manifest_folder_with_posix_separators(cohort: Path) -> None:
    header, first_sample = raw_rows(cohort)[0], raw_rows(cohort)[2]
    row = dict(zip(header, first_sample, strict=True))
    assert row["image"] == "../samples/P1_0.png"
    assert row["source_image"] == "../scans/P1.png"
    assert resolve_image(cohort, row["image"]).resolve() == (
        cohort.parent.parent / "samples" / "P1_0.png").resolve()
    assert relative_to_manifest(cohort.parent / "a" / "b.png", cohort) == "a/b.png"


def test_values_written_as_documented(cohort: Path) -> None:
    header, real_row, sample_row = raw_rows(cohort)[:3]
    real_values = dict(zip(header, real_row, strict=True))
    sample_values = dict(zip(header, sample_row, strict=True))
    assert real_values["synthetic"] == "false" and sample_values["synthetic"] == "true"
    assert real_values["method"] == "real"
    assert real_values["seed"] == real_values["sifid"] == real_values["source_image"] == ""
    assert real_values["patch_swd"] == ""  # an extra column the real row does not have
    assert sample_values["sifid"] == "0.125" and sample_values["seed"] == "0"
    assert sample_values["created_at"] == CREATED


def test_default_created_at_is_iso_utc(tmp_path: Path) -> None:
    stamp = ManifestRow(image="a.png").created_at
    assert stamp.endswith("Z")
    assert pd.Timestamp(stamp).tz is not None


def test_round_trip_through_pandas_read_csv(cohort: Path) -> None:
    text = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert text.values.tolist() == raw_rows(cohort)[1:]
    plain = pd.read_csv(cohort)
    assert list(plain.columns) == [*COLUMNS, "patch_swd"]
    assert plain["synthetic"].dtype == bool
    assert plain["synthetic"].tolist() == [False, True, True] * 2
    assert plain["sifid"].iloc[1] == 0.125 and plain["height"].tolist() == [24] * 6


def test_append_adds_rows_and_keeps_the_old_ones(cohort: Path, tmp_path: Path) -> None:
    before = raw_rows(cohort)
    sample = write_png(tmp_path / "samples" / "P1_9.png", 24, 40)
    assert append_rows(cohort, [synthetic(sample, tmp_path / "scans" / "P1.png", "train", "P1",
                                          seed=9)]) == 1
    after = raw_rows(cohort)
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert after[-1][0] == "../samples/P1_9.png"


def test_append_takes_the_union_of_extra_columns(cohort: Path, tmp_path: Path) -> None:
    row = real(write_png(tmp_path / "scans" / "P3.png", 24, 40), "val", "P3")
    row.extra = {"site": "Leeds"}
    append_rows(cohort, [row])
    table = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert list(table.columns) == [*COLUMNS, "patch_swd", "site"]
    assert table["site"].tolist() == [""] * 6 + ["Leeds"]
    assert table["patch_swd"].iloc[1] == "0.03"


def test_append_refuses_a_listed_image_unless_told(cohort: Path, tmp_path: Path) -> None:
    source = tmp_path / "scans" / "P1.png"
    again = synthetic(tmp_path / "samples" / "P1_0.png", source, "train", "P1", seed=7)
    with pytest.raises(ManifestError, match="already listed"):
        append_rows(cohort, [again])
    assert append_rows(cohort, [again], on_existing="skip") == 0
    assert read_manifest(cohort)["seed"].tolist()[1] == 0
    assert append_rows(cohort, [again], on_existing="replace") == 1
    table = read_manifest(cohort)
    assert len(table) == 6 and table["seed"].tolist()[1] == 7


def test_append_is_atomic_a_failed_write_leaves_the_old_file(
        cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = cohort.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    sample = write_png(tmp_path / "samples" / "P1_5.png", 24, 40)
    with pytest.raises(ManifestError, match="No space left"):
        append_rows(cohort, [synthetic(sample, tmp_path / "scans" / "P1.png", "train", "P1", 5)])
    assert cohort.read_bytes() == before
    # no temporary file left behind (the lock file of appends stays, by design)
    assert sorted(os.listdir(cohort.parent)) == [".cohort.csv.lock", "cohort.csv"]


def test_append_refuses_a_file_with_another_header(tmp_path: Path) -> None:
    manifest = tmp_path / "other.csv"
    manifest.write_text("image,split,label\na.png,train,1\n")
    with pytest.raises(ManifestError, match="missing required column"):
        append_rows(manifest, [ManifestRow(image="b.png")])
    assert manifest.read_text() == "image,split,label\na.png,train,1\n"


def test_rows_are_validated_when_made() -> None:
    with pytest.raises(ManifestError, match="method 'gan'"):
        ManifestRow(image="a.png", method="gan")
    with pytest.raises(ManifestError, match="contradicts"):
        ManifestRow(image="a.png", synthetic=True)  # method left at "real"
    with pytest.raises(ManifestError, match="clash"):
        ManifestRow(image="a.png", extra={"split": "x"})
    assert issubclass(ManifestError, MedsinganError)


# --- reading ------------------------------------------------------------------------------------

def test_read_manifest_types_the_columns(cohort: Path) -> None:
    table = read_manifest(cohort)
    assert list(table.columns) == [*COLUMNS, "patch_swd"]
    assert table["synthetic"].dtype == bool
    assert str(table["seed"].dtype) == "Int64" and table["seed"].isna().tolist()[:2] == [True,
                                                                                        False]
    assert table["height"].tolist() == [24] * 6
    assert table["created_at"].iloc[0] == pd.Timestamp(CREATED)
    assert table["patch_swd"].iloc[1] == pytest.approx(0.03)
    assert table["source_image"].iloc[0] == ""


@pytest.mark.parametrize(("header", "message"), [
    (list(COLUMNS[:-1]), "missing required column.*created_at"),
    ([COLUMNS[1], COLUMNS[0], *COLUMNS[2:]], "column 1 is 'label', expected 'image'"),
])
def test_read_manifest_rejects_a_bad_header_in_one_line(
        tmp_path: Path, header: list[str], message: str) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text(",".join(header) + "\n")
    with pytest.raises(ManifestError, match=message) as caught:
        read_manifest(manifest)
    assert "\n" not in str(caught.value)


def test_read_manifest_rejects_a_bad_value(cohort: Path) -> None:
    cohort.write_text(cohort.read_text().replace(",24,40,", ",tall,40,", 1))
    with pytest.raises(ManifestError, match="row 1: height must be a whole number"):
        read_manifest(cohort)


# --- merging ------------------------------------------------------------------------------------

def test_merge_rewrites_paths_and_drops_duplicates(cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "deep" / "more.csv"
    source = tmp_path / "scans" / "P1.png"
    extra = write_png(tmp_path / "samples" / "P1_2.png", 24, 40)
    append_rows(other, [real(source, "train", "P1"),  # the same row as in cohort
                        synthetic(extra, source, "train", "P1", seed=2)])
    output = tmp_path / "merged" / "all.csv"
    assert merge_manifests([cohort, other], output) == 7
    table = read_manifest(output)
    assert table["image"].tolist() == ["../scans/P1.png", "../samples/P1_0.png",
                                       "../samples/P1_1.png", "../scans/P2.png",
                                       "../samples/P2_0.png", "../samples/P2_1.png",
                                       "../samples/P1_2.png"]
    assert table["source_image"].iloc[-1] == "../scans/P1.png"
    assert check_manifest(output) == []


def test_merge_refuses_conflicting_split_and_writes_nothing(cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    append_rows(other, [real(tmp_path / "scans" / "P2.png", "train", "P2")])  # test in cohort
    output = tmp_path / "merged.csv"
    with pytest.raises(ManifestError, match="split 'test' in .*cohort.csv but 'train'"):
        merge_manifests([cohort, other], output)
    assert not output.exists()


def test_merge_refuses_conflicting_label(cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    append_rows(other, [real(tmp_path / "scans" / "P1.png", "train", "P1", label="normal")])
    with pytest.raises(ManifestError, match="label"):
        merge_manifests([cohort, other], tmp_path / "merged.csv")


# --- checking -----------------------------------------------------------------------------------

def test_a_clean_manifest_has_no_problems(cohort: Path) -> None:
    assert check_manifest(cohort) == []


def test_a_planted_leak_is_caught(cohort: Path, tmp_path: Path) -> None:
    """A synthetic image of test-set patient P2 put in train: the leak the manifest exists for."""
    source = tmp_path / "scans" / "P2.png"
    leaked = write_png(tmp_path / "samples" / "P2_leak.png", 24, 40)
    append_rows(cohort, [synthetic(leaked, source, "train", "P2", seed=5)])
    problems = check_manifest(cohort)
    assert {(p.kind, p.row) for p in problems} == {("leak", 7)}
    messages = " ".join(p.message for p in problems)
    assert "source ../scans/P2.png is in 'test'" in messages
    assert "subject 'P2' is in 'test' (row 4)" in messages


def test_a_leak_is_caught_by_subject_alone(cohort: Path, tmp_path: Path) -> None:
    """Another scan of test patient P2, not itself listed, must not feed training either."""
    unlisted = write_png(tmp_path / "scans" / "P2_followup.png", 24, 40)
    sample = write_png(tmp_path / "samples" / "P2_f.png", 24, 40)
    append_rows(cohort, [synthetic(sample, unlisted, "train", "P2")])
    assert [(p.kind, p.row) for p in check_manifest(cohort)] == [("leak", 7)]


def test_siblings_of_an_unlisted_source_in_two_splits_are_caught(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    source = tmp_path / "unlisted.png"
    rows = [synthetic(write_png(tmp_path / f"s{i}.png", 24, 40), source, split, "")
            for i, split in enumerate(("train", "test"))]
    append_rows(manifest, rows)
    assert [(p.kind, p.row) for p in check_manifest(manifest)] == [("leak", 1), ("leak", 2)]


def test_subject_in_several_splits_and_broken_inheritance(cohort: Path, tmp_path: Path) -> None:
    append_rows(cohort, [real(write_png(tmp_path / "scans" / "P1b.png", 24, 40), "val", "P1"),
                         synthetic(write_png(tmp_path / "samples" / "x.png", 24, 40),
                                   tmp_path / "scans" / "P2.png", "test", "P9")])
    kinds = {(p.kind, p.row) for p in check_manifest(cohort)}
    assert ("subject_in_several_splits", 7) in kinds
    assert ("inheritance", 8) in kinds


def test_missing_files_and_duplicates(cohort: Path, tmp_path: Path) -> None:
    (tmp_path / "samples" / "P2_1.png").unlink()
    lines = cohort.read_text().splitlines()
    changed = lines[2].replace("0.125", "0.5")
    cohort.write_text("\n".join([*lines, lines[2], changed]) + "\n")
    problems = check_manifest(cohort)
    assert [(p.kind, p.row) for p in problems] == [
        ("missing_file", 6), ("duplicate_row", 7), ("duplicate_image", 8)]
    assert "../samples/P2_1.png not found" in problems[0].message
    assert str(problems[1]) == "row 7: duplicate_row: same as row 2"


def test_schema_problems_are_all_reported(cohort: Path) -> None:
    lines = cohort.read_text().splitlines()
    header = lines[0].split(",")
    fields = next(csv.reader([lines[2]]))
    fields[header.index("method")] = "gan"
    fields[header.index("synthetic")] = "yes"
    fields[header.index("width")] = "wide"
    fields[header.index("created_at")] = "2024-05-01 12:00"
    cohort.write_text("\n".join([lines[0], lines[1], ",".join(fields), "a.png,short"]) + "\n")
    problems = check_manifest(cohort)
    assert all(p.kind == "schema" for p in problems)
    text = [str(p) for p in problems]
    assert any("row 2: schema: method must be one of" in t for t in text)
    assert any("synthetic must be true or false, not 'yes'" in t for t in text)
    assert any("width must be a whole number, not 'wide'" in t for t in text)
    assert any("created_at must be in UTC" in t for t in text)
    assert any(t.startswith("row 3: schema: 2 fields") for t in text)


def test_a_bad_header_is_one_problem(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nx.png,1\n")
    assert [(p.kind, p.row) for p in check_manifest(manifest)] == [("schema", None)]


def test_a_missing_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest"):
        check_manifest(tmp_path / "absent.csv")


# --- loading with MONAI -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")
def test_loads_with_monai_csv_dataset_and_load_imaged(cohort: Path) -> None:
    from monai.data import CSVDataset
    from monai.transforms import Compose, EnsureChannelFirstd, Lambdad, LoadImaged

    folder = cohort.parent
    dataset = CSVDataset(src=str(cohort), transform=Compose([
        Lambdad(keys="image", func=lambda relative: str(folder / relative)),
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
    ]))
    assert len(dataset) == 6
    for item in dataset:
        # MONAI's PIL reader puts the x axis first: (C, width, height).
        assert tuple(item["image"].shape) == (1, item["width"], item["height"]) == (1, 40, 24)
        assert Path(item["image"].meta["filename_or_obj"]).is_file()
    assert [item["split"] for item in dataset] == ["train"] * 3 + ["test"] * 3
    pixels = np.asarray(dataset[2]["image"][0]).T  # back to (height, width)
    expected = np.asarray(Image.open(folder.parent / "samples" / "P1_1.png"))
    np.testing.assert_array_equal(pixels, expected)
    # as data_manifests/README.md loads it: every value as written
    as_text = CSVDataset(src=str(cohort), kwargs_read_csv={"dtype": str,
                                                           "keep_default_na": False})
    assert as_text[0]["seed"] == "" and as_text[1]["seed"] == "0" and as_text[1]["width"] == "40"


def _rows_with(manifest: Path, column: str, value: str) -> None:
    """Set ``column`` of the last row to ``value`` as raw CSV text."""
    rows = raw_rows(manifest)
    rows[-1][rows[0].index(column)] = value
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_a_leak_is_caught_whatever_the_spelling_of_the_source_path(
        cohort: Path, tmp_path: Path) -> None:
    """The source listed relative, named absolute or through a symlinked folder: one file."""
    link = tmp_path / "linked-scans"
    link.symlink_to(tmp_path / "scans")
    for number, source in enumerate((tmp_path / "scans" / "P2.png", link / "P2.png")):
        leaked = write_png(tmp_path / "samples" / f"leak{number}.png", 24, 40)
        append_rows(cohort, [synthetic(leaked, source, "train", "anonymous")])
        _rows_with(cohort, "source_image", str(source))  # as a user might write it
    leaks = [p.row for p in check_manifest(cohort) if p.kind == "leak"]
    assert leaks == [7, 8]


def test_paths_through_a_symlinked_folder_still_name_the_file(tmp_path: Path) -> None:
    """A project reached through a link (HPC home links): the manifest named through the
    link, the sample by its resolved location, as augment gives it."""
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "short").symlink_to(deep)
    sample = write_png(deep / "samples" / "s.png", 24, 40)
    manifest = tmp_path / "short" / "manifests" / "m.csv"
    manifest.parent.mkdir()
    assert resolve_image(manifest, relative_to_manifest(sample, manifest)).is_file()


def test_awkward_text_and_huge_seeds_round_trip(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    source = write_png(tmp_path / "src.png", 24, 40)
    rows = [real(source, "train", "007", label="a\rb, \"c\""),
            synthetic(write_png(tmp_path / "s.png", 24, 40), source, "train", "007",
                      seed=2**63 - 1)]
    append_rows(manifest, rows)
    table = read_manifest(manifest)
    assert list(table["label"]) == ["a\rb, \"c\"", "nodule"]
    assert table["seed"].iloc[1] == 2**63 - 1 and list(table["subject_id"]) == ["007", "007"]
    assert len(pd.read_csv(manifest, dtype=str, keep_default_na=False)) == 2
    assert check_manifest(manifest) == []


def test_merge_refuses_invalid_values_and_leaks(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.csv"
    other = tmp_path / "other" / "m.csv"
    leaked = write_png(tmp_path / "samples" / "P2_leak.png", 24, 40)
    append_rows(other, [synthetic(leaked, tmp_path / "scans" / "P2.png", "train", "P2")])
    with pytest.raises(ManifestError, match="leak"):
        merge_manifests([cohort, other], out)
    assert not out.exists()
    assert merge_manifests([cohort, other], out, allow_leaks=True) == 7
    _rows_with(other, "seed", "abc")
    with pytest.raises(ManifestError, match="seed"):
        merge_manifests([cohort, other], tmp_path / "merged2.csv")
    assert not (tmp_path / "merged2.csv").exists()


def test_merge_rewrites_the_model_path_and_refuses_real_versus_synthetic(
        cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "deeper" / "merged.csv"
    merge_manifests([cohort], out)
    (model,) = set(read_manifest(out)["model"]) - {""}
    assert resolve_image(out, model).resolve() == resolve_image(cohort, "runs/p1").resolve()
    twin = tmp_path / "twin" / "m.csv"
    append_rows(twin, [real(tmp_path / "samples" / "P1_0.png", "train", "P1")])
    with pytest.raises(ManifestError, match="synthetic"):
        merge_manifests([cohort, twin], tmp_path / "m3.csv")


def test_copy_score_columns_are_checked_where_present(tmp_path: Path) -> None:
    source = write_png(tmp_path / "scans" / "P1.png", 24, 40)
    rows = [real(source, "train", "P1")]
    for seed, (score, region) in enumerate([(0.25, 64), (1.5, 3.5)]):
        row = synthetic(write_png(tmp_path / f"s{seed}.png", 24, 40, seed + 1), source,
                        "train", "P1", seed)
        row.extra.update({"copy_score": score, "copy_region_px": region, "engine": "patch"})
        rows.append(row)
    manifest = tmp_path / "m.csv"
    append_rows(manifest, rows)
    assert [str(p) for p in check_manifest(manifest)] == [
        "row 3: schema: copy_score must be a fraction in [0, 1], not '1.5'",
        "row 3: schema: copy_region_px must be a whole number in 0..9223372036854775807, "
        "not '3.5'"]
    assert read_manifest(manifest)["engine"].tolist() == ["", "patch", "patch"]
