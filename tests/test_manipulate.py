"""edit / harmonize / paint / super-resolve on a tiny run of a real radiograph (pydicom-data's
RG3_UNCR.dcm, MONOCHROME1), with lesion patches cut from other real scans."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medsingan.augment import source_meta
from medsingan.errors import ConfigError
from medsingan.io import read_scan, write_scan
from medsingan.manifest import check_manifest, read_manifest, resolve_image
from medsingan.manipulate import (
    EditRequest,
    PaintRequest,
    SuperResolveRequest,
    default_inject_scale,
    edit,
    harmonize,
    paint,
    seam_score,
    super_resolve,
)
from medsingan.preprocess import IntensityMapping
from medsingan.pyramid import resize
from medsingan.roi import blend_margin, blend_mask
from medsingan.runs import train_scan
from medsingan.train import load_run
from tests.conftest import dicom_file

# the geometry and norm these tests were designed on (the fast preset would change both)
TINY = {"max_size": 48, "iters": 40, "nfc": 16, "max_nfc": 16, "seed": 0, "scale_factor": 0.75,
        "norm": "batch"}


@functools.cache
def _train_hand(base: Path) -> Path:
    """One tiny run per test session, shared by this module and the CLI tests."""
    run_dir = base / "runs" / "hand"
    train_scan(dicom_file("RG3_UNCR.dcm"), run_dir, overrides=TINY, progress=False,
               label="normal", split="train", subject_id="P003")
    return run_dir


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory) -> Path:
    return _train_hand(tmp_path_factory.getbasetemp())


def scan_crop(name: str, size: int) -> np.ndarray:
    """A square from the upper middle of a real scan, resized to ``size`` px, in [0, 1]."""
    image = read_scan(dicom_file(name)).image.astype(np.float32)
    rows, cols = image.shape
    side = rows // 5
    crop = image[int(0.3 * rows):int(0.3 * rows) + side, int(0.45 * cols):int(0.45 * cols) + side]
    small = resize(torch.from_numpy(crop)[None, None], (size, size))[0, 0].numpy()
    return (small - small.min()) / (small.max() - small.min())


def lesion_png(folder: Path, run_dir: Path, size: int = 12, name: str = "RG1_UNCR.dcm") -> Path:
    """A crop of another real scan as a 16-bit PNG in the run's units (bright, like a finding)."""
    mapping = IntensityMapping.from_dict(load_run(run_dir).metadata["extra"]["intensity_mapping"])
    values = mapping.low + (0.1 + 0.8 * scan_crop(name, size)) * (mapping.high - mapping.low)
    path = folder / f"lesion_{size}.png"
    Image.fromarray(np.round(values).astype(np.uint16)).save(path)
    return path


def mask_png(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def source_at_finest(run_dir: Path, folder: Path) -> np.ndarray:
    """The training scan at the finest scale written like an output and read back."""
    pyramid = load_run(run_dir)
    extra = pyramid.metadata["extra"]
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    path = write_scan(mapping.from_unit(pyramid.reals[0][0, 0].numpy()),
                      source_meta(extra, False), folder / "source.dcm")
    return read_scan(path).image


def far_from(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels farther than ``margin`` (chessboard distance) from the mask."""
    near = F.max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None],
                        2 * margin + 1, stride=1, padding=margin)
    return near[0, 0].numpy() == 0


def request(run_dir: Path, folder: Path, kind=EditRequest, **kwargs):
    defaults = {"out": folder / "out", "manifest": folder / "manifest.csv", "label": "lesion"}
    return kind(run_dir=run_dir, **{**defaults, **kwargs})


def test_edit_with_lesion_changes_the_mask_keeps_the_rest_and_halves_the_seam(hand_run,
                                                                             tmp_path):
    lesion = lesion_png(tmp_path, hand_run)
    result = edit(request(hand_run, tmp_path, lesion=lesion, at="18,16", n=3,
                          label="fracture"))
    assert result.box == (18, 16, 12, 12) and result.inject_scale == 2
    source = source_at_finest(hand_run, tmp_path)
    mask = np.asarray(Image.open(result.mask)) > 0
    assert mask.shape == (48, 48) and mask.sum() == 144 and mask[16:28, 18:30].all()
    outside = far_from(mask, blend_margin((48, 48), "edit"))
    assert outside.sum() > 200
    variants = []
    for path in result.written:
        scan = read_scan(path)
        assert path.suffix == ".dcm" and scan.shape == (48, 48)
        assert np.array_equal(scan.image[outside], source[outside])
        assert np.abs(scan.image[mask] - source[mask]).mean() > 20  # of a 0..1023 range
        variants.append(scan.image)
    assert not np.array_equal(variants[0], variants[1])
    seam = result.seam
    assert seam["naive_excess"] > 1.0
    assert all(excess <= seam["naive_excess"] / 2 for excess in seam["result_excess"])
    with Image.open(result.grid) as grid:  # original | naive paste | 3 results
        assert result.grid.name == "edit_grid.png" and grid.width > 4 * grid.height


def test_edit_manifest_rows_carry_box_mask_and_pass_check(hand_run, tmp_path):
    lesion = lesion_png(tmp_path, hand_run, size=8)
    result = edit(request(hand_run, tmp_path, lesion=lesion, at="10,30", n=2,
                          label="fracture", seed=5))
    assert check_manifest(result.manifest) == []
    frame = read_manifest(result.manifest)
    assert len(frame) == 2 and (frame["method"] == "edit").all()
    assert set(frame["label"]) == {"fracture"} and set(frame["split"]) == {"train"}
    assert set(frame["subject_id"]) == {"P003"} and (frame["seed"] == 5).all()
    assert frame[["lesion_x", "lesion_y", "lesion_w", "lesion_h"]].values.tolist() == \
        [[10, 30, 8, 8]] * 2
    mask = resolve_image(result.manifest, frame["mask"].iloc[0])
    assert mask == result.mask.resolve() and np.asarray(Image.open(mask)).max() == 255
    assert (frame["seam"] < frame["seam_naive"]).all()
    assert pd.read_csv(result.manifest)["image"].str.endswith(".dcm").all()


def test_edit_with_composite_and_mask_of_another_resolution(hand_run, tmp_path):
    """The official interface: the user's own composite (here at twice the run's size)."""
    pyramid = load_run(hand_run)
    extra = pyramid.metadata["extra"]
    mapping = IntensityMapping.from_dict(extra["intensity_mapping"])
    unit = pyramid.reals[0][0, 0].numpy().copy()
    unit[30:40, 14:24] = 0.8 * scan_crop("CT_small.dcm", 10) - 0.2
    big = resize(torch.from_numpy(unit)[None, None], (96, 96))[0, 0].numpy()
    composite = write_scan(mapping.from_unit(big), source_meta(extra, False),
                           tmp_path / "composite.dcm")
    box = np.zeros((96, 96), bool)
    box[60:80, 28:48] = True
    Image.fromarray(box).save(tmp_path / "mask.png")  # 1-bit, as masks often are
    result = edit(request(hand_run, tmp_path, composite=composite, mask=tmp_path / "mask.png",
                          n=2))
    assert result.box == (14, 30, 10, 10) and len(result.written) == 2
    source = source_at_finest(hand_run, tmp_path)
    mask = np.asarray(Image.open(result.mask)) > 0
    outside = far_from(mask, blend_margin((48, 48), "edit"))
    for path in result.written:
        image = read_scan(path).image
        assert np.array_equal(image[outside], source[outside])
        assert np.abs(image[mask] - source[mask]).mean() > 20
    assert all(e <= result.seam["naive_excess"] / 2 for e in result.seam["result_excess"])
    assert check_manifest(result.manifest) == []


def test_harmonize_blends_over_a_narrower_margin(hand_run, tmp_path):
    lesion = lesion_png(tmp_path, hand_run, size=10, name="CT_small.dcm")
    result = harmonize(request(hand_run, tmp_path, lesion=lesion, at="20,8", n=2))
    margin = blend_margin((48, 48), "harmonize")
    assert margin < blend_margin((48, 48), "edit")
    source = source_at_finest(hand_run, tmp_path)
    mask = np.asarray(Image.open(result.mask)) > 0
    outside = far_from(mask, margin)
    for path in result.written:
        image = read_scan(path).image
        assert np.array_equal(image[outside], source[outside])
        assert not np.array_equal(image[mask], source[mask])
    assert result.grid.name == "harmonize_grid.png"
    assert set(read_manifest(result.manifest)["method"]) == {"harmonize"}


def test_paint_turns_a_coarse_drawing_into_a_scan_that_follows_it(hand_run, tmp_path):
    pyramid = load_run(hand_run)
    blocks = resize(pyramid.reals[0], (6, 6))
    drawing = F.interpolate(blocks, size=(60, 60), mode="nearest")[0, 0].numpy()
    painting = tmp_path / "painting.png"
    Image.fromarray(np.clip(np.round((drawing + 1) * 127.5), 0, 255).astype(np.uint8)).save(
        painting)
    result = paint(request(hand_run, tmp_path, PaintRequest, paint=painting, n=2,
                           intensity="display"))
    assert result.inject_scale == pyramid.coarsest - 1 and result.grid.name == "paint_grid.png"
    for path in result.written:
        image = read_scan(path).image
        assert image.shape == (48, 48)
        coarse = resize(torch.from_numpy(image)[None, None], (6, 6)).flatten().numpy()
        assert np.corrcoef(coarse, blocks.flatten().numpy())[0, 1] > 0.8
    assert set(read_manifest(result.manifest)["method"]) == {"paint"}
    assert check_manifest(result.manifest) == []


@pytest.mark.parametrize(("factor", "side"), [(2.0, 96), (1.5, 72)])
def test_super_resolve_output_is_input_times_factor(hand_run, tmp_path, factor, side):
    result = super_resolve(request(hand_run, tmp_path, SuperResolveRequest, factor=factor))
    scan = read_scan(result.written[0])
    assert scan.shape == (side, side)
    source = source_at_finest(hand_run, tmp_path)
    coarse = resize(torch.from_numpy(scan.image)[None, None], (48, 48))[0, 0].numpy()
    assert np.corrcoef(coarse.ravel(), source.ravel())[0, 1] > 0.9
    frame = read_manifest(result.manifest)
    assert frame["method"].tolist() == ["super_resolution"] and frame["width"].tolist() == [side]
    assert check_manifest(result.manifest) == []


def test_blend_mask_is_one_on_the_mask_and_exactly_zero_beyond_the_margin():
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., 20:26, 20:26] = 1
    weight = blend_mask(mask, "edit")
    assert torch.allclose(weight[mask > 0], torch.ones(36))
    outside = torch.from_numpy(far_from(mask[0, 0].numpy(), blend_margin((48, 48), "edit")))
    assert (weight[0, 0][outside] == 0).all() and (weight[0, 0][~outside] > 0).any()


def test_seam_score_sees_a_pasted_step_and_not_a_smooth_ramp():
    ramp = torch.linspace(-1, 1, 32).repeat(32, 1)[None, None]
    mask = torch.zeros_like(ramp)
    mask[..., 8:20, 8:20] = 1
    pasted = torch.where(mask > 0, torch.ones_like(ramp), ramp)
    assert seam_score(ramp, mask, ramp) == pytest.approx(1.0, rel=0.05)
    assert seam_score(pasted, mask, ramp) > 3


def test_default_inject_scale_is_coarser_for_larger_findings(hand_run):
    pyramid = load_run(hand_run)
    assert default_inject_scale(pyramid, (0, 0, 4, 4)) == 1
    assert default_inject_scale(pyramid, (0, 0, 40, 40)) == pyramid.coarsest - 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lesion_size": 60, "at": "0,0"}, "larger than the run's scan"),
    ({"at": "40,10"}, "outside"),
    ({"at": "10,10", "lesion_mask": (5, 5)}, "must match"),
    ({"at": "10,10", "lesion_mask": (12, 12), "empty": True}, "empty"),
    ({"at": "10,10", "inject_scale": "N-7"}, "out of range"),
    ({"at": "10,10", "inject_scale": "9"}, "out of range"),
    ({"at": "ten,10"}, "X,Y"),
    ({}, "needs --at"),
])
def test_bad_edit_input_is_refused_before_anything_is_written(hand_run, tmp_path, kwargs,
                                                             message):
    kwargs = dict(kwargs)
    lesion = lesion_png(tmp_path, hand_run, size=kwargs.pop("lesion_size", 12))
    if "lesion_mask" in kwargs:
        inside = np.zeros(kwargs["lesion_mask"], bool) if kwargs.pop("empty", False) else \
            np.ones(kwargs["lesion_mask"], bool)
        kwargs["lesion_mask"] = mask_png(tmp_path / "lesion_mask.png", inside)
    with pytest.raises(ConfigError, match=message):
        edit(request(hand_run, tmp_path, lesion=lesion, **kwargs))
    assert not (tmp_path / "out").exists() and not (tmp_path / "manifest.csv").exists()


def test_bad_composite_paint_and_factor_are_refused(hand_run, tmp_path):
    square = tmp_path / "square.png"
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(square)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((20, 60), 128, np.uint8)).save(wide)
    cases = [
        (EditRequest, {"composite": square, "mask": mask_png(tmp_path / "m.png",
                                                            np.ones((30, 30), bool))},
         "must match"),
        (EditRequest, {"composite": square}, "needs --mask"),
        (EditRequest, {"composite": square, "lesion": square, "at": "1,1"}, "either"),
        (PaintRequest, {"paint": wide, "intensity": "display"}, "aspect ratio"),
        (PaintRequest, {"paint": square, "inject_scale": "N-5"}, "out of range"),
        (SuperResolveRequest, {"factor": 1.0}, "--factor"),
    ]
    for kind, kwargs, message in cases:
        run = {EditRequest: edit, PaintRequest: paint, SuperResolveRequest: super_resolve}[kind]
        with pytest.raises(ConfigError, match=message):
            run(request(hand_run, tmp_path, kind, **kwargs))
    assert not (tmp_path / "out").exists() and not (tmp_path / "manifest.csv").exists()


def test_existing_outputs_are_kept_unless_overwrite(hand_run, tmp_path):
    first = super_resolve(request(hand_run, tmp_path, SuperResolveRequest, factor=1.5))
    with pytest.raises(ConfigError, match="already exists"):
        super_resolve(request(hand_run, tmp_path, SuperResolveRequest, factor=1.5))
    again = super_resolve(request(hand_run, tmp_path, SuperResolveRequest, factor=1.5,
                                  overwrite=True))
    assert again.written == first.written
    assert np.array_equal(read_scan(first.written[0]).image, read_scan(again.written[0]).image)


def test_an_edit_must_name_its_finding_and_cannot_inject_at_the_coarsest_scale(hand_run,
                                                                                tmp_path):
    lesion = lesion_png(tmp_path, hand_run)
    for label in (None, "  "):
        with pytest.raises(ConfigError, match="--label"):
            edit(request(hand_run, tmp_path, lesion=lesion, at="18,16", label=label))
    with pytest.raises(ConfigError, match="coarsest scale"):
        edit(request(hand_run, tmp_path, lesion=lesion, at="18,16", inject_scale="N"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "manifest.csv").exists()


def test_a_mask_on_the_border_keeps_its_full_weight_there():
    mask = torch.zeros(1, 1, 60, 60)
    mask[..., 20:40, :12] = 1.0  # touches column 0
    weight = blend_mask(mask, "edit")
    at_border, inside = float(weight[0, 0, 30, 0]), float(weight[0, 0, 30, 6])
    assert at_border == pytest.approx(inside, abs=1e-3) and at_border > 0.99


def seam_by_numpy(image: np.ndarray, mask: np.ndarray, source: np.ndarray) -> float:
    """The seam score recomputed with numpy and scipy: central differences with edges
    replicated, the border = 8-neighbourhood dilation minus erosion of the mask; in any units
    (the score is a ratio of two gradients of linearly mapped images)."""
    from scipy import ndimage

    def gradient(a: np.ndarray) -> np.ndarray:
        p = np.pad(a.astype(np.float64), 1, mode="edge")
        return np.hypot((p[1:-1, 2:] - p[1:-1, :-2]) / 2, (p[2:, 1:-1] - p[:-2, 1:-1]) / 2)

    square = np.ones((3, 3), bool)
    border = (ndimage.binary_dilation(mask, square)
              & ~ndimage.binary_erosion(mask, square, border_value=1))
    return float(gradient(image)[border].mean() / gradient(source).mean())


def test_an_edit_at_every_scale_is_scored_per_scale_and_pick_best_keeps_the_lowest_seam(
        hand_run, tmp_path):
    lesion = lesion_png(tmp_path, hand_run)
    manifest = tmp_path / "manifest.csv"
    sweep = edit(request(hand_run, tmp_path, lesion=lesion, at="18,16", n=2,
                         inject_scale="all", out=tmp_path / "all"))
    frame = read_manifest(manifest)
    assert sorted(frame["start_scale"].unique()) == list(range(1, load_run(hand_run).coarsest))
    assert check_manifest(manifest) == []
    source = source_at_finest(hand_run, tmp_path).astype(np.float64)
    naive = source.copy()
    naive[16:28, 18:30] = np.asarray(Image.open(lesion))  # the 12 px patch, in the run's units
    excess, kept, pixels = {}, {}, {}
    for scale, rows in frame.groupby("start_scale"):
        paths = [resolve_image(manifest, image) for image in rows["image"]]
        assert len(paths) == 2 and all(p.parent.name == f"scale_{scale}" for p in paths)
        assert rows["patch_swd"].gt(0).all() and rows["sifid"].isna().all()  # no weights here
        mask = np.asarray(Image.open(resolve_image(manifest, rows["mask"].iloc[0]))) > 0
        base = seam_by_numpy(source, mask, source)
        pixels[scale] = [read_scan(p).image for p in paths]
        excess[scale] = np.mean([abs(seam_by_numpy(image, mask, source) - base)
                                 for image in pixels[scale]])
        pasted = np.abs(naive - source)[mask].mean()
        kept[scale] = np.mean([np.abs(image - source)[mask].mean() / pasted
                               for image in pixels[scale]])
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["criterion"]["name"] == "seam_excess_abs_mean"
    for entry in summary["per_scale"]:  # within the DICOM files' integer rounding
        assert entry["score"] == pytest.approx(excess[entry["scale"]], rel=0.02, abs=0.01)
        assert entry["finding_kept_mean"] == pytest.approx(kept[entry["scale"]], abs=0.01)
        assert entry["eligible"] == (kept[entry["scale"]] >= 0.5)
    # the lowest seam among the scales that keep half of the finding (all, if none does)
    candidates = [s for s in excess if kept[s] >= 0.5] or list(excess)
    lowest = min(candidates, key=excess.get)
    assert sweep.best == summary["best_scale"] == lowest and summary["picked_scale"] is None
    with Image.open(sweep.sheet) as sheet:  # source | naive paste, then one row per scale
        assert sheet.height >= (1 + len(excess)) * 128

    picked = edit(request(hand_run, tmp_path, lesion=lesion, at="18,16", n=2,
                          inject_scale="all", pick="best", out=tmp_path / "best",
                          manifest=tmp_path / "best.csv"))
    assert picked.picked == lowest
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == \
        sorted([f"scale_{lowest}", "summary.json", "sweep.png"])
    kept = read_manifest(tmp_path / "best.csv")
    assert kept["start_scale"].tolist() == [lowest, lowest]
    for image, expected in zip(kept["image"], pixels[lowest], strict=True):
        assert np.array_equal(read_scan(resolve_image(tmp_path / "best.csv", image)).image,
                              expected)
    assert check_manifest(tmp_path / "best.csv") == []


def test_a_paint_sweep_with_inception_weights_keeps_the_lowest_sifid(hand_run, tmp_path,
                                                                    inception_weights):
    blocks = resize(load_run(hand_run).reals[0], (8, 8))[0, 0].numpy()
    painting = tmp_path / "painting.png"
    Image.fromarray(np.clip(np.round((blocks + 1) * 127.5), 0, 255).astype(np.uint8)).save(
        painting)
    result = paint(request(hand_run, tmp_path, PaintRequest, paint=painting, n=2,
                           intensity="display", inject_scale="all", pick="best",
                           inception_weights=inception_weights))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["criterion"]["name"] == "sifid_mean"
    scores = {entry["scale"]: entry["score"] for entry in summary["per_scale"]}
    assert sorted(scores) == [1, 2] and result.picked == min(scores, key=scores.get)
    frame = read_manifest(tmp_path / "manifest.csv")
    assert frame["start_scale"].tolist() == [result.picked] * 2
    assert set(frame["sifid_variant"]) == {"paper"}
    assert frame["sifid"].mean() == pytest.approx(scores[result.picked])
