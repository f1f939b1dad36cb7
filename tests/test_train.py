"""Training on a real CT slice: reconstruction, samples, run directory, resume, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from safetensors.torch import load_file

from medsingan import train as train_module
from medsingan.errors import ConfigError, RunDirError, TrainingInterrupted
from medsingan.generate import reconstruct, sample
from medsingan.pyramid import resize
from medsingan.train import TrainConfig, load_run, run_summary, train
from tests.conftest import dicom_file

# 128 x 128 CT at max side 32 -> 3 scales (32, 29, 25): tiny but a real pyramid.
TINY = {"max_size": 32, "nfc": 8, "max_nfc": 8, "iters": 6, "log_every": 2, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny images gain nothing from a second thread, and on a busy 2-core machine OpenMP's
    spinning threads can slow training down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ct_image() -> torch.Tensor:
    pixels = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(np.float32)
    unit = (pixels - pixels.min()) / (pixels.max() - pixels.min()) * 2 - 1
    return torch.from_numpy(unit)[None, None]


@pytest.fixture(scope="module")
def short_run(ct_image: torch.Tensor, tmp_path_factory: pytest.TempPathFactory):
    """A short real run: max side 48 px (4 scales), 120 iterations per scale.

    Instance norm: the same per-image statistics in training and sampling (the paper's batch
    norm switches to running averages once frozen, which costs reconstruction accuracy).
    """
    run_dir = tmp_path_factory.mktemp("run") / "ct"
    config = TrainConfig(max_size=48, iters=120, nfc=16, max_nfc=16, norm="instance",
                         log_every=1, device="cpu")
    pyramid = train(ct_image, config, run_dir, extra_config={"source": "CT_small.dcm"},
                    progress=False)
    return run_dir, pyramid


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / float(((a - b) ** 2).mean()))  # peak-to-peak 2 in [-1, 1]


def test_reconstruction_from_z_star_matches_the_scan(short_run):
    _, pyramid = short_run
    assert pyramid.is_complete and pyramid.num_scales == 4
    assert _psnr(reconstruct(pyramid), pyramid.reals[0]) > 28.0  # 31.3 dB here


def test_training_reduces_the_reconstruction_error(short_run):
    run_dir, pyramid = short_run
    rows = run_summary(run_dir)["scales"]
    assert all(r["trained"] and r["iters"] == 120 for r in rows)
    history = train_module._read_history(run_dir / "history.csv", {0, 1, 2, 3})
    coarsest = [r["rec_loss"] for r in history if r["scale"] == 3]
    assert len(coarsest) == 120 and coarsest[-1] < 0.2 * coarsest[0]
    for scale in (2, 1, 0):  # every finer scale improves on its up-sampled input
        upsampled = resize(reconstruct(pyramid, scale + 1), pyramid.shapes[scale])
        real = pyramid.reals[scale]
        assert _psnr(reconstruct(pyramid, scale), real) > _psnr(upsampled, real)


def test_random_samples_differ_from_the_scan_and_each_other(short_run):
    _, pyramid = short_run
    samples = sample(pyramid, 3, seed=5)
    real = pyramid.reals[0][0]
    assert samples.shape == (3, 1, 48, 48)
    assert all(_psnr(s, real) < 30.0 for s in samples)
    assert not torch.allclose(samples[0], samples[1], atol=1e-3)
    assert float(samples.min()) > -1.5 and float(samples.max()) < 1.5


def test_sample_i_does_not_depend_on_batching(short_run):
    _, pyramid = short_run
    many = sample(pyramid, 5, start_scale=2, seed=9, batch_size=2)
    one = sample(pyramid, 1, start_scale=2, seed=9, first_index=3)
    assert torch.allclose(many[3], one[0], atol=1e-6)
    with pytest.raises(ConfigError):
        sample(pyramid, 1, start_scale=7)


def test_run_directory_is_self_describing_and_pickle_free(short_run, monkeypatch):
    run_dir, pyramid = short_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "weights.safetensors", "resume_state.safetensors", "history.csv",
            "curves.png", "samples_scale_0.png", "samples_scale_3.png"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".tmp"))]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["extra"] == {"source": "CT_small.dcm"}
    assert config["geometry"]["shapes"][0] == [48, 48]

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must never be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_run(run_dir)
    assert torch.equal(reconstruct(loaded), reconstruct(pyramid))
    assert loaded.noise_amps == pyramid.noise_amps
    tensors = load_file(str(run_dir / "weights.safetensors"))
    assert {"z_star", "real.0", "noise_amp.3", "generator.0.tail.weight"} <= set(tensors)


def test_summary_lists_sizes_widths_amplitudes_and_times(short_run):
    run_dir, _ = short_run
    summary = run_summary(run_dir)
    assert summary["complete"] and summary["num_scales"] == 4
    first = summary["scales"][3]
    assert (first["height"], first["channels"], first["noise_amp"]) == (25, 16, 1.0)
    assert all(s["seconds"] > 0 for s in summary["scales"])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "weights.safetensors")) | load_file(
        str(run_dir / "resume_state.safetensors"))


def test_resume_after_interruption_equals_an_uninterrupted_run(ct_image, tmp_path, monkeypatch):
    config = TrainConfig(**TINY)
    train(ct_image, config, tmp_path / "whole", progress=False)

    real_train_scale = train_module._train_scale

    def interrupted(job, *args):
        if job.scale == 1:
            real_train_scale(job, *args)  # half-way work on scale 1 is lost, not saved
            raise KeyboardInterrupt
        return real_train_scale(job, *args)

    monkeypatch.setattr(train_module, "_train_scale", interrupted)
    with pytest.raises(TrainingInterrupted, match="scales 2..2 are saved"):
        train(ct_image, config, tmp_path / "split", progress=False)
    monkeypatch.setattr(train_module, "_train_scale", real_train_scale)
    assert load_run(tmp_path / "split").finest_trained == 2
    (tmp_path / "split" / ".weights.safetensors.x1y2.tmp").write_bytes(b"half")  # as by kill -9
    train(ct_image, config, tmp_path / "split", resume=True, progress=False)

    assert not list((tmp_path / "split").glob(".*.tmp"))
    whole, split = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_last_scale_stops_early_and_resume_finishes(ct_image, tmp_path):
    config = TrainConfig(**TINY)
    partial = train(ct_image, config, tmp_path, progress=False, last_scale=1)
    assert sorted(partial.generators) == [1, 2]
    assert not run_summary(tmp_path)["complete"]
    assert train(ct_image, config, tmp_path, resume=True, progress=False).is_complete


def test_existing_run_is_not_overwritten_by_accident(ct_image, tmp_path):
    config = TrainConfig(**TINY)
    train(ct_image, config, tmp_path, progress=False, last_scale=2)
    with pytest.raises(RunDirError, match="--overwrite"):
        train(ct_image, config, tmp_path, progress=False)
    with pytest.raises(RunDirError, match="iters 6 -> 7"):
        train(ct_image, TrainConfig(**TINY | {"iters": 7}), tmp_path, resume=True,
              progress=False)
    with pytest.raises(RunDirError, match="image differs"):
        train(-ct_image, config, tmp_path, resume=True, progress=False)
    fresh = train(ct_image, TrainConfig(**TINY | {"iters": 2}), tmp_path, overwrite=True,
                  progress=False)
    assert fresh.is_complete
    assert run_summary(tmp_path)["scales"][0]["iters"] == 2


@pytest.mark.parametrize(
    "option",
    [{"norm": "instance"}, {"norm": "none"}, {"activation": "relu"}, {"activation": "elu"},
     {"padding": "reflect"}, {"padding": "circular"}, {"gp_every": 2}, {"alpha": 0.0},
     {"amp": True}],
)
def test_every_option_trains(ct_image, tmp_path, option):
    config = TrainConfig(**TINY | {"max_size": 25, "iters": 2} | option)
    pyramid = train(ct_image, config, tmp_path, progress=False)
    assert pyramid.is_complete
    assert torch.isfinite(reconstruct(pyramid)).all()


@pytest.mark.parametrize(
    "option",
    [{"max_size": 20, "min_size": 25}, {"scale_factor": 1.2}, {"scale_factor": 0.0},
     {"iters": 0}, {"lr_g": -1.0}, {"norm": "layer"}, {"gp_every": 0}, {"device": "toaster"},
     {"min_size": 9}],
)
def test_bad_hyper_parameters_raise_one_line_config_errors(option):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**option).validate()
    assert "\n" not in str(info.value)


def test_config_round_trips_through_a_dict():
    config = TrainConfig(iters=10, betas=(0.4, 0.9), norm="instance")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"iterations": 10})
    with pytest.raises(ConfigError, match="must be int"):
        TrainConfig.from_dict({"iters": "many"})


def test_missing_or_corrupt_run_directories_raise_run_dir_errors(ct_image, tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="config.json is missing"):
        load_run(tmp_path)
    run_dir = tmp_path / "run"
    train(ct_image, TrainConfig(**TINY | {"max_size": 25, "iters": 1}), run_dir, progress=False)
    weights = run_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(RunDirError, match="corrupt"):
        load_run(run_dir)
    weights.unlink()
    with pytest.raises(RunDirError, match="no finished scale"):
        load_run(run_dir)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="corrupt") as info:
        load_run(run_dir)
    assert "\n" not in str(info.value)
