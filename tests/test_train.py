"""Training on a real CT slice: reconstruction, samples, run directory, resume, errors; the
explicit patch losses that replace the critic (``loss``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsingan import train as train_module
from medsingan.augment import AugmentRequest, augment
from medsingan.errors import ConfigError, RunDirError, TrainingInterrupted
from medsingan.generate import reconstruct, sample
from medsingan.manifest import read_manifest
from medsingan.manipulate import SuperResolveRequest, super_resolve
from medsingan.pyramid import resize
from medsingan.runs import train_scan
from medsingan.train import TrainConfig, load_run, run_summary, train
from tests.cli.in_process import assert_one_line_error_in_process, run_in_process
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
    # a run written before the explicit losses existed: their defaults (WGAN-GP) apply
    stored = json.loads((tmp_path / "config.json").read_text())
    for key in ("loss", "patch_size", "patch_stride", "patches"):
        del stored["train"][key]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert run_summary(tmp_path)["train"].get("loss") is None
    assert train(ct_image, config, tmp_path, resume=True, progress=False).is_complete
    assert json.loads((tmp_path / "config.json").read_text())["train"]["loss"] == "wgan-gp"


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
     {"min_size": 9}, {"loss": "hinge"}, {"patch_size": 26}, {"patch_size": 0}, {"patches": 0},
     {"patches": 1}, {"patch_stride": 0}],
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


# --- explicit patch losses instead of the critic ------------------------------------------

EXPLICIT = ("frechet", "nn-patch", "aligned-nn")
# the 128 x 128 CT file at 32 px: 3 scales (32, 29, 25)
EXPLICIT_TINY = {"max_size": 32, "min_size": 25, "nfc": 8, "max_nfc": 8, "iters": 20,
                 "log_every": 1, "device": "cpu"}


def _train_explicit(run_dir: Path, loss: str, **kwargs) -> Path:
    train_scan(dicom_file("CT_small.dcm"), run_dir, progress=False,
               overrides=EXPLICIT_TINY | {"loss": loss}, **kwargs)
    return run_dir


@pytest.fixture(scope="module")
def explicit_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run of each explicit loss, on the real CT file as ``train`` reads it."""
    folder = tmp_path_factory.mktemp("explicit")
    return {loss: _train_explicit(folder / loss, loss) for loss in EXPLICIT}


def _history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("loss", EXPLICIT)
def test_explicit_losses_train_without_a_critic(explicit_runs, loss):
    run_dir = explicit_runs[loss]
    stored = json.loads((run_dir / "config.json").read_text())["train"]
    assert (stored["loss"], stored["patch_size"], stored["patch_stride"], stored["patches"]) \
        == (loss, 7, 1, 2048)
    assert not (run_dir / "resume_state.safetensors").exists()  # no critic to keep
    rows = _history(run_dir)
    assert {row["scale"] for row in rows} == {"0", "1", "2"}
    for scale in ("2", "1", "0"):  # every scale's reconstruction improves while it trains
        ours = [row for row in rows if row["scale"] == scale]
        assert len(ours) == 20
        assert float(ours[-1]["rec_loss"]) < float(ours[0]["rec_loss"])
        assert all(math.isnan(float(r["d_loss"])) and float(r["g_adv"]) >= 0 for r in ours)


@pytest.mark.parametrize("loss", ["frechet", "nn-patch"])
def test_the_explicit_loss_alone_trains_the_generator(tmp_path, loss):
    """Without the reconstruction term (alpha 0) the coarsest scale's logged patch loss
    falls: its gradient reaches the generator (a loss only logged would stay where it is).
    (aligned-nn's falls by a few % only in 20 iterations; it shares this code path.)"""
    run_dir = tmp_path / loss
    train_scan(dicom_file("CT_small.dcm"), run_dir, progress=False, last_scale=2,
               overrides=EXPLICIT_TINY | {"loss": loss, "alpha": 0.0})
    values = [float(row["g_adv"]) for row in _history(run_dir)]
    assert len(values) == 20
    assert sum(values[-5:]) / 5 < 0.8 * sum(values[:5]) / 5, values


def test_info_names_an_explicit_loss(explicit_runs, monkeypatch, capsys):
    code, out, _ = run_in_process(monkeypatch, capsys, "info", explicit_runs["nn-patch"])
    assert code == 0 and "loss nn-patch (7 px patches)" in out


@pytest.mark.parametrize("loss", EXPLICIT)
def test_explicit_loss_samples_differ_from_the_scan_and_each_other(explicit_runs, loss):
    pyramid = load_run(explicit_runs[loss])
    real = pyramid.reals[0][0]
    samples = sample(pyramid, 3, seed=2)
    assert all(_psnr(s, real) < 30.0 for s in samples)
    assert not torch.allclose(samples[0], samples[1], atol=1e-3)
    assert _psnr(reconstruct(pyramid), real) > max(_psnr(s, real) for s in samples)


def test_an_explicit_loss_run_resumes_to_the_uninterrupted_weights(explicit_runs, tmp_path):
    run_dir = _train_explicit(tmp_path / "run", "nn-patch", last_scale=1)
    assert load_run(run_dir).finest_trained == 1
    _train_explicit(run_dir, "nn-patch", resume=True)
    whole = load_file(str(explicit_runs["nn-patch"] / "weights.safetensors"))
    resumed = load_file(str(run_dir / "weights.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(RunDirError, match="loss 'nn-patch' -> 'frechet'"):
        _train_explicit(run_dir, "frechet", resume=True)


def test_samples_and_edits_of_an_explicit_loss_run_name_it(explicit_runs, tmp_path):
    run_dir = explicit_runs["aligned-nn"]
    drawn = augment(AugmentRequest(run_dir=run_dir, n=2, out=tmp_path / "samples",
                                   manifest=tmp_path / "samples.csv", sifid=False,
                                   progress=False, device="cpu"))
    assert read_manifest(drawn.manifest)["engine"].tolist() == ["singan-aligned-nn"] * 2
    assert drawn.summary["engine"] == "singan-aligned-nn"
    larger = super_resolve(SuperResolveRequest(run_dir=run_dir, factor=1.5,
                                               out=tmp_path / "sr",
                                               manifest=tmp_path / "sr.csv"))
    assert read_manifest(larger.manifest)["engine"].tolist() == ["singan-aligned-nn"]


@pytest.mark.parametrize(("args", "fragment"), [
    (("--loss", "hinge"), "--loss"),
    (("--loss", "nn-patch", "--patch-size", "26"), "patch_size 26 px is larger"),
    (("--loss", "frechet", "--patches", "0"), "patches must be at least 2"),
    (("--loss", "frechet", "--patch-size", "25"), "needs at least 2 patches"),
    (("--loss", "frechet", "--patch-stride", "30"), "needs at least 2 patches"),
])
def test_bad_loss_settings_stop_in_one_line_before_writing(tmp_path, monkeypatch, capsys,
                                                            args, fragment):
    result = run_in_process(monkeypatch, capsys, "train", dicom_file("CT_small.dcm"),
                            "--out", tmp_path / "run", "--max-size", "32", "--quiet", *args)
    assert_one_line_error_in_process(result, fragment)
    assert not (tmp_path / "run").exists()
