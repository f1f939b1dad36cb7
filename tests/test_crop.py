"""Window training (``crop``): scales larger than ``crop`` px train on a random window each
iteration, the generator's input cut with its real margin; on a real CT slice."""

from __future__ import annotations

import json

import pytest
import torch

from medsingan import train as train_module
from medsingan.batched import train_batch
from medsingan.errors import ConfigError
from medsingan.model.blocks import init_weights
from medsingan.model.networks import Discriminator, Generator, NetSpec
from medsingan.train import TrainConfig, load_run, train
from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import dicom_file

# 128 x 128 CT at max side 48 -> scales 48, 39, 32 and 25 px (instance norm, as the presets).
TINY = {"max_size": 48, "nfc": 8, "max_nfc": 8, "iters": 4, "log_every": 2, "device": "cpu",
        "norm": "instance"}


@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_a_windows_output_is_that_part_of_the_whole_scales_output(padding):
    """Without a window-dependent norm the generator run on a window gives exactly the
    window of its output on the whole scale: the input's margin is the real neighbourhood,
    the padding only where the window meets the border."""
    torch.manual_seed(0)
    generator = Generator(NetSpec(width=8, norm="none", padding=padding)).eval()
    generator.apply(init_weights)
    noisy, previous = torch.randn(1, 1, 40, 37), torch.randn(1, 1, 40, 37)
    with torch.no_grad():
        whole = generator(noisy, previous)
        rng = torch.Generator().manual_seed(3)
        for _ in range(20):  # windows inside, at the borders and at the corners
            window = train_module._Window(noisy.shape, 16, generator.spec.pad, rng)
            part = window.generate(generator, noisy, previous)
            assert part.shape[-2:] == (16, 16)
            torch.testing.assert_close(part, whole[..., window.rows, window.cols],
                                       rtol=0, atol=1e-6)


def test_windows_lie_inside_the_scale_and_train_its_border_as_often_as_its_centre():
    rng = torch.Generator().manual_seed(0)
    draws, seen = 8000, torch.zeros(40, 37)
    for _ in range(draws):
        window = train_module._Window((1, 1, 40, 37), 16, 5, rng)
        part = window(torch.ones(1, 1, 40, 37))
        assert part.shape == (1, 1, 16, 16)  # never cut short by the border
        seen[window.rows, window.cols] += 1
    # a central pixel (16 px or more from the border) lies in 16 x 16 of the
    # (40 + 15) x (37 + 15) equally likely starts
    centre = draws * 16 * 16 / (55 * 52)
    assert float(seen[16:24, 16:21].mean()) == pytest.approx(centre, rel=0.1)
    # every pixel, the corners too, at least about as often (uniform starts inside the
    # scale would give a corner 8000 / (25 * 22) = 15 windows)
    assert float(seen.min()) > 0.75 * centre
    assert float(seen[[0, 0, -1, -1], [0, -1, 0, -1]].min()) > 0.75 * centre
    # a side shorter than crop is taken whole
    window = train_module._Window((1, 1, 20, 60), 32, 5, rng)
    assert window(torch.zeros(1, 1, 20, 60)).shape == (1, 1, 20, 32)


def _critic_inputs(monkeypatch) -> list[tuple[int, int]]:
    """The spatial size of every input the critics score during training."""
    seen: list[tuple[int, int]] = []
    forward = Discriminator.forward

    def watched(self, x):
        seen.append(tuple(x.shape[-2:]))
        return forward(self, x)

    monkeypatch.setattr(Discriminator, "forward", watched)
    return seen


@pytest.mark.parametrize("concurrent", [1, 2])
def test_scales_larger_than_crop_train_on_windows_and_the_others_as_before(
        ct_image, tmp_path, monkeypatch, concurrent):
    options = {"concurrent": concurrent}
    whole = train(ct_image, TrainConfig(**TINY | options), tmp_path / "whole", progress=False)
    seen = _critic_inputs(monkeypatch)
    cropped = train(ct_image, TrainConfig(**TINY | options | {"crop": 36}), tmp_path / "crop",
                    progress=False)
    shapes = cropped.shapes
    assert [max(s) for s in shapes] == [48, 39, 32, 25]
    # the two finest scales are scored as 36 x 36 windows only, the coarser ones whole
    assert set(seen) == {(36, 36), shapes[2], shapes[3]}
    # not larger than crop, and not trained on with a cropped scale (concurrent 2: scale 2
    # trains on with scale 1): the same weights as without crop
    untouched = (2, 3) if concurrent == 1 else (3,)
    for scale in untouched:
        for a, b in zip(whole.generators[scale].parameters(),
                        cropped.generators[scale].parameters(), strict=True):
            assert torch.equal(a, b)
    for scale in set(range(4)) - set(untouched):  # trained on windows: other weights
        assert not all(torch.equal(a, b) for a, b in zip(
            whole.generators[scale].parameters(), cropped.generators[scale].parameters(),
            strict=True))
    reloaded = load_run(tmp_path / "crop")  # samples and reconstruction stay whole-scale
    assert reloaded.metadata["train"]["crop"] == 36
    assert reloaded.reconstruct(0).shape[-2:] == shapes[0]
    assert torch.isfinite(reloaded.reconstruct(0)).all()


def test_a_scale_narrower_than_crop_trains_on_windows_of_its_whole_width(ct_image, tmp_path,
                                                                          monkeypatch):
    tall = ct_image[..., :, 20:100]  # 128 x 80 of the real CT: scales 48 x 30, 39 x 24, ...
    seen = _critic_inputs(monkeypatch)
    run = train(tall, TrainConfig(**TINY | {"crop": 40, "min_size": 20}), tmp_path / "run",
                progress=False)
    assert run.shapes[0] == (48, 30)
    # the finest scale (48 px high) trains on 40 x 30 windows, the others (<= 40 px) whole
    assert set(seen) == {(40, 30), *run.shapes[1:]}


@pytest.mark.parametrize(("options", "message"), [
    ({"loss": "aligned-nn"}, "aligned-nn"),
    ({"loss": "nn-patch", "patch_size": 21, "min_size": 25}, "larger than the 16 px crop"),
    ({"kernel_size": 4}, "kernel_size"),  # the kernel's error, not a receptive field's
])
def test_a_crop_that_cannot_train_is_a_one_line_config_error(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig(**TINY | {"crop": 16} | options).validate()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("crop", [5, 11, -1])
def test_a_crop_within_the_receptive_field_is_a_one_line_config_error(crop):
    with pytest.raises(ConfigError, match="receptive field") as info:
        TrainConfig(**TINY | {"crop": crop}).validate()
    assert "\n" not in str(info.value)


def test_batched_training_refuses_cropped_runs(ct_image, tmp_path):
    configs = [TrainConfig(**TINY | {"crop": 36, "seed": s}) for s in (0, 1)]
    with pytest.raises(ConfigError, match="crop"):
        train_batch([ct_image, ct_image], configs, [tmp_path / "a", tmp_path / "b"],
                    progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_command_line_refuses_a_bad_crop_and_records_a_good_one(tmp_path):
    scan = dicom_file("CT_small.dcm")
    result = run_cli("train", scan, "--crop", "8", "--out", tmp_path / "bad")
    assert_one_line_error(result, "receptive field")
    assert not (tmp_path / "bad").exists()
    result = run_cli("train", scan, "--preset", "concurrent", "--crop", "24", "--max-size",
                     "32", "--iters", "2", "--quiet", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert stored["crop"] == 24 and stored["concurrent"] == 2
