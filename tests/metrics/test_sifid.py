"""SIFID: the Fréchet distance, both variants against an independent re-computation of the
official procedure on real scans, the weights lookup and the refusal of wrong files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid.fid_score import calculate_frechet_distance

from medsingan.errors import ConfigError
from medsingan.io import read_scan
from medsingan.metrics.diversity import diversity, similarity_to_source
from medsingan.metrics.sifid import (
    FID_WEIGHTS_NAME,
    SIFID_VARIANTS,
    WEIGHTS_NAMES,
    SifidScorer,
    SifidWeightsError,
    find_inception_weights,
    frechet_distance,
)
from tests.conftest import dicom_file

PAPER_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
           "pt_inception-2015-12-05-6726825d.pth")


def scan_in_unit_range(name: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A real scan as a ``(1, 1, H, W)`` tensor mapped to [-1, 1] (min -> -1, max -> 1)."""
    image = torch.from_numpy(read_scan(dicom_file(name)).image)[None, None]
    if size is not None:
        image = F.interpolate(image, size=size, mode="area" if image.shape[-1] > size[1]
                              else "bilinear")
    return (image - image.min()) / (image.max() - image.min()) * 2 - 1


@pytest.fixture(scope="module")
def ct_unit() -> torch.Tensor:
    return scan_in_unit_range("CT_small.dcm")  # 128 x 128


@pytest.fixture(scope="module")
def mr_unit() -> torch.Tensor:
    return scan_in_unit_range("MR_small.dcm", (128, 128))  # 64 x 64 up-sampled


@pytest.fixture(scope="module")
def cr_unit() -> torch.Tensor:
    return scan_in_unit_range("RG1_UNCR.dcm", (200, 188))  # 1955 x 1841 chest CR, shrunk


def fakes_of(real: torch.Tensor, other_scan: torch.Tensor) -> torch.Tensor:
    """The real scan itself, flipped, shifted, with noise, and another scan of its size."""
    noise = 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    other = F.interpolate(other_scan, size=real.shape[-2:], mode="bilinear")
    return torch.cat([real, real.flip(-1), real.roll((5, 9), dims=(-2, -1)),
                      (real + noise).clamp(-1, 1), other])


def official_statistics(feature_map: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The official script's statistics of one image's ``(1, C, h, w)`` features: positions as
    rows of an ``(h * w, C)`` array, mean over rows, covariance with rowvar=False."""
    activations = feature_map.numpy().transpose(0, 2, 3, 1).reshape(-1, feature_map.shape[1])
    return np.mean(activations, axis=0), np.cov(activations, rowvar=False)


def official_scores(features_of, real: torch.Tensor, fakes: torch.Tensor) -> list[float]:
    """SIFID the official way: image in [0, 1] (gray repeated to RGB) -> ``features_of`` ->
    statistics -> scipy-sqrtm Fréchet distance (pytorch-fid's, the script's own copy)."""
    def stats(image):
        with torch.no_grad():
            return official_statistics(features_of(((image[None] + 1) / 2).repeat(1, 3, 1, 1)))

    mu_real, sigma_real = stats(real[0])
    return [float(calculate_frechet_distance(mu_real, sigma_real, *stats(fake)))
            for fake in fakes]


def torchvision_conv4a(weights: Path):
    """The paper's features by hand: torchvision's own InceptionV3 loaded from ``weights``,
    its layers called in order, the first max-pool as a plain functional call."""
    network = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    network.load_state_dict(torch.load(weights, weights_only=True))
    network.eval()

    def features_of(unit: torch.Tensor) -> torch.Tensor:
        x = 2 * unit - 1
        x = network.Conv2d_2b_3x3(network.Conv2d_2a_3x3(network.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        return network.Conv2d_4a_3x3(network.Conv2d_3b_1x1(x))

    return features_of


def assert_scores_match(ours: list[float], reference: list[float]) -> None:
    """Scores equal to rel 1e-5; the real scan against itself is 0 for both."""
    # the self-score is 0 up to float rounding of the covariances' square root (1.4e-9 seen on
    # an AMD EPYC, 4e-12 for the reference), against scores of 0.05 and more for other images
    assert ours[0] == pytest.approx(0.0, abs=1e-8) and reference[0] == pytest.approx(0, abs=1e-8)
    assert min(reference[1:]) > 1e-3
    np.testing.assert_allclose(ours[1:], reference[1:], rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_pytorch_fid(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(500, 16)), rng.normal(loc=0.3, scale=1.5, size=(400, 16)) @ \
        rng.normal(size=(16, 16))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(*args) == pytest.approx(calculate_frechet_distance(*args), rel=1e-6)


def test_frechet_distance_of_known_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                            np.array([[9.0]])) == pytest.approx(4.0 + 1.0)


def test_paper_features_are_192_channels_before_the_second_max_pool(inception_weights,
                                                                    ct_unit):
    scorer = SifidScorer(inception_weights)
    # 128 -> Conv2d_1a (3x3, stride 2) 63 -> Conv2d_2a (3x3) 61 -> Conv2d_2b (3x3, pad 1) 61
    # -> max-pool (3, stride 2) 30 -> Conv2d_3b (1x1) 30 -> Conv2d_4a (3x3) 28
    assert scorer.features(ct_unit).shape == (1, 192, 28, 28)
    assert scorer.variant == "paper" and "Conv2d_4a_3x3" in scorer.description
    assert "native size" in scorer.description


def test_fid64_features_are_64_channels_after_the_first_max_pool(fid_inception_weights,
                                                                 ct_unit):
    scorer = SifidScorer(fid_inception_weights, variant="fid64")
    # 128 -> 63 -> 61 -> 61 -> max-pool (3, stride 2) 30
    assert scorer.features(ct_unit).shape == (1, 64, 30, 30)
    assert scorer.variant == "fid64" and "block 0" in scorer.description


def test_building_a_fid64_scorer_leaves_torch_hub_following_torch_home(
        fid_inception_weights, tmp_path, monkeypatch):
    # the scorer points torch's hub at a temporary folder while pytorch-fid loads; afterwards
    # the hub must follow TORCH_HOME again, not stay pinned to the value it had then
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "before"))
    SifidScorer(fid_inception_weights, variant="fid64")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "after"))
    assert torch.hub.get_dir() == str(tmp_path / "after" / "hub")


@pytest.mark.parametrize("scans", [("ct", "mr"), ("mr", "ct"), ("cr", "ct")])
def test_paper_sifid_equals_the_official_procedure_on_real_scans(
        scans, inception_weights, ct_unit, mr_unit, cr_unit):
    images = {"ct": ct_unit, "mr": mr_unit, "cr": cr_unit}
    real, fakes = images[scans[0]], fakes_of(images[scans[0]], images[scans[1]])
    by_hand = torchvision_conv4a(inception_weights)
    scorer = SifidScorer(inception_weights)
    # one sample per position: more positions than channels, or the covariances are degenerate
    h, w = scorer.features(real).shape[-2:]
    assert h * w > 192
    torch.testing.assert_close(scorer.features(fakes[1:2]),
                               by_hand(((fakes[1:2] + 1) / 2).repeat(1, 3, 1, 1)))
    assert_scores_match(scorer.score(real, fakes), official_scores(by_hand, real, fakes))


@pytest.mark.parametrize("scans", [("ct", "mr"), ("cr", "ct")])
def test_fid64_sifid_equals_pytorch_fid_block0_the_official_way(
        scans, fid_inception_weights, ct_unit, mr_unit, cr_unit, tmp_path, monkeypatch):
    from pytorch_fid.inception import InceptionV3

    images = {"ct": ct_unit, "mr": mr_unit, "cr": cr_unit}
    real, fakes = images[scans[0]], fakes_of(images[scans[0]], images[scans[1]])
    scorer = SifidScorer(fid_inception_weights, variant="fid64")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / FID_WEIGHTS_NAME).symlink_to(fid_inception_weights)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    block0 = InceptionV3([0], resize_input=False, normalize_input=True).eval()
    assert_scores_match(scorer.score(real, fakes),
                        official_scores(lambda unit: block0(unit)[0], real, fakes))


@pytest.mark.parametrize("variant", SIFID_VARIANTS)
def test_a_gray_scan_scores_as_its_rgb_copy_and_batches_as_one_by_one(
        variant, inception_weights, fid_inception_weights, ct_unit):
    weights = {"paper": inception_weights, "fid64": fid_inception_weights}[variant]
    scorer = SifidScorer(weights, variant=variant)
    batch = torch.cat([ct_unit.roll(k, dims=-1) for k in (0, 5, 17)])
    together = scorer.score(ct_unit, batch)
    alone = [scorer.score(ct_unit, image[None])[0] for image in batch]
    rgb = scorer.score(ct_unit.repeat(1, 3, 1, 1), batch.repeat(1, 3, 1, 1))
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(rgb, together, rtol=1e-5, atol=1e-8)
    assert together[0] == pytest.approx(0.0, abs=1e-8) and min(together[1:]) > 0


@pytest.mark.parametrize("variant", SIFID_VARIANTS)
def test_values_outside_the_unit_range_are_clamped_as_an_image_file_would_be(
        variant, inception_weights, fid_inception_weights, ct_unit):
    weights = {"paper": inception_weights, "fid64": fid_inception_weights}[variant]
    scorer = SifidScorer(weights, variant=variant)
    too_bright = 1.5 * ct_unit
    torch.testing.assert_close(scorer.features(too_bright),
                               scorer.features(too_bright.clamp(-1, 1)))
    assert not torch.allclose(scorer.features(too_bright), scorer.features(ct_unit))


def test_the_variants_give_different_numbers(inception_weights, fid_inception_weights,
                                             ct_unit):
    flipped = ct_unit.flip(-1)
    paper = SifidScorer(inception_weights).score(ct_unit, flipped)[0]
    fid64 = SifidScorer(fid_inception_weights, variant="fid64").score(ct_unit, flipped)[0]
    assert paper > 0 and fid64 > 0 and paper != pytest.approx(fid64, rel=0.01)


def test_a_file_missing_a_layer_is_refused(inception_weights, tmp_path):
    state = torch.load(inception_weights, weights_only=True)
    cut = tmp_path / "cut.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("Conv2d_4a_3x3.")}, cut)
    with pytest.raises(SifidWeightsError) as error:
        SifidScorer(cut)
    message = str(error.value)
    assert "is not torchvision's ImageNet InceptionV3 weights file" in message
    assert "inception_v3_google-0cc3c7bd.pth (missing: Conv2d_4a_3x3)" in message
    assert "\n" not in message


def test_the_fid_weights_are_refused_by_the_paper_variant_and_vice_versa(
        inception_weights, fid_inception_weights):
    with pytest.raises(SifidWeightsError, match=r"not torchvision's ImageNet .*missing: "
                       r"AuxLogits.*wrong shape: fc.weight \(1008, 2048\).*--sifid-variant fid64"):
        SifidScorer(fid_inception_weights)
    with pytest.raises(SifidWeightsError, match="not the FID Inception weights.*--sifid-variant "
                       "paper"):
        SifidScorer(inception_weights, variant="fid64")


class _RunsCode:
    """Unpickling this makes a directory: a file that could run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("variant", SIFID_VARIANTS)
def test_a_file_that_would_run_code_is_refused_unrun(variant, tmp_path):
    marker = tmp_path / "code_ran"
    weights = tmp_path / WEIGHTS_NAMES[variant]
    torch.save({"Conv2d_1a_3x3.conv.weight": _RunsCode(marker)}, weights)
    with pytest.raises(SifidWeightsError, match="tensors only"):
        SifidScorer(weights, variant=variant)
    assert not marker.exists()


def test_a_file_that_is_not_weights_at_all_is_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(SifidWeightsError, match="cannot be read as a plain weights file"):
        SifidScorer(junk)


@pytest.mark.parametrize("variant", SIFID_VARIANTS)
def test_weights_are_found_explicitly_from_the_environment_and_the_hub_cache(
        variant, tmp_path, monkeypatch, inception_weights):
    given = tmp_path / "given.pth"
    given.write_bytes(b"x")
    monkeypatch.setenv("MEDSINGAN_INCEPTION_WEIGHTS", str(inception_weights))
    assert find_inception_weights(variant=variant) == inception_weights
    assert find_inception_weights(given, variant=variant) == given
    monkeypatch.delenv("MEDSINGAN_INCEPTION_WEIGHTS")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    for name in ("inception_v3_google-0cc3c7bd.pth", "pt_inception-2015-12-05-6726825d.pth"):
        (cache / name).write_bytes(b"x")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = {"paper": "inception_v3_google-0cc3c7bd.pth",
                "fid64": "pt_inception-2015-12-05-6726825d.pth"}[variant]
    assert find_inception_weights(variant=variant) == cache / expected


def test_the_default_variant_is_the_papers(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSINGAN_INCEPTION_WEIGHTS", raising=False)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SifidWeightsError, match="inception_v3_google-0cc3c7bd.pth"):
        find_inception_weights()
    assert SIFID_VARIANTS[0] == "paper"


@pytest.mark.parametrize(("variant", "name", "url", "other"), [
    ("paper", "inception_v3_google-0cc3c7bd.pth", PAPER_URL, "fid64"),
    ("fid64", "pt_inception-2015-12-05-6726825d.pth", FID_URL, "paper")])
def test_missing_weights_fail_fast_with_the_documented_message(variant, name, url, other,
                                                               tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSINGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SifidWeightsError) as error:
        find_inception_weights(variant=variant)
    message = str(error.value)
    for part in (name, str(tmp_path / "hub" / "checkpoints" / name), "torch hub cache", url,
                 "--inception-weights FILE", "MEDSINGAN_INCEPTION_WEIGHTS",
                 f"--sifid-variant {other}", "--no-sifid"):
        assert part in message
    assert "\n" not in message
    monkeypatch.setenv("MEDSINGAN_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(SifidWeightsError, match=r"not found at .*nope.pth, from "
                       "MEDSINGAN_INCEPTION_WEIGHTS"):
        find_inception_weights(variant=variant)
    with pytest.raises(SifidWeightsError, match=r"not found at .*gone.pth, from "
                       "--inception-weights"):
        find_inception_weights(tmp_path / "gone.pth", variant=variant)


def test_an_unknown_variant_is_a_one_line_config_error(inception_weights):
    for call in (lambda: find_inception_weights(variant="fid2048"),
                 lambda: SifidScorer(inception_weights, variant="fid2048")):
        with pytest.raises(ConfigError, match="^unknown SIFID variant 'fid2048': choose one "
                           "of paper, fid64$"):
            call()


def test_diversity_and_similarity(ct_unit):
    copies = ct_unit.expand(4, -1, -1, -1)
    assert diversity(copies, ct_unit) == pytest.approx(0.0)
    shuffled = torch.cat([ct_unit.roll(k, dims=-2) for k in (0, 10, 20, 30)])
    assert diversity(shuffled, ct_unit) > 0.1
    similarity = similarity_to_source(torch.cat([ct_unit, ct_unit.flip(-2)]), ct_unit)
    assert similarity[0] == pytest.approx(1.0, abs=1e-4) and similarity[1] < 0.9
