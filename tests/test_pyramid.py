"""The pyramid follows SinGAN's scale rule and resizes without aliasing."""

import math

import pytest
import torch

from medsingan.errors import ConfigError, InvalidImageError
from medsingan.pyramid import build_image_pyramid, effective_scale_factor, pyramid_shapes, resize


def test_square_250_px_gives_the_papers_11_scales():
    shapes = pyramid_shapes(250, 250)
    assert [s[0] for s in shapes] == [250, 199, 158, 126, 100, 80, 63, 50, 40, 32, 25]
    assert all(h == w for h, w in shapes)
    assert effective_scale_factor(shapes) == pytest.approx(0.794, abs=1e-3)


def test_large_chest_radiograph_follows_the_official_rule():
    # RG1_UNCR.dcm is 1955 x 1841: shrunk to 250 x 236, then 8 steps down to 25 px.
    shapes = pyramid_shapes(1955, 1841)
    num_scales = math.ceil(math.log(25 / 1841, 0.75)) + 1
    skipped = math.ceil(math.log(250 / 1955, 0.75))
    assert len(shapes) == num_scales - skipped + 1 == 9
    assert shapes[0] == (250, 236)
    assert min(shapes[-1]) == 25
    assert 0.74 < effective_scale_factor(shapes) < 0.8


@pytest.mark.parametrize(("height", "width"), [(64, 48), (48, 64), (300, 150), (25, 40)])
def test_shapes_shrink_monotonically_from_max_to_min_size(height, width):
    shapes = pyramid_shapes(height, width, min_size=25, max_size=60)
    assert max(shapes[0]) <= 60
    assert min(shapes[-1]) == 25
    for finer, coarser in zip(shapes, shapes[1:], strict=False):
        assert coarser[0] <= finer[0] and coarser[1] <= finer[1]


def test_every_scale_is_smaller_than_the_one_before_it_just_above_min_size():
    """Brute force over every size of 25..80 px a side: no shape twice (rounding up once gave
    26 x 28 two scales in a row, whose real images then shared memory)."""
    for height in range(25, 81):
        for width in range(25, 81):
            if min(height, width) * min(1, 64 / max(height, width)) < 25:
                continue  # too elongated for max size 64 (refused, tested above)
            shapes = pyramid_shapes(height, width, min_size=25, max_size=64)
            assert min(shapes[-1]) == 25, (height, width, shapes)
            for finer, coarser in zip(shapes, shapes[1:], strict=False):
                assert coarser != finer, (height, width, shapes)


def test_small_image_is_never_enlarged():
    assert pyramid_shapes(40, 30, max_size=250)[0] == (40, 30)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_size": 30, "max_size": 20}, ConfigError),
        ({"scale_factor": 1.0}, ConfigError),
        ({"scale_factor": 0.0}, ConfigError),
        ({"scale_factor": 1.5}, ConfigError),
        ({"min_size": 0}, ConfigError),
    ],
)
def test_bad_geometry_raises_config_error(kwargs, error):
    with pytest.raises(error) as info:
        pyramid_shapes(100, 100, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("height", "width"), [(20, 100), (1000, 40)])
def test_image_too_small_on_its_short_side_raises(height, width):
    with pytest.raises(InvalidImageError, match="min_size"):
        pyramid_shapes(height, width)


def test_downsampling_is_anti_aliased():
    checkerboard = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 2.0 - 1.0
    small = resize(checkerboard[None, None], (25, 25))
    assert small.shape == (1, 1, 25, 25)
    # A 1-px checkerboard is above the new Nyquist frequency: it must average out, not alias.
    assert small.abs().max() < 0.1


def test_resize_keeps_tensor_float_and_identity_is_free():
    image = torch.rand(2, 1, 30, 40)
    assert resize(image, (30, 40)) is image
    assert resize(image, (60, 80)).dtype == torch.float32


def test_build_image_pyramid_matches_shapes():
    image = torch.rand(1, 1, 64, 48) * 2 - 1
    shapes = pyramid_shapes(64, 48)
    levels = build_image_pyramid(image, shapes)
    assert [tuple(level.shape[-2:]) for level in levels] == shapes
