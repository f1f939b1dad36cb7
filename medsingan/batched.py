"""Batched multi-model training: K scans of one geometry trained together as one network.

Every network of the K models at a scale is packed into one *grouped* network: each
convolution becomes a convolution with ``groups=K`` whose weight is the K models' weights
stacked along the output channels, each normalisation layer the K layers' channels side by
side. Model ``k`` owns channels ``[k*C, (k+1)*C)`` of the image, and no layer mixes channels of
different groups, so the grouped network computes exactly the K networks side by side (batch
and instance norm of a single image normalise each channel by its own statistics). The loss
is the sum of the K models' own losses, whose gradient with respect to model ``k``'s weights is
that model's own gradient; Adam works element by element, so one Adam over the stacked weights
takes the K models' own steps. Each model draws its noise from its own seeded streams, in the
order :mod:`medsingan.train` does, and keeps its own noise amplitudes, history, scores and run
directory: training K models batched gives each the weights it gets trained alone (up to
float rounding). The iterations are the single-model trainer's own loop
(:func:`medsingan.train._train_scale`); what differs per model (noise streams, loss means,
gradient penalty) is :class:`GroupedModels`. With concurrent scales (ConSinGAN,
``config.concurrent > 1``) the coarser grouped generators of
:func:`~medsingan.train.joint_scales` train on inside the grouped frozen pyramid, each at its
own learning rate, and are split back into the K models after the scale.
Runs with a ``--crop`` window or a critic-free loss train alone (:func:`why_not_batchable`).

What it saves is launch and interpreter overhead: the small convolutions of SinGAN's coarse
scales leave a CPU or GPU mostly idle, and K of them in one launch keep it busy.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsingan.errors import ConfigError, TrainingInterrupted
from medsingan.model.blocks import InstanceNorm
from medsingan.model.container import TrainedPyramid
from medsingan.model.networks import Discriminator, Generator
from medsingan.model.noise import Stream, draw_noise, seeded_generator
from medsingan.monitor import MonitorOptions, ScaleScorer, training_sifid
from medsingan.pyramid import pyramid_shapes
from medsingan.train import (
    CURVES_REDRAW_SECONDS,
    DEFAULT_LOSS,
    OpenedRun,
    ScaleJob,
    TrainConfig,
    _check_image,
    _init_networks,
    _reconstruction_start,
    _Reporter,
    _save_curves,
    _save_scale,
    _train_scale,
    _trim_heap,
    joint_scales,
    open_run,
)

# TrainConfig fields that may differ between the models of one batch.
_PER_MODEL = ("seed",)


class BatchProgressError(ConfigError):
    """The runs of a batch stopped at different scales: they cannot resume as one batch."""


def group_networks(networks: Sequence[nn.Module]) -> nn.Module:
    """One network computing ``networks`` (of identical structure) side by side on
    ``(B, K*C, H, W)``: model ``k`` reads and writes channel group ``k``.

    >>> from medsingan.model.networks import NetSpec
    >>> nets = [Discriminator(NetSpec(width=8)) for _ in range(3)]
    >>> x = torch.randn(1, 3, 20, 20)
    >>> y = group_networks(nets)(x)
    >>> all(torch.allclose(y[:, k:k + 1], nets[k](x[:, k:k + 1]), atol=1e-6) for k in range(3))
    True
    """
    k = len(networks)
    grouped = copy.deepcopy(networks[0])
    for parent in list(grouped.modules()):
        for name, child in list(parent.named_children()):
            wide = _widened(child, k)
            if wide is not None:
                setattr(parent, name, wide)
    states = [network.state_dict() for network in networks]
    grouped.load_state_dict({key: torch.cat([state[key] for state in states])
                             if value.ndim else value for key, value in states[0].items()})
    # the new layers start in training mode: take the models' mode (a frozen generator's
    # batch norm must use its running statistics) and whether their weights train
    grouped.train(networks[0].training)
    for wide, narrow in zip(grouped.parameters(), networks[0].parameters(), strict=True):
        wide.requires_grad_(narrow.requires_grad)
    return grouped


def _widened(layer: nn.Module, k: int) -> nn.Module | None:
    """``layer`` for K channel groups (``None``: a container or a layer without weights, kept)."""
    tensor = next(iter([*layer.parameters(recurse=False), *layer.buffers(recurse=False)]), None)
    if tensor is None:
        return None
    like = {"dtype": tensor.dtype if tensor.is_floating_point() else None,
            "device": tensor.device}
    if isinstance(layer, nn.Conv2d):
        if layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.padding != (0, 0):
            raise ValueError("only unpadded, unstrided convolutions can be grouped")
        return nn.Conv2d(k * layer.in_channels, k * layer.out_channels, layer.kernel_size,
                         groups=k * layer.groups, bias=layer.bias is not None, **like)
    if isinstance(layer, InstanceNorm):
        return InstanceNorm(k * layer.num_features, eps=layer.eps, affine=layer.affine, **like)
    if isinstance(layer, nn.BatchNorm2d):
        return nn.BatchNorm2d(k * layer.num_features, eps=layer.eps, momentum=layer.momentum,
                              affine=layer.affine, **like)
    raise ValueError(f"cannot group a {type(layer).__name__} layer")


def split_network(grouped: nn.Module, networks: Sequence[nn.Module]) -> None:
    """Copy the weights of model ``k`` of ``grouped`` into ``networks[k]`` (in place)."""
    chunks = {key: value.chunk(len(networks)) if value.ndim else [value] * len(networks)
              for key, value in grouped.state_dict().items()}
    for k, network in enumerate(networks):
        network.load_state_dict({key: parts[k] for key, parts in chunks.items()})


def per_model_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of each model's channel group of ``(1, K*C, h, w)``: shape ``(K,)``."""
    return x.float().reshape(k, -1).mean(dim=1)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(tensors), dim=1)


def _amps(values: Sequence[float], channels: int, like: torch.Tensor) -> torch.Tensor:
    """Per-model factors (noise amplitudes, interpolation weights) as ``(1, K*C, 1, 1)``, in
    the dtype and on the device of ``like``."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).repeat_interleave(
        channels).view(1, -1, 1, 1)


class GroupedModels:
    """:class:`medsingan.train.Models` for K grouped models (model ``k`` on channels
    ``[k*C, (k+1)*C)``): each model's noise from its own stream, each model's loss means and
    gradient penalty, ``(K,)``. No single stream (``rng``): no crop windows, no patch loss."""

    rng = None

    def __init__(self, rngs: Sequence[torch.Generator], channels: int) -> None:
        self.rngs, self.channels, self.k = list(rngs), channels, len(rngs)

    def noise(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Each model's next unit noise, drawn as the single-model trainer draws it."""
        return _stack([draw_noise((1, self.channels, *size), rng, device) for rng in self.rngs])

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return per_model_mean(x, self.k)

    def mse(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return per_model_mean((x.float() - target) ** 2, self.k)

    def penalty(self, critic: Discriminator, real: torch.Tensor, fake: torch.Tensor
                ) -> torch.Tensor:
        """Each model's WGAN-GP penalty (see :func:`medsingan.train.gradient_penalty`)."""
        a = _amps([float(torch.rand((), generator=rng)) for rng in self.rngs], self.channels,
                  real)
        mixed = (a * real + (1 - a) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
        _, _, h, w = grad.shape
        norms = grad.reshape(self.k, self.channels, h, w).norm(2, dim=1)
        return ((norms - 1) ** 2).reshape(self.k, -1).mean(dim=1)


def batch_key(image: torch.Tensor, config: TrainConfig) -> tuple[Any, ...]:
    """What models must share to train in one batch: channels, pyramid shapes and every
    setting but the per-model ones (seed, log interval)."""
    shapes = pyramid_shapes(image.shape[-2], image.shape[-1], config.min_size, config.max_size,
                            config.scale_factor)
    settings = json.dumps({k: v for k, v in config.to_dict().items() if k not in _PER_MODEL},
                          sort_keys=True)
    return image.shape[1], tuple(shapes), settings


def why_not_batchable(config: TrainConfig) -> str | None:
    """Why a model trained with ``config`` cannot share a batch (one line), or ``None``."""
    if config.crop:
        return ("batched training trains on whole scales (crop 0): train cropped runs one "
                "model at a time")
    if config.loss != DEFAULT_LOSS:
        return (f"batched training trains the {DEFAULT_LOSS} critic only (--loss {config.loss} "
                "trains one model at a time)")
    return None


def _check_batch(images: Sequence[torch.Tensor], configs: Sequence[TrainConfig],
                 run_dirs: Sequence[Path]) -> list[tuple[int, int]]:
    """ConfigError unless the models can train as one batch; returns their pyramid shapes."""
    if not images or len(images) != len(configs) or len(images) != len(run_dirs):
        raise ConfigError("a batch needs one image, one config and one run directory per model")
    if len({Path(d).resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError("two models of a batch share a run directory")
    keys = []
    for image, config in zip(images, configs, strict=True):
        config.validate()
        if (reason := why_not_batchable(config)) is not None:
            raise ConfigError(reason)
        keys.append(batch_key(image, config))
    if len({key[:2] for key in keys}) > 1:
        raise ConfigError("the scans of a batch differ in pyramid geometry (size or channels): "
                          "batch scans of one size only")
    if len({key[2] for key in keys}) > 1:
        raise ConfigError("the models of a batch must share every training setting but "
                          "the seed")
    return list(keys[0][1])


def train_batch(images: Sequence[torch.Tensor], configs: Sequence[TrainConfig],
                run_dirs: Sequence[Path], *, extras: Sequence[dict[str, Any] | None] | None = None,
                resume: bool = False, overwrite: bool = False, progress: bool = True,
                last_scale: int = 0, monitor: MonitorOptions | None = None
                ) -> list[TrainedPyramid]:
    """Train K SinGAN models at once, one per image, each into its own run directory.

    Same arguments as :func:`medsingan.train.train`, one per model; the images must give the
    same pyramid (size and channels) and the configs may differ in ``seed`` only. Each run
    directory ends up as :func:`~medsingan.train.train` writes it, with weights equal to
    training that model alone (up to float rounding); its per-scale ``seconds`` are its share
    (1/K) of the batch's time, and ``batch_models`` records K. ``resume`` continues the runs
    found and starts the others (a cohort task's rule); resuming needs every model at the
    same finished scale.

    Raises:
        BatchProgressError: runs that stopped at different scales (resume them one at a time).
        ConfigError: models that cannot share a batch; the rest as :func:`~medsingan.train.train`.
    """
    monitor = (monitor or MonitorOptions()).validate()
    if monitor.tensorboard is not None:
        raise ConfigError("--tensorboard follows one model: train without batching")
    images = [_check_image(image) for image in images]
    shapes = _check_batch(images, configs, run_dirs)
    if not 0 <= last_scale < len(shapes):
        raise ConfigError(f"last_scale must lie in 0..{len(shapes) - 1}, got {last_scale}")
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: choose one")
    config = configs[0]
    device = config.resolved_device()
    scorer = ScaleScorer(training_sifid(monitor, device))
    models = [open_run(image, cfg, Path(run_dir), extra, shapes, resume, overwrite)
              for image, cfg, run_dir, extra in zip(images, configs, run_dirs,
                                                    extras or [None] * len(images), strict=True)]
    finest = {m.pyramid.finest_trained for m in models}
    if len(finest) > 1:
        raise BatchProgressError("the runs of a batch stopped at different scales: resume "
                                 "them one at a time")
    for model in models:
        model.pyramid.to(device)
    channels, k, coarsest = images[0].shape[1], len(models), len(shapes) - 1
    frozen = TrainedPyramid(reals=[_stack([m.pyramid.reals[s] for m in models])
                                   for s in range(len(shapes))],
                            z_star=_stack([m.pyramid.z_star for m in models]))
    for scale in sorted(models[0].pyramid.generators):
        frozen.generators[scale] = group_networks(
            [m.pyramid.generators[scale] for m in models]).to(device).eval()
        frozen.noise_amps[scale] = _amps([m.pyramid.noise_amps[scale] for m in models],
                                         channels, frozen.z_star)
    report = _Reporter(progress, len(shapes), config.iters)
    scale = saved = finest.pop()
    curves_stale = False  # as train.train: curves.png redrawn after long scales and at the end
    try:
        for scale in range(saved - 1, last_scale - 1, -1):
            spec = config.net_spec(channels, coarsest - scale)
            nets = [_init_networks(spec, m.pyramid, m.critics, scale, m.config, device)
                    for m in models]
            starts = [_reconstruction_start(m.pyramid, scale, m.config) for m in models]
            _trim_heap()
            grouped_critic = group_networks([d for _, d in nets]).to(device)
            job = ScaleJob(
                scale, frozen, group_networks([g for g, _ in nets]).to(device), grouped_critic,
                _amps([amp for _, amp in starts], channels, frozen.z_star),
                _stack([previous for previous, _ in starts]),
                GroupedModels([seeded_generator(m.config.seed, Stream.TRAIN_NOISE, scale)
                               for m in models], channels))
            started = time.perf_counter()
            with report.scale(scale):
                rows = _train_scale(job, config, report)
            seconds = time.perf_counter() - started
            split_network(job.generator, [g for g, _ in nets])
            split_network(grouped_critic, [d for _, d in nets])
            for s in joint_scales(scale, coarsest, config):  # trained on with this scale
                split_network(frozen.generators[s], [m.pyramid.generators[s] for m in models])
            frozen.generators[scale] = job.generator.eval().requires_grad_(False)
            frozen.noise_amps[scale] = job.noise_amp
            for model, (generator, critic), (_, amp), model_rows in zip(
                    models, nets, starts, rows, strict=True):
                _finish_scale(model, scale, generator, critic, amp, model_rows, seconds, k,
                              scorer, monitor)
                report.finished(scale, shapes[scale], spec.width, amp, model_rows,
                                model.metadata["progress"][str(scale)]["scores"])
            saved, curves_stale = scale, seconds < CURVES_REDRAW_SECONDS
            if not curves_stale:
                _draw_curves(models)
            _trim_heap()
        if curves_stale:
            _draw_curves(models)
    except KeyboardInterrupt:
        if curves_stale:
            _draw_curves(models)
        done = sorted({m.pyramid.finest_trained for m in models})
        state = ("nothing is saved" if done == [coarsest + 1] else
                 f"the runs are saved down to scale {done[0]}" if len(done) == 1 else
                 f"the runs are saved down to scales {', '.join(map(str, done))} (resume "
                 "them one at a time)")
        raise TrainingInterrupted(f"training interrupted at scale {scale}; {state}: continue "
                                  "with --resume") from None
    return [m.pyramid for m in models]


def _draw_curves(models: Sequence[OpenedRun]) -> None:
    for model in models:
        if model.pyramid.generators:
            _save_curves(model.run_dir, model.history, model.metadata, model.pyramid.noise_amps)


def _finish_scale(model: OpenedRun, scale: int, generator: Generator, critic: Discriminator,
                  amp: float, rows: list[dict[str, float]], seconds: float, k: int,
                  scorer: ScaleScorer, monitor: MonitorOptions) -> None:
    """Freeze one model's scale and save it as the single-model trainer does."""
    model.pyramid.generators[scale] = generator.eval().requires_grad_(False)
    model.pyramid.noise_amps[scale] = amp
    model.critics[scale] = critic.eval().requires_grad_(False)
    model.history += rows
    # a model's share of the batch's time: the K runs' seconds add up to the wall time
    model.metadata["progress"][str(scale)] = {"iters": model.config.iters,
                                              "seconds": seconds / k, "batch_models": k}
    _save_scale(model.run_dir, model.pyramid, model.critics, model.history, model.metadata,
                scale, model.config.seed, scorer, monitor.score_samples)
