"""Batched multi-model training: K models in one grouped network train as each would alone."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch

from medsingan.batched import GroupedModels, _amps, group_networks, train_batch
from medsingan.errors import ConfigError
from medsingan.model.blocks import init_weights
from medsingan.model.container import TrainedPyramid
from medsingan.model.networks import Discriminator, Generator
from medsingan.model.noise import Stream, draw_noise, seeded_generator
from medsingan.pyramid import build_image_pyramid, pyramid_shapes, resize
from medsingan.runs import prepare_training, train_scan
from medsingan.train import (
    OneModel,
    ScaleJob,
    TrainConfig,
    _reconstruction_start,
    _Reporter,
    _train_scale,
    load_run,
    train,
)
from tests.conftest import dicom_file, nifti_file


@pytest.fixture(scope="module")
def three_scans() -> list[torch.Tensor]:
    """A CT slice, an MR slice and a slice of an MR volume, each as medsingan maps it, brought
    to one 32 x 32 px geometry."""
    sources = [(dicom_file("CT_small.dcm"), None), (dicom_file("MR_small.dcm"), None),
               (nifti_file("anatomical.nii"), 12)]
    return [resize(prepare_training(path, slice_index=index).image, (32, 32)).clamp(-1, 1)
            for path, index in sources]


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return max(float((x.double() - y.double()).abs().max()) for x, y in pairs)


def _psnr(pyramid: TrainedPyramid) -> float:
    mse = float(torch.mean((pyramid.reconstruct(0) - pyramid.reals[0]) ** 2))
    return 10 * math.log10(4 / mse)  # the images span [-1, 1]


def _history_losses(path: Path) -> torch.Tensor:
    """A run's history.csv as rows of (scale, iter, d_loss, g_adv, rec_loss), read with csv."""
    with path.open(newline="") as f:
        return torch.tensor([[float(row[key]) for key in
                              ("scale", "iter", "d_loss", "g_adv", "rec_loss")]
                             for row in csv.DictReader(f)], dtype=torch.float64)


@pytest.mark.parametrize("concurrent", [1, 2, 3])
def test_each_batched_model_gets_the_weights_it_gets_alone(three_scans, tmp_path, concurrent):
    """Every scale's generator, including (with concurrent scales, ConSinGAN) the coarser ones
    that train on with the finer scales: 2 joint above scale 0 with concurrent 3, one joint
    below a frozen one with concurrent 2."""
    # norm none: every weight has a real gradient (see the float64 test for batch norm)
    # lr_drop_at 0.5: the learning-rate drop (every Adam group's) after the first iteration
    config = TrainConfig(iters=2, max_size=32, min_size=25, norm="none", device="cpu",
                         log_every=1, concurrent=concurrent, lr_drop_at=0.5)
    configs = [config, TrainConfig(**{**config.to_dict(), "betas": config.betas, "seed": 7}),
               config]
    alone = [train(image, cfg, tmp_path / f"alone{k}", progress=False)
             for k, (image, cfg) in enumerate(zip(three_scans, configs, strict=True))]
    batch_dirs = [tmp_path / f"batch{k}" for k in range(3)]
    batched = train_batch(three_scans, configs, batch_dirs, progress=False)
    for single, together, run_dir in zip(alone, batched, batch_dirs, strict=True):
        assert sorted(together.generators) == sorted(single.generators) == [0, 1, 2]
        for scale, generator in single.generators.items():
            assert _max_difference(generator, together.generators[scale]) < 1e-5
            assert together.noise_amps[scale] == pytest.approx(single.noise_amps[scale],
                                                               rel=1e-5)
        reloaded = load_run(run_dir)  # a complete, ordinary run directory
        assert reloaded.is_complete and reloaded.metadata["train"]["concurrent"] == concurrent
        assert torch.allclose(reloaded.reconstruct(0), single.reconstruct(0), atol=1e-5)
        assert (run_dir / "samples_scale_0.png").is_file() and (run_dir / "curves.png").is_file()
        assert reloaded.metadata["progress"]["0"]["batch_models"] == 3
    # each model's history holds its own losses: the rows of the model trained alone
    for k, run_dir in enumerate(batch_dirs):
        ours, theirs = (_history_losses(d / "history.csv")
                        for d in (run_dir, tmp_path / f"alone{k}"))
        assert ours.shape == theirs.shape == (3 * 2, 5)  # 3 scales x 2 iterations
        assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    if concurrent > 1:  # the coarser scales did train on: not the weights they had when done
        early = train(three_scans[0], config, tmp_path / "early", progress=False, last_scale=2)
        assert _max_difference(early.generators[2], batched[0].generators[2]) > 1e-4
    # the seeds are the models' own: the model with seed 7 differs from the same scan at seed 0
    other = train(three_scans[1], config, tmp_path / "seed0", progress=False, last_scale=2)
    assert _max_difference(other.generators[2], batched[1].generators[2]) > 1e-3


def _coarsest_in_float64(three_scans, config: TrainConfig):
    """The three scans' coarsest scale in float64, set up for the single-model trainer (each
    model's pyramid and networks, seeded as :func:`medsingan.train.train` seeds them) and as
    one group of :mod:`medsingan.batched` built from copies of the same networks."""
    shapes = pyramid_shapes(32, 32, config.min_size, config.max_size, config.scale_factor)
    coarsest = len(shapes) - 1
    spec = config.net_spec(1, 0)
    pyramids = []
    for k, image in enumerate(three_scans):
        reals = [r.double() for r in build_image_pyramid(image, shapes)]
        z_star = draw_noise((1, 1, *shapes[-1]), seeded_generator(k, Stream.RECONSTRUCTION))
        pyramid = TrainedPyramid(reals=reals, z_star=z_star.double())
        nets = Generator(spec).double(), Discriminator(spec).double()
        for net in nets:
            init_weights(net, seeded_generator(k, Stream.INIT, coarsest))
        pyramids.append((pyramid, nets))
    job = ScaleJob(
        coarsest,
        TrainedPyramid(reals=[torch.cat([p.reals[s] for p, _ in pyramids], 1)
                              for s in range(len(shapes))],
                       z_star=torch.cat([p.z_star for p, _ in pyramids], 1)),
        group_networks([g for _, (g, _) in pyramids]),
        group_networks([d for _, (_, d) in pyramids]),
        torch.ones(1, 3, 1, 1, dtype=torch.float64),
        torch.zeros(1, 3, *shapes[-1], dtype=torch.float64),
        GroupedModels([seeded_generator(k, Stream.TRAIN_NOISE, coarsest) for k in range(3)], 1))
    return coarsest, pyramids, job


def _train_alone(scale: int, pyramid: TrainedPyramid, nets, amp: float,
                 rec_previous: torch.Tensor, config: TrainConfig, k: int) -> None:
    """Model ``k``'s ``scale`` trained by the single-model trainer, in place."""
    generator, critic = nets
    job = ScaleJob(scale, pyramid, generator, critic, amp, rec_previous,
                   OneModel(seeded_generator(k, Stream.TRAIN_NOISE, scale), 1))
    _train_scale(job, config, _Reporter(False, len(pyramid.reals), config.iters))


def _assert_parts_equal(alone: torch.nn.Module, grouped: torch.nn.Module, k: int,
                        atol: float) -> None:
    for key, value in alone.state_dict().items():
        ours = grouped.state_dict()[key]
        part = ours.chunk(3)[k] if ours.ndim else ours
        assert torch.allclose(part, value, atol=atol, rtol=0), key


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_one_batched_iteration_equals_one_single_iteration_in_float64(three_scans, norm):
    """The paper's batch norm and the fast preset's instance norm, one iteration of the
    coarsest scale: every weight within 1e-5, in float64. (In float32 the conv biases before
    a norm, whose gradient is zero up to rounding, and other weights with tiny gradients take
    Adam steps of +-lr whose sign is the rounding's, in either trainer.)"""
    config = TrainConfig(iters=1, max_size=32, min_size=25, norm=norm, device="cpu")
    coarsest, pyramids, batch = _coarsest_in_float64(three_scans, config)
    initial = [{key: v.clone() for key, v in g.state_dict().items()} for _, (g, _) in pyramids]
    _train_scale(batch, config, _Reporter(False, coarsest + 1, config.iters))
    for k, (pyramid, (generator, critic)) in enumerate(pyramids):
        _train_alone(coarsest, pyramid, (generator, critic), config.coarsest_noise_amp,
                     torch.zeros_like(pyramid.reals[coarsest]), config, k)
        _assert_parts_equal(generator, batch.generator, k, 1e-5)
        _assert_parts_equal(critic, batch.critic, k, 1e-5)
        assert any(not torch.equal(value, initial[k][key])  # it did train
                   for key, value in generator.state_dict().items())


@pytest.fixture
def float64_default():
    """Tensors made without a dtype (the random paths' noise) in float64, for one test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_concurrent_batched_scales_equal_the_single_ones_in_float64(three_scans,
                                                                   float64_default):
    """Instance norm, two scales at a time (``--preset concurrent``), in float64: the coarsest
    scale, then the next with the coarsest training on through its losses, two iterations
    of two generator steps each and the learning-rate drop after the first. That
    scale's networks and the coarsest generator (which moved again) within 1e-6 of the
    single-model trainer's, for each of the three models (2e-8 measured: float64
    rounding, grown by Adam's steps for weights whose gradient is near zero)."""
    config = TrainConfig(iters=2, max_size=32, min_size=25, norm="instance", concurrent=2,
                         g_steps=2, lr_drop_at=0.5, device="cpu")
    coarsest, pyramids, batch = _coarsest_in_float64(three_scans, config)
    scale = coarsest - 1  # trains with the coarsest
    _train_scale(batch, config, _Reporter(False, coarsest + 1, config.iters))
    frozen = batch.pyramid
    frozen.generators[coarsest] = batch.generator.eval().requires_grad_(False)
    frozen.noise_amps[coarsest] = batch.noise_amp
    starts, finest_nets = [], []
    for k, (pyramid, nets) in enumerate(pyramids):
        _train_alone(coarsest, pyramid, nets, config.coarsest_noise_amp,
                     torch.zeros_like(pyramid.reals[coarsest]), config, k)
        pyramid.generators[coarsest] = nets[0].eval().requires_grad_(False)
        pyramid.noise_amps[coarsest] = config.coarsest_noise_amp
        starts.append(_reconstruction_start(pyramid, scale, config))
        # the scale starts from copies of the coarsest's networks (same widths)
        finest_nets.append(tuple(copy.deepcopy(net).train() for net in nets))
    before = copy.deepcopy(frozen.generators[coarsest].state_dict())
    finest = ScaleJob(
        scale, frozen, group_networks([g for g, _ in finest_nets]),
        group_networks([d for _, d in finest_nets]),
        _amps([amp for _, amp in starts], 1, frozen.z_star),
        torch.cat([previous for previous, _ in starts], 1),
        GroupedModels([seeded_generator(k, Stream.TRAIN_NOISE, scale) for k in range(3)], 1))
    _train_scale(finest, config, _Reporter(False, coarsest + 1, config.iters))
    moved = frozen.generators[coarsest].state_dict()
    assert max(float((moved[key] - value).abs().max()) for key, value in before.items()) > 1e-4
    for k, ((pyramid, _), nets, (_, amp)) in enumerate(zip(pyramids, finest_nets, starts,
                                                             strict=True)):
        _train_alone(scale, pyramid, nets, amp, starts[k][0], config, k)
        _assert_parts_equal(nets[0], finest.generator, k, 1e-6)
        _assert_parts_equal(nets[1], finest.critic, k, 1e-6)
        _assert_parts_equal(pyramid.generators[coarsest], frozen.generators[coarsest], k, 1e-6)


def test_tiny_full_runs_reach_the_same_reconstruction_batched_and_alone(three_scans, tmp_path):
    """The fast preset, a short full schedule: the three models' mean reconstruction PSNR
    batched and alone within 0.5 dB, each model's within 1.6 dB. Not closer: float32 training
    with a norm layer is chaotic (Adam's first steps are +-lr whatever a gradient's size, so a
    weight whose gradient is at rounding level steps at random), and runs whose convolutions
    merely round differently end about as far apart as two seeds do (measured here: two
    seeds of one scan up to 1.6 dB apart); the arithmetic itself is checked in float64 above.
    """
    config = TrainConfig(iters=60, max_size=32, min_size=25, norm="instance", max_nfc=64,
                         scale_factor=0.7, gp_every=4, device="cpu")
    alone = [train(image, config, tmp_path / f"alone{k}", progress=False)
             for k, image in enumerate(three_scans)]
    batched = train_batch(three_scans, [config] * 3, [tmp_path / f"b{k}" for k in range(3)],
                          progress=False)
    gaps = []
    for single, together, image in zip(alone, batched, three_scans, strict=True):
        untrained = 10 * math.log10(4 / float(torch.mean(image ** 2)))
        assert _psnr(single) > untrained + 3 and _psnr(together) > untrained + 3  # learnt
        gaps.append(_psnr(together) - _psnr(single))
    # each model within the seed-to-seed spread (1.6 dB measured; 1.14 dB seen for one model
    # on an AMD EPYC, whose convolutions round differently), the mean within 0.5 dB
    assert all(abs(gap) < 1.6 for gap in gaps), gaps
    assert abs(sum(gaps) / len(gaps)) < 0.5, gaps


def test_models_that_cannot_share_a_batch_are_refused_before_anything_is_written(
        three_scans, tmp_path):
    config = TrainConfig(iters=1, max_size=32, min_size=25, device="cpu")
    dirs = [tmp_path / "a", tmp_path / "b"]
    wide = resize(three_scans[1], (26, 32)).clamp(-1, 1)
    cases = [
        ([three_scans[0], wide], [config, config], dirs, "differ in pyramid geometry"),
        (three_scans[:2], [config, TrainConfig(**{**config.to_dict(), "betas": config.betas,
                                                  "iters": 2})], dirs, "share every training"),
        (three_scans[:2], [config, config], [dirs[0], dirs[0]], "share a run directory"),
    ]
    for images, configs, run_dirs, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            train_batch(images, configs, run_dirs, progress=False)
        assert "\n" not in str(error.value)
    assert not any(Path(d).exists() for d in dirs)


def test_cohort_train_batches_scans_of_one_geometry_and_trains_the_rest_alone(tmp_path):
    """CT_small and MR_small (square: one pyramid at 32 px) share a batch; the chest film
    (another aspect ratio) trains in a batch of its own; a rerun skips all three."""
    import shutil

    import pandas as pd

    from medsingan.cohort import Executing, cohort_train
    from medsingan.dataset import FolderOptions, manifest_from_folder

    for label, name in (("a", "CT_small.dcm"), ("b", "MR_small.dcm"), ("a", "RG1_UNCR.dcm")):
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dicom_file(name), tmp_path / "data" / label / name)
    manifest = tmp_path / "real.csv"
    manifest_from_folder(tmp_path / "data", manifest, FolderOptions())
    table = pd.read_csv(manifest, keep_default_na=False).assign(split="train")
    table.to_csv(manifest, index=False)
    runs = tmp_path / "runs"
    executing = Executing(progress=False)
    report = cohort_train(manifest, runs, executing=executing, batch_models=4,
                          overrides={"iters": 3, "max_size": 32})
    assert [r.status for r in report.results] == ["trained"] * 3, report.results
    batched = {}
    for result in report.results:
        pyramid = load_run(runs / result.name)
        assert pyramid.is_complete
        batched[result.name] = pyramid.metadata["progress"]["0"].get("batch_models", 1)
    assert sorted(batched.values()) == [1, 2, 2]
    again = cohort_train(manifest, runs, executing=executing, batch_models=4,
                         overrides={"iters": 3, "max_size": 32})
    assert [r.status for r in again.results] == ["skipped"] * 3
    with pytest.raises(ConfigError, match="--batch-models"):
        cohort_train(manifest, tmp_path / "none", executing=executing, batch_models=0)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("preset", "loss", "concurrent", "together"),
                         [("fast", "aligned-nn", 1, False), ("concurrent", "wgan-gp", 2, True)])
def test_cohort_train_batches_concurrent_scales_and_trains_an_explicit_loss_alone(
        tmp_path, preset, loss, concurrent, together):
    """CT_small and MR_small share one geometry: with --preset concurrent they train as one
    batch; a critic-free loss cannot share the grouped critic step, so --batch-models leaves
    such runs to the single-model trainer. Each run records its settings."""
    import shutil

    import pandas as pd

    from medsingan.cohort import Executing, batch_train_tasks, cohort_train, train_tasks
    from medsingan.dataset import FolderOptions, manifest_from_folder

    for label, name in (("a", "CT_small.dcm"), ("b", "MR_small.dcm")):
        (tmp_path / "data" / label).mkdir(parents=True)
        shutil.copyfile(dicom_file(name), tmp_path / "data" / label / name)
    manifest = tmp_path / "real.csv"
    manifest_from_folder(tmp_path / "data", manifest, FolderOptions())
    pd.read_csv(manifest, keep_default_na=False).assign(split="train").to_csv(manifest,
                                                                               index=False)
    overrides = {"iters": 2, "max_size": 32} | ({"loss": loss} if preset == "fast" else {})
    tasks = train_tasks(manifest, tmp_path / "runs", speed_preset=preset, overrides=overrides)
    batches, _ = batch_train_tasks(tasks, 2)
    assert [len(batch.tasks) for batch in batches] == ([2] if together else [1, 1])
    report = cohort_train(manifest, tmp_path / "runs", executing=Executing(progress=False),
                          batch_models=2, speed_preset=preset, overrides=overrides)
    assert [r.status for r in report.results] == ["trained"] * 2, report.results
    for result in report.results:
        pyramid = load_run(tmp_path / "runs" / result.name)
        assert pyramid.is_complete
        assert pyramid.metadata["train"]["loss"] == loss
        assert pyramid.metadata["train"]["concurrent"] == concurrent
        assert pyramid.metadata["progress"]["0"].get("batch_models", 1) == (2 if together else 1)


def test_a_batch_of_batch_norm_runs_resumes_to_the_uninterrupted_weights(three_scans, tmp_path):
    """The paper's batch norm: a batch stopped after its coarsest scale and resumed ends
    with the weights of the batch trained in one go (the frozen coarser scales, grouped
    again on resume, use their running statistics)."""
    config = TrainConfig(iters=2, max_size=32, min_size=25, norm="batch", device="cpu")
    images = three_scans[:2]
    whole = train_batch(images, [config] * 2, [tmp_path / f"w{k}" for k in range(2)],
                        progress=False)
    parts = [tmp_path / f"p{k}" for k in range(2)]
    train_batch(images, [config] * 2, parts, progress=False, last_scale=2)
    resumed = train_batch(images, [config] * 2, parts, progress=False, resume=True)
    for a, b in zip(whole, resumed, strict=True):
        for scale in a.generators:
            assert _max_difference(a.generators[scale], b.generators[scale]) < 1e-6


def test_one_bad_run_in_a_cohort_batch_fails_alone(tmp_path):
    """A run trained earlier with other settings cannot join the batch: the batch's models
    train alone, the good one is trained and only the bad one is reported."""
    from medsingan.cohort import TrainBatch, TrainTask, _unbatched, train_batch_one

    tasks = tuple(TrainTask(image=str(dicom_file(name)), run_dir=str(tmp_path / name),
                            label="a", split="train", subject_id=name, modality="auto",
                            window=None, speed_preset="fast",
                            overrides={"iters": 2, "max_size": 32}, threads=1)
                  for name in ("CT_small.dcm", "MR_small.dcm"))
    train_scan(Path(tasks[1].image), Path(tasks[1].run_dir), overrides={"iters": 3,
               "max_size": 32}, progress=False, last_scale=2)
    batch = TrainBatch(tasks)
    results = _unbatched(batch, train_batch_one(batch))
    assert [r.status for r in results] == ["trained", "failed"], results
    assert "other settings" in results[1].error and "\n" not in results[1].error
    assert load_run(tmp_path / "CT_small.dcm").is_complete
