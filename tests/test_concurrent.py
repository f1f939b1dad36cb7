"""Concurrent scales (ConSinGAN's concurrent stages, ``concurrent``): while a scale trains, the
coarser scales above it train on, at a reduced learning rate, on a real CT slice."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from medsingan import train as train_module
from medsingan.batched import train_batch
from medsingan.errors import ConfigError
from medsingan.generate import reconstruct
from medsingan.train import TrainConfig, load_run, train
from tests.cli.test_inspect import assert_one_line_error, run_cli
from tests.conftest import dicom_file

# 128 x 128 CT at max side 48 -> 4 scales, instance norm (concurrent scales need it).
TINY = {"max_size": 48, "nfc": 8, "max_nfc": 8, "iters": 6, "log_every": 2, "device": "cpu",
        "norm": "instance"}


def _changes_per_scale(ct_image, tmp_path, monkeypatch, **options):
    """Train; for every scale trained, the mean absolute weight change of every coarser
    generator during that scale's training (0.0: not touched), and of its own under the
    scale's number."""
    real_train_scale = train_module._train_scale
    changes: dict[int, dict[int, float]] = {}

    @torch.no_grad()
    def change(generator, before):
        return float(torch.cat([(p - b).abs().flatten() for p, b in
                                zip(generator.parameters(), before, strict=True)]).mean())

    def watched(job, *args):
        before = {s: [p.detach().clone() for p in g.parameters()]
                  for s, g in job.pyramid.generators.items()}
        own = [p.detach().clone() for p in job.generator.parameters()]
        rows = real_train_scale(job, *args)
        changes[job.scale] = {s: change(job.pyramid.generators[s], before[s]) for s in before}
        changes[job.scale][job.scale] = change(job.generator, own)
        for s in before:  # frozen again once the scale is done
            generator = job.pyramid.generators[s]
            assert not generator.training
            assert not any(p.requires_grad for p in generator.parameters())
        return rows

    monkeypatch.setattr(train_module, "_train_scale", watched)
    pyramid = train(ct_image, TrainConfig(**TINY | options), tmp_path, progress=False)
    assert pyramid.coarsest == 3 and pyramid.is_complete
    assert torch.isfinite(reconstruct(pyramid)).all()
    return changes


def test_one_scale_at_a_time_leaves_every_coarser_scale_untouched(ct_image, tmp_path,
                                                                  monkeypatch):
    changes = _changes_per_scale(ct_image, tmp_path, monkeypatch)
    for scale, moved in changes.items():
        assert moved.pop(scale) > 0
        assert all(change == 0.0 for change in moved.values()), scale


def test_concurrent_scales_train_the_next_coarser_ones_at_a_tenth_of_the_rate(
        ct_image, tmp_path, monkeypatch):
    changes = _changes_per_scale(ct_image, tmp_path, monkeypatch, concurrent=3)
    for scale, moved in changes.items():
        for s, change in moved.items():
            if s - scale <= 2:  # the scale itself and the two above it
                assert change > 0, (scale, s)
            else:
                assert change == 0.0, (scale, s)
    # Adam's steps are about the learning rate per weight: each scale up moves by about a
    # tenth of the one below it (lr_g, then 0.1 and 0.01 of it)
    for scale in (0, 1):
        for above in (1, 2):
            ratio = changes[scale][scale + above] / changes[scale][scale + above - 1]
            assert 0.02 < ratio < 0.4, (scale, above, ratio)


@pytest.mark.parametrize(("adversarial", "reconstruction"),
                         [(True, False), (False, True), (False, False)])
def test_the_coarser_scales_learn_from_both_losses_of_the_finer_one_and_from_nothing_else(
        ct_image, tmp_path, monkeypatch, adversarial, reconstruction):
    if not adversarial:  # the generator's adversarial term, with its gradient, zeroed
        term = train_module._CriticObjective.generator_term
        monkeypatch.setattr(train_module._CriticObjective, "generator_term",
                            lambda self, fake: 0 * term(self, fake))
    changes = _changes_per_scale(ct_image, tmp_path, monkeypatch, concurrent=2,
                                 alpha=10.0 if reconstruction else 0.0)
    coarser = [changes[scale][scale + 1] for scale in range(3)]
    if adversarial or reconstruction:
        assert all(change > 0 for change in coarser), coarser
    else:
        assert coarser == [0.0, 0.0, 0.0]


def test_a_concurrent_run_resumes_to_the_uninterrupted_weights(ct_image, tmp_path):
    config = TrainConfig(**TINY | {"concurrent": 2})
    train(ct_image, config, tmp_path / "whole", progress=False)
    train(ct_image, TrainConfig(**TINY), tmp_path / "alone", progress=False)
    train(ct_image, config, tmp_path / "split", progress=False, last_scale=2)
    train(ct_image, config, tmp_path / "split", resume=True, progress=False)
    whole = load_file(str(tmp_path / "whole" / "weights.safetensors"))
    split = load_file(str(tmp_path / "split" / "weights.safetensors"))
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    # ... and it did train concurrently: the coarsest generator moved on while scale 2 trained
    alone = load_file(str(tmp_path / "alone" / "weights.safetensors"))
    coarsest = [k for k in whole if k.startswith("generator.3.")]
    assert coarsest and not all(torch.equal(whole[k], alone[k]) for k in coarsest)
    stored = json.loads((tmp_path / "whole" / "config.json").read_text())["train"]
    assert stored["concurrent"] == 2 and stored["concurrent_lr_scale"] == 0.1


@pytest.mark.parametrize("option", [
    {"concurrent": 0}, {"concurrent": 2, "norm": "batch"}, {"concurrent_lr_scale": 0.0},
    {"concurrent_lr_scale": 1.5}])
def test_bad_concurrent_settings_are_one_line_config_errors(option):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**TINY | option).validate()
    message = str(info.value)
    assert "\n" not in message
    assert ("concurrent_lr_scale" if "concurrent_lr_scale" in option else "concurrent") in message


def test_batched_concurrent_instance_norm_runs_reconstruct_as_the_runs_trained_alone(
        ct_image, tmp_path):
    """Two seeds of the CT slice with instance norm (as ``--preset concurrent`` trains) in one
    batch reconstruct the slice within 0.5 dB of the same seeds trained alone. (Weight for weight
    they are equal only up to float32 rounding grown by Adam: the conv biases before a norm
    have a zero gradient up to rounding; tests/test_batched.py checks the weights of concurrent
    scales with norm none in float32 and with instance norm in float64.)"""
    configs = [TrainConfig(**TINY | {"concurrent": 2, "seed": s}) for s in (0, 1)]
    batched = train_batch([ct_image, ct_image], configs, [tmp_path / "a", tmp_path / "b"],
                          progress=False)

    def psnr(pyramid) -> float:  # against the 48-px slice trained on, which spans [-1, 1]
        return 10 * math.log10(4 / float(torch.mean((pyramid.reconstruct(0) - pyramid.reals[0])
                                                    ** 2)))

    for k, config in enumerate(configs):
        alone = train(ct_image, config, tmp_path / f"alone{k}", progress=False)
        assert torch.equal(batched[k].reals[0], alone.reals[0])
        assert psnr(batched[k]) == pytest.approx(psnr(alone), abs=0.5)
        reloaded = load_run(tmp_path / "ab"[k])
        assert reloaded.is_complete and reloaded.metadata["train"]["concurrent"] == 2
    # the seeds are each model's own: the two runs of one scan differ
    assert not torch.allclose(batched[0].reconstruct(0), batched[1].reconstruct(0), atol=1e-3)


def test_the_command_line_trains_concurrent_scales_and_records_them(tmp_path):
    scan = dicom_file("CT_small.dcm")
    result = run_cli("train", scan, "--preset", "paper", "--concurrent", "2", "--out",
                     tmp_path / "paper")
    assert_one_line_error(result, "--norm instance")
    assert not (tmp_path / "paper").exists()
    result = run_cli("train", scan, "--preset", "balanced", "--concurrent", "2", "--max-size",
                     "32", "--iters", "2", "--quiet", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert stored["concurrent"] == 2 and stored["norm"] == "instance" and stored["alpha"] == 10
    # the preset that trains two scales at a time (configs/training.yaml)
    result = run_cli("train", scan, "--preset", "concurrent", "--max-size", "32", "--iters", "2",
                     "--quiet", "--out", tmp_path / "preset")
    assert result.returncode == 0, result.stderr
    stored = json.loads((tmp_path / "preset" / "config.json").read_text())["train"]
    assert (stored["concurrent"], stored["alpha"], stored["gp_every"], stored["max_nfc"]) == \
        (2, 20, 1, 64)
    assert stored["iters"] == 2 and stored["norm"] == "instance"
    pyramid = load_run(tmp_path / "preset")
    assert pyramid.is_complete and torch.isfinite(reconstruct(pyramid)).all()


def test_the_lean_preset_trains_32_channels_where_concurrent_trains_64(tmp_path):
    """``--preset lean`` (configs/training.yaml) is ``concurrent`` with 32 channels at every
    scale: on the CT slice at 64 px (5 scales) the finest generator's convolutions, read from
    the saved weights, are 64 wide with ``concurrent`` and 32 with ``lean``; the run records
    the preset's settings."""
    scan = dicom_file("CT_small.dcm")
    widths = {}
    for preset in ("concurrent", "lean"):
        result = run_cli("train", scan, "--preset", preset, "--max-size", "64", "--iters", "2",
                         "--quiet", "--out", tmp_path / preset)
        assert result.returncode == 0, result.stderr
        weights = load_file(tmp_path / preset / "weights.safetensors")
        widths[preset] = weights["generator.0.features.1.conv.weight"].shape[:2]
        assert weights["generator.4.features.1.conv.weight"].shape[:2] == (32, 32)  # coarsest
        stored = json.loads((tmp_path / preset / "config.json").read_text())["train"]
        assert (stored["concurrent"], stored["alpha"], stored["gp_every"], stored["norm"]) == \
            (2, 20, 1, "instance")
        assert load_run(tmp_path / preset).is_complete
    assert widths == {"concurrent": (64, 64), "lean": (32, 32)}
    assert json.loads((tmp_path / "lean" / "config.json").read_text())["train"]["max_nfc"] == 32
