"""SinGAN training, coarse to fine, with atomic per-scale checkpoints and exact resume.

Each scale ``n`` (0 = finest, ``N`` = coarsest) trains a generator ``G_n`` and a patch critic
``D_n`` with WGAN-GP plus ``alpha`` times the reconstruction MSE, then is frozen. With an
explicit ``loss`` (``frechet``, ``nn-patch``, ``aligned-nn``: :mod:`medsingan.model.patch_losses`)
no critic exists: the generator's adversarial term is that loss between patches of its random
output and of the scale's real image, everything else unchanged:

* adversarial path: ``fake = G_n(amp_n * z + up(random output of scale n+1))``, a new ``z`` and a
  new random coarser output (computed without gradients) every iteration;
* reconstruction path: z* at the coarsest scale, zeros above; the frozen coarser output on
  this path is computed once per scale;
* ``amp_N = coarsest_noise_amp``; ``amp_n = noise_amp_factor * RMSE(real_n, up(rec_{n+1}))``.

With ``concurrent = K > 1`` (ConSinGAN) the ``K - 1`` scales above ``n`` are not frozen while
``n`` trains: both paths run through them with gradients, every generator step, and their
weights move at ``concurrent_lr_scale`` per scale up of ``n``'s rate; ``amp_n`` is still set
from the coarser reconstruction as it is when ``n`` starts, and kept (as ConSinGAN does).

Every random draw of scale ``n`` comes from a generator seeded by ``(seed, n)``, so resuming after
the last finished scale gives the same weights as an uninterrupted run (on the same device).

Run directory layout (all writes atomic):

* ``config.json``: hyper-parameters, caller's ``extra`` (source, preset, intensity mapping),
  geometry, package version, and per-scale progress (iterations, seconds);
* ``weights.safetensors``: see :mod:`medsingan.model.serialization` (the commit point: a scale
  counts as finished once it is in this file);
* ``resume_state.safetensors``: the discriminators (the next scale starts from the last one);
  optimisers restart at every scale, as in the paper, so they need no state; an explicit-loss
  run has no critic and no such file;
* ``history.csv`` (an explicit-loss run's ``g_adv`` is its patch loss, ``d_loss`` and ``gp``
  are ``nan``), ``samples_scale_<n>.png`` (real, reconstruction, 3 samples) after each
  scale; ``curves.png`` (:mod:`medsingan.plots`) after each scale that took a minute or more,
  and when training stops (finished, ``last_scale`` reached, Ctrl-C);
* ``scales.csv``: one row per finished scale: size, noise amplitude, time, the last logged
  reconstruction MSE, and the scores of a few random samples of that scale against the real
  image at that scale (patch SWD always, SIFID when the Inception weights are present; see
  :mod:`medsingan.monitor`), also kept per sample in ``config.json``'s progress.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import medsingan
from medsingan.devices import parse_device, resolve_device
from medsingan.errors import ConfigError, InvalidImageError, RunDirError, TrainingInterrupted
from medsingan.generate import sample
from medsingan.masks import mask_channels
from medsingan.model.blocks import ACTIVATIONS, NORMS, PADDINGS, init_weights
from medsingan.model.container import TrainedPyramid
from medsingan.model.networks import Discriminator, Generator, NetSpec, scale_width
from medsingan.model.noise import Stream, check_seed, draw_noise, seeded_generator
from medsingan.model.patch_losses import LOSSES as PATCH_LOSSES
from medsingan.model.patch_losses import PatchLoss
from medsingan.model.previews import save_sample_sheet
from medsingan.model.serialization import (
    atomic_write,
    load_networks,
    load_pyramid,
    save_networks,
    save_pyramid,
)
from medsingan.monitor import (
    MonitorOptions,
    ScaleScorer,
    TensorBoardLog,
    mean,
    median,
    training_sifid,
)
from medsingan.plots import save_training_curves
from medsingan.pyramid import (
    build_image_pyramid,
    effective_scale_factor,
    pyramid_shapes,
    resize,
    validate_geometry,
)
from medsingan.source_paths import with_absolute_sources, with_relative_sources

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
RESUME_FILE = "resume_state.safetensors"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
SAMPLES_PATTERN = "samples_scale_{}.png"
HISTORY_COLUMNS = ("scale", "iter", "d_loss", "g_adv", "rec_loss", "gp", "lr", "seconds")
SCALES_FILE = "scales.csv"
# curves.png is redrawn after a scale that trained this long (the drawing, about a second, is
# then under 2% of it), and always when training stops
CURVES_REDRAW_SECONDS = 60.0
SCALE_COLUMNS = ("scale", "height", "width", "noise_amp", "iters", "seconds", "rec_loss",
                 "samples", "patch_swd_median", "patch_swd_mean", "sifid_median", "sifid_mean",
                 "sifid_variant", "score_seconds")
RUN_FORMAT = "medsingan-run"

# Settings that may change on resume without changing the result's meaning.
_RESUME_MUTABLE = ("device", "log_every")
DEFAULT_LOSS = "wgan-gp"
LOSSES = (DEFAULT_LOSS, *PATCH_LOSSES)


@dataclass
class TrainConfig:
    """Every training hyper-parameter; the defaults are the paper's (official code's).

    Attributes:
        iters: iterations per scale.
        lr_g, lr_d: Adam learning rates of generator and critic.
        betas: Adam betas.
        d_steps, g_steps: critic and generator steps per iteration.
        gp_weight: WGAN-GP penalty weight.
        gp_every: apply the penalty on every k-th critic step only (lazy regularisation, scaled
            by k to keep its strength); 1 = every step, as the paper.
        alpha: weight of the reconstruction MSE.
        lr_drop_at: fraction of ``iters`` after which both learning rates are multiplied by
            ``lr_drop_factor``.
        coarsest_noise_amp: noise amplitude of the coarsest scale.
        noise_amp_factor: finer scales use this times the RMSE of the up-sampled reconstruction.
        min_size, max_size, scale_factor: pyramid geometry (see :mod:`medsingan.pyramid`).
        nfc, max_nfc: width at the coarsest scale, doubled every 4 scales up to ``max_nfc``.
        num_layers, kernel_size: convolutions per network and their size (receptive field
            ``num_layers * (kernel_size - 1) + 1``).
        norm, activation, padding: see :mod:`medsingan.model.blocks`.
        amp: run the convolutions in bfloat16 (autocast; fast on CPUs with AVX512-BF16 or AMX
            and on recent GPUs); losses, gradients and weights stay float32.
        seed: the run's random seed.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        log_every: write a history row every this many iterations (and the last one).
        loss: ``wgan-gp`` (the paper's critic) or an explicit patch loss replacing it:
            ``frechet``, ``nn-patch`` or ``aligned-nn`` (:mod:`medsingan.model.patch_losses`);
            the critic's settings (``lr_d``, ``d_steps``, ``gp_*``) are then unused.
        patch_size: side of the explicit loss's square patches, px. 7 (GPNN's and GPDM's
            patch, within the networks' 11-px receptive field): the 25-px coarsest scale has
            361 of them, enough to estimate the Fréchet loss's 49-dimensional covariance (the
            receptive field's 11-px patches would give 225 for 121 dimensions), and the
            nearest-neighbour search costs ``d = 49`` per pair instead of 121.
        patch_stride: the patches lie on a grid of this many px (1: every position).
        patches: patches drawn per generator step (all of the grid's when it has fewer): the
            generated ones, and for ``nn-patch`` as many real ones, a new random subset each
            step, whose nearest neighbours are exact.
        concurrent: scales trained together (ConSinGAN, Hinz et al. 2021): while a scale
            trains, the ``concurrent - 1`` coarser scales above it train on through its
            losses (its random samples and its reconstruction pass through them), each with
            ``concurrent_lr_scale`` times the learning rate of the scale below it. 1 = one
            scale at a time, as the paper. Needs instance or no norm (a frozen batch norm
            would change its meaning).
        concurrent_lr_scale: see ``concurrent``.
        crop: train each scale larger than ``crop`` px on a random ``crop x crop`` window of
            it (a side shorter than ``crop`` taken whole), a new one every iteration (0 = the
            whole scale, as the paper). The networks
            are fully convolutional and the critic scores 11-px patches, so a window's losses
            estimate the whole scale's at a fraction of the cost; the generator's input keeps
            its real margin (the window's output is exactly that part of the whole scale's
            when the norm does not depend on the window: ``none``; instance and batch norm
            take the window's statistics). The random paths, the reconstruction entering the
            scale and the noise amplitude stay whole-scale; the recorded ``rec_loss`` is the
            window's. ``aligned-nn`` (fixed locations) is refused with a window.
    """

    iters: int = 2000
    lr_g: float = 5e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = 3
    g_steps: int = 3
    gp_weight: float = 0.1
    gp_every: int = 1
    alpha: float = 10.0
    lr_drop_at: float = 0.8
    lr_drop_factor: float = 0.1
    coarsest_noise_amp: float = 1.0
    noise_amp_factor: float = 0.1
    min_size: int = 25
    max_size: int = 250
    scale_factor: float = 0.75
    nfc: int = 32
    max_nfc: int = 128
    num_layers: int = 5
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "lrelu"
    padding: str = "zero"
    amp: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    loss: str = DEFAULT_LOSS
    patch_size: int = 7
    patch_stride: int = 1
    patches: int = 2048
    concurrent: int = 1
    concurrent_lr_scale: float = 0.1
    crop: int = 0

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` (one line) for any unusable value; return ``self``."""
        for name in ("iters", "d_steps", "g_steps", "gp_every", "nfc", "max_nfc", "log_every",
                     "patch_size", "patch_stride", "concurrent"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d", "coarsest_noise_amp", "noise_amp_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("gp_weight", "alpha"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not 0 < self.lr_drop_at <= 1 or not 0 < self.lr_drop_factor <= 1:
            raise ConfigError("lr_drop_at and lr_drop_factor must lie in (0, 1]")
        if not 0 < self.concurrent_lr_scale <= 1:
            raise ConfigError(f"concurrent_lr_scale must lie in (0, 1], "
                              f"got {self.concurrent_lr_scale}")
        if self.concurrent > 1 and self.norm == "batch":
            raise ConfigError("concurrent training (concurrent > 1) needs --norm instance or "
                              "none: a coarser scale's frozen batch norm cannot train on")
        if self.max_nfc < self.nfc:
            raise ConfigError(f"max_nfc ({self.max_nfc}) must not be smaller than nfc ({self.nfc})")
        if self.num_layers < 2 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError("num_layers must be at least 2 and kernel_size a positive odd number")
        field = self.num_layers * (self.kernel_size - 1) + 1
        if self.crop and self.crop <= field:
            raise ConfigError(f"crop must be 0 (the whole scale) or larger than the networks' "
                              f"{field} px receptive field, got {self.crop}")
        validate_geometry(self.min_size, self.max_size, self.scale_factor)
        if self.min_size <= self.num_layers * (self.kernel_size - 1):
            raise ConfigError(f"min_size {self.min_size} px is not larger than the critic's "
                              f"{self.num_layers * (self.kernel_size - 1) + 1} px receptive field")
        for name, choices in (("norm", NORMS), ("activation", ACTIVATIONS), ("padding", PADDINGS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.patch_size > self.min_size:
            raise ConfigError(f"patch_size {self.patch_size} px is larger than the coarsest "
                              f"scale (min_size {self.min_size} px)")
        if self.crop and self.loss == "aligned-nn":
            raise ConfigError("loss aligned-nn compares each patch with the scan's patch at the "
                              "same place, which a window moves: use crop 0 with it")
        if self.crop and self.loss != DEFAULT_LOSS and self.patch_size > self.crop:
            raise ConfigError(f"patch_size {self.patch_size} px is larger than the "
                              f"{self.crop} px crop window")
        if self.patches < 2:
            raise ConfigError(f"patches must be at least 2 (the Fréchet loss's covariance "
                              f"needs two), got {self.patches}")
        check_seed(self.seed)
        parse_device(self.device)  # its presence here is checked when training starts
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (betas as a list)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build and validate a config from a dict; unknown keys and wrong types: ConfigError."""
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in kinds:
                raise ConfigError(f"unknown training option {key!r}")
            kind = kinds[key]
            if kind is tuple and isinstance(value, list | tuple):
                value = tuple(float(v) for v in value)
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"training option {key!r} must be {kind.__name__}, "
                                  f"got {value!r}")
            values[key] = value
        return cls(**values).validate()

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def net_spec(self, channels: int, level: int) -> NetSpec:
        """Network shape at ``level`` scales above the coarsest."""
        return NetSpec(channels=channels, width=scale_width(level, self.nfc, self.max_nfc),
                       num_layers=self.num_layers, kernel_size=self.kernel_size,
                       norm=self.norm, activation=self.activation, padding=self.padding)


# ---------------------------------------------------------------------------------------------
# One scale


def gradient_penalty(critic: Discriminator, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """WGAN-GP: mean over pixels of ``(||grad_x D(x)||_2 - 1)^2`` (norm over channels) at one
    random interpolation ``x = a * real + (1 - a) * fake``."""
    a = float(torch.rand((), generator=generator))
    mixed = (a * real + (1 - a) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


class Models(Protocol):
    """What differs per model in a scale's training loop, so that one loop,
    :func:`_train_scale`, trains one model (:class:`OneModel`) or K grouped ones
    (:class:`medsingan.batched.GroupedModels`, model ``k`` on channels ``[k*C, (k+1)*C)``).

    ``noise`` draws the next unit noise of a scale, ``(1, K*C, h, w)``, each model's from its
    own stream; ``mean`` and ``mse`` are each model's loss (0-d for one model, ``(K,)`` for K)
    and ``penalty`` each model's WGAN-GP penalty. ``rng`` is one model's stream, for what only
    one model trains with (crop windows, explicit patch losses); ``None`` for K models."""

    k: int
    rng: torch.Generator | None

    def noise(self, size: tuple[int, int], device: torch.device) -> torch.Tensor: ...
    def mean(self, x: torch.Tensor) -> torch.Tensor: ...
    def mse(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
    def penalty(self, critic: Discriminator, real: torch.Tensor, fake: torch.Tensor
                ) -> torch.Tensor: ...


class OneModel:
    """:class:`Models` for one model: its noise stream, plain means, the paper's penalty."""

    k = 1

    def __init__(self, rng: torch.Generator, channels: int) -> None:
        self.rng, self.channels = rng, channels

    def noise(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        return draw_noise((1, self.channels, *size), self.rng, device)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean()

    def mse(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(x.float(), target)

    def penalty(self, critic: Discriminator, real: torch.Tensor, fake: torch.Tensor
                ) -> torch.Tensor:
        return gradient_penalty(critic, real, fake, self.rng)


@dataclass
class ScaleJob:
    """Everything one scale's training needs; ``pyramid`` holds the coarser scales (frozen,
    but for the ``concurrent - 1`` nearest). ``critic`` is ``None`` for an explicit loss.
    For K grouped models (:mod:`medsingan.batched`) the pyramid and networks are grouped and
    ``noise_amp`` is each model's amplitude on its channels, ``(1, K*C, 1, 1)``."""

    scale: int
    pyramid: TrainedPyramid
    generator: Generator
    critic: Discriminator | None
    noise_amp: float | torch.Tensor
    rec_previous: torch.Tensor  # up-sampled reconstruction from scale + 1 at the start (or zeros)
    models: Models


def _path_noises(job: ScaleJob) -> list[torch.Tensor]:
    """A random path's unit noise into ``job.scale``, coarsest first, from the models' streams."""
    pyramid = job.pyramid
    return [job.models.noise(pyramid.shapes[s], pyramid.device)
            for s in range(pyramid.coarsest, job.scale, -1)]


def _random_previous(job: ScaleJob) -> torch.Tensor:
    """Up-sampled output of the frozen coarser scales on a fresh random path (no gradients)."""
    pyramid, scale = job.pyramid, job.scale
    if scale == pyramid.coarsest:
        return torch.zeros_like(job.rec_previous)
    with torch.no_grad():
        coarse = pyramid.forward_scales(pyramid.coarsest, scale + 1, _path_noises(job))
    return resize(coarse, pyramid.shapes[scale])


class JointPath:
    """ConSinGAN's concurrent stages: the coarser scales ``joint`` (up to ``top``) between the
    frozen ones and the scale in training, run with gradients so that they train on through
    its losses. The frozen scales above ``top`` are run once per random path (and once for the
    reconstruction), without gradients; the joint ones again for every generator step, since
    each step changes their weights. ``draw_path`` draws a random path's unit noise, coarsest
    scale first (:func:`_path_noises`: K models' side by side for a batch)."""

    def __init__(self, pyramid: TrainedPyramid, scale: int, top: int,
                 draw_path: Callable[[], list[torch.Tensor]]) -> None:
        self.pyramid, self.scale, self.top, self.draw_path = pyramid, scale, top, draw_path
        # the frozen reconstruction entering ``top`` (None: ``top`` is the coarsest scale)
        self.rec_frozen = None if top == pyramid.coarsest else pyramid.reconstruct(top + 1)

    def _through_joint(self, noises: list[torch.Tensor], frozen: torch.Tensor | None
                       ) -> torch.Tensor:
        out = self.pyramid.forward_scales(self.top, self.scale + 1, noises, previous=frozen)
        return resize(out, self.pyramid.shapes[self.scale])

    def reconstruction(self) -> torch.Tensor:
        """The up-sampled reconstruction entering the scale, through the joint scales."""
        noises = [self.pyramid.reconstruction_noise(s)
                  for s in range(self.top, self.scale, -1)]
        return self._through_joint(noises, self.rec_frozen)

    def random(self) -> Callable[[], torch.Tensor]:
        """A fresh random path; returns the function computing its up-sampled output through
        the joint scales."""
        pyramid = self.pyramid
        noises = self.draw_path()
        frozen_count = pyramid.coarsest - self.top
        frozen = None
        if frozen_count:
            with torch.no_grad():
                frozen = pyramid.forward_scales(pyramid.coarsest, self.top + 1,
                                                noises[:frozen_count])
        return lambda: self._through_joint(noises[frozen_count:], frozen)


def joint_scales(scale: int, coarsest: int, config: TrainConfig) -> list[int]:
    """The coarser scales that train on with ``scale`` (``config.concurrent - 1`` of them,
    fewer near the coarsest), finest first."""
    return list(range(scale + 1, min(scale + config.concurrent, coarsest + 1)))


def generator_optimiser(generator: torch.nn.Module, pyramid: TrainedPyramid, scale: int,
                        joint: list[int], config: TrainConfig) -> torch.optim.Adam:
    """Adam for ``scale``'s generator and the coarser ``joint`` scales training on with it (set
    to train here), each in a group of its own: the learning rate shrinks by
    ``concurrent_lr_scale`` per scale up."""
    return torch.optim.Adam(
        [{"params": generator.parameters(), "lr": config.lr_g},
         *({"params": pyramid.generators[s].train().requires_grad_(True).parameters(),
            "lr": config.lr_g * config.concurrent_lr_scale ** (s - scale)} for s in joint)],
        betas=config.betas)


class _Window:
    """One iteration's random ``crop`` window of a scale (TrainConfig.crop): ``window(t)`` is
    that part of a whole-scale tensor; :meth:`generate` runs the generator on it alone, its
    input cut with the real margin (that part of the whole padded input).

    A window's first row is drawn uniformly from ``1 - h .. H - 1`` (``h = min(crop, H)``,
    the window's height) and clamped into the
    scale (columns alike): every pixel, the border's and the corners' too, then lies in a
    window at least as often as the centre's (uniform positions inside the scale would give
    a corner one window in ``(H - crop + 1) (W - crop + 1)``, leaving the generator's border
    handling almost untrained)."""

    def __init__(self, shape: tuple[int, ...], crop: int, pad: int, rng: torch.Generator) -> None:
        height, width = min(crop, shape[-2]), min(crop, shape[-1])
        top = self._start(shape[-2], height, rng)
        left = self._start(shape[-1], width, rng)
        self.rows, self.cols = slice(top, top + height), slice(left, left + width)
        self.margin_rows = slice(top, top + height + 2 * pad)
        self.margin_cols = slice(left, left + width + 2 * pad)

    @staticmethod
    def _start(side: int, length: int, rng: torch.Generator) -> int:
        start = int(torch.randint(1 - length, side, (), generator=rng))
        return min(max(start, 0), side - length)

    def __call__(self, whole: torch.Tensor) -> torch.Tensor:
        return whole[..., self.rows, self.cols]

    def generate(self, gen: Generator, noisy: torch.Tensor, previous: torch.Tensor
                 ) -> torch.Tensor:
        padded = gen.pad_input(noisy)[..., self.margin_rows, self.margin_cols]
        return gen.residual(padded, self(previous))


def _crops(config: TrainConfig, shape: tuple[int, ...]) -> bool:
    """Whether a scale of ``shape`` trains on windows (TrainConfig.crop)."""
    return 0 < config.crop < max(shape[-2:])


class _CriticObjective:
    """WGAN-GP, the paper's: ``d_steps`` critic updates per iteration on one fake, then the
    generator's adversarial term ``-mean D(fake)`` (each model's mean: ``models.mean``)."""

    def __init__(self, critic: Discriminator, real: torch.Tensor, config: TrainConfig,
                 models: Models, autocast: torch.autocast) -> None:
        self.critic, self.config = critic.train(), config
        self.models, self.autocast = models, autocast
        self.optimisers = [torch.optim.Adam(critic.parameters(), lr=config.lr_d,
                                            betas=config.betas)]
        self.steps = 0
        self.gp = torch.zeros(models.k, device=real.device)  # the last penalty, for history

    def update(self, make_fake: Callable[[], torch.Tensor], real: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration's critic steps against ``real`` (the scale, or its window); the last
        step's critic loss and the last penalty."""
        config, critic, autocast, models = self.config, self.critic, self.autocast, self.models
        # G is not updated during the critic steps, so one fake serves all of them.
        with torch.no_grad(), autocast:
            fake = make_fake()
        critic.requires_grad_(True)
        # Each loss is back-propagated as soon as it is built, so that only one critic graph is
        # alive at a time (peak memory; with concurrent scales the joint path's graph, kept for
        # the generator step, lives on beside it); the gradients add up in the parameters. K
        # models back-propagate the sum of their losses: each model's gradient is its own.
        (opt_d,) = self.optimisers
        for _ in range(config.d_steps):
            opt_d.zero_grad(set_to_none=True)
            with autocast:
                d_real = models.mean(critic(real))
            (-d_real.sum()).backward()
            with autocast:
                d_fake = models.mean(critic(fake))
            d_fake.sum().backward()
            d_loss = d_fake.detach() - d_real.detach()
            if config.gp_weight > 0 and self.steps % config.gp_every == 0:
                with autocast:
                    self.gp = models.penalty(critic, real, fake)
                penalty = config.gp_weight * config.gp_every * self.gp
                penalty.sum().backward()
                d_loss = d_loss + penalty.detach()
            self.steps += 1
            opt_d.step()
        critic.requires_grad_(False)  # G steps need gradients w.r.t. the input only
        return d_loss, self.gp

    def generator_term(self, fake: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return -self.models.mean(self.critic(fake))


class _PatchObjective:
    """An explicit patch loss (:class:`~medsingan.model.patch_losses.PatchLoss`): nothing to
    update, the generator's term is the loss of its fake (in float32, outside autocast)."""

    def __init__(self, real: torch.Tensor, config: TrainConfig, rng: torch.Generator) -> None:
        self.loss = PatchLoss(config.loss, real, size=config.patch_size,
                              stride=config.patch_stride, patches=config.patches, rng=rng)
        self.optimisers: list[torch.optim.Optimizer] = []
        self.none = torch.full((), math.nan, device=real.device)  # no critic loss or penalty

    def update(self, make_fake: Callable[[], torch.Tensor], real: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.none, self.none

    def generator_term(self, fake: torch.Tensor) -> torch.Tensor:
        with torch.autocast(fake.device.type, enabled=False):
            return self.loss(fake.float())


_LOSS_KEYS = ("d_loss", "g_adv", "rec_loss", "gp")


def _train_scale(job: ScaleJob, config: TrainConfig, report: _Reporter
                 ) -> list[list[dict[str, float]]]:
    """Train ``job.generator`` (and ``job.critic``, if any) for ``config.iters`` iterations;
    each model's history rows (one list for one model, K for K grouped ones)."""
    real, models = job.pyramid.reals[job.scale], job.models
    autocast = torch.autocast(real.device.type, dtype=torch.bfloat16, enabled=config.amp)
    gen = job.generator.train()
    crops = _crops(config, tuple(real.shape))
    rng = models.rng
    if rng is None and (job.critic is None or crops):  # batched.why_not_batchable refuses them
        raise ValueError("K grouped models train on whole scales with the critic only")
    objective: _CriticObjective | _PatchObjective = (
        _CriticObjective(job.critic, real, config, models, autocast) if job.critic is not None
        else _PatchObjective(real, config, rng))
    joint = joint_scales(job.scale, job.pyramid.coarsest, config)
    path = (JointPath(job.pyramid, job.scale, joint[-1], lambda: _path_noises(job))
            if joint else None)
    opt_g = generator_optimiser(gen, job.pyramid, job.scale, joint, config)
    drop_at = math.ceil(config.lr_drop_at * config.iters)
    rec_noise = job.noise_amp * job.pyramid.reconstruction_noise(job.scale)
    rec_previous = job.rec_previous
    rows: list[list[dict[str, float]]] = [[] for _ in range(models.k)]
    start = time.perf_counter()
    try:
        for it in range(config.iters):
            if it == drop_at:
                for opt in (opt_g, *objective.optimisers):
                    for group in opt.param_groups:
                        group["lr"] *= config.lr_drop_factor
            if path is None:
                with autocast:
                    previous = _random_previous(job)
            else:  # with gradients: the first generator step back-propagates through it
                with autocast:
                    through_joint = path.random()
                    previous = through_joint()
            unit = models.noise((real.shape[-2], real.shape[-1]), real.device)
            noisy = job.noise_amp * unit + previous
            # the generator on the whole scale, or on this iteration's window of it
            window = _Window(real.shape, config.crop, gen.spec.pad, rng) if crops else None
            run = gen if window is None else partial(window.generate, gen)
            target = real if window is None else window(real)
            d_loss, gp = objective.update(lambda: run(noisy, previous), target)  # noqa: B023
            for step in range(config.g_steps):
                opt_g.zero_grad(set_to_none=True)
                if path is not None and step > 0:  # the joint scales changed at the last step
                    with autocast:
                        previous = through_joint()
                    noisy = job.noise_amp * unit + previous
                with autocast:
                    fake = run(noisy, previous)
                g_adv = objective.generator_term(fake)
                g_adv.sum().backward()  # before the reconstruction is built: not two graphs
                with autocast, torch.set_grad_enabled(config.alpha > 0):
                    if path is not None:  # through the joint scales as they are now
                        rec_previous = path.reconstruction()
                    rec = models.mse(run(rec_noise + rec_previous, rec_previous), target)
                if config.alpha > 0:
                    (config.alpha * rec).sum().backward()
                opt_g.step()
            if (it + 1) % config.log_every == 0 or it + 1 == config.iters:
                seconds, lr = time.perf_counter() - start, opt_g.param_groups[0]["lr"]
                losses = [t.reshape(-1).tolist() for t in (d_loss, g_adv, rec, gp)]
                for model_rows, values in zip(rows, zip(*losses, strict=True), strict=True):
                    model_rows.append({"scale": job.scale, "iter": it + 1,
                                       **dict(zip(_LOSS_KEYS, values, strict=True)),
                                       "lr": lr, "seconds": seconds})
                # the progress bar shows the models' mean losses
                report.advance(it + 1, rows[0][-1] | {
                    key: sum(r[-1][key] for r in rows) / len(rows) for key in _LOSS_KEYS})
    finally:
        for s in joint:
            job.pyramid.generators[s].eval().requires_grad_(False)
    return rows


# ---------------------------------------------------------------------------------------------
# Progress


class _Reporter:
    """A rich progress bar per scale and a summary line per finished scale; silent if off.
    Every row and every scale's scores also go to the TensorBoard log ``live``, if any."""

    def __init__(self, enabled: bool, num_scales: int, iters: int,
                 live: TensorBoardLog | None = None) -> None:
        self.enabled, self.num_scales, self.iters = enabled, num_scales, iters
        self.live = live
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    @contextmanager
    def scale(self, scale: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._progress = Progress(
            TextColumn("scale {task.fields[scale]}/{task.fields[coarsest]}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("{task.fields[losses]}"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self._task = self._progress.add_task("", total=self.iters, scale=scale,
                                             coarsest=self.num_scales - 1, losses="")
        with self._progress:
            yield
        self._progress = None

    def advance(self, done: int, row: dict[str, float]) -> None:
        if self.live is not None:
            self.live.add_row(row)
        if self._progress is not None:
            losses = f"{_adversarial(row, 3, generator=True)} rec {row['rec_loss']:.4f}"
            self._progress.update(self._task, completed=done, losses=losses)

    def finished(self, scale: int, shape: tuple[int, int], width: int, amp: float,
                 rows: list[dict[str, float]], scores: dict[str, Any]) -> None:
        if self.live is not None:
            self.live.add_scale(scale, amp, scores)
        if self.enabled and rows:
            last = rows[-1]
            sifid = median(scores["sifid"])
            self.console.print(
                f"scale {scale}/{self.num_scales - 1}  {shape[0]}x{shape[1]} px  width {width}  "
                f"noise amp {amp:.4f}  rec MSE {last['rec_loss']:.5f}  "
                f"{_adversarial(last, 4, generator=False)}  {last['seconds']:.1f} s  "
                f"patch SWD {median(scores['patch_swd']):.4g}"
                + ("" if sifid is None else f"  SIFID {sifid:.4g}"), soft_wrap=True)


def _adversarial(row: dict[str, float], digits: int, generator: bool) -> str:
    """A history row's critic (and generator) terms, or its patch loss (no critic: ``nan``)."""
    if math.isnan(row["d_loss"]):
        return f"patch {row['g_adv']:.{digits + 1}f}"
    critic = f"D {row['d_loss']:+.{digits}f}"
    return f"{critic} G {row['g_adv']:+.{digits}f}" if generator else critic


# ---------------------------------------------------------------------------------------------
# Run directory


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(with_relative_sources(data, path.parent), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def scale_table(metadata: dict[str, Any], noise_amps: dict[int, float],
                history: list[dict[str, float]]) -> list[dict[str, Any]]:
    """One row of :data:`SCALE_COLUMNS` per finished scale, coarsest first (``scales.csv``)."""
    shapes = metadata["geometry"]["shapes"]
    last_rec = {int(row["scale"]): row["rec_loss"] for row in history}
    rows = []
    for scale in sorted(noise_amps, reverse=True):
        entry = metadata.get("progress", {}).get(str(scale), {})
        scores = entry.get("scores") or {}
        rows.append({
            "scale": scale, "height": shapes[scale][0], "width": shapes[scale][1],
            "noise_amp": noise_amps[scale], "iters": entry.get("iters"),
            "seconds": entry.get("seconds"), "rec_loss": last_rec.get(scale),
            "samples": scores.get("samples"),
            "patch_swd_median": median(scores.get("patch_swd")),
            "patch_swd_mean": mean(scores.get("patch_swd")),
            "sifid_median": median(scores.get("sifid")), "sifid_mean": mean(scores.get("sifid")),
            "sifid_variant": scores.get("sifid_variant"), "score_seconds": scores.get("seconds"),
        })
    return rows


def _write_scales(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCALE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def _read_history(path: Path, scales: set[int]) -> list[dict[str, float]]:
    """Rows of the finished ``scales`` (rows of an interrupted scale are dropped)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    for row in rows:
        row["scale"], row["iter"] = int(row["scale"]), int(row["iter"])
    return [row for row in rows if row["scale"] in scales]


def _run_files(run_dir: Path) -> list[Path]:
    names = [CONFIG_FILE, WEIGHTS_FILE, RESUME_FILE, HISTORY_FILE, SCALES_FILE, CURVES_FILE]
    return [run_dir / n for n in names] + sorted(run_dir.glob(SAMPLES_PATTERN.format("*")))


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory (the folder train "
                          "writes)")
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RUN_FORMAT:
            raise ValueError("no medsingan format tag")
        TrainConfig.from_dict(data["train"])
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise RunDirError(f"{path} is corrupt ({exc})") from None
    return with_absolute_sources(data, run_dir)


def load_run(run_dir: Path) -> TrainedPyramid:
    """Load the trained (possibly partial) pyramid of ``run_dir`` without executing any code.

    Raises:
        RunDirError: missing directory, missing or corrupt file, or no finished scale.
    """
    run_dir = Path(run_dir)
    metadata = _read_config(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise RunDirError(f"{run_dir} has no finished scale yet ({WEIGHTS_FILE} is missing)")
    pyramid = load_pyramid(run_dir / WEIGHTS_FILE)
    expected = [tuple(s) for s in metadata["geometry"]["shapes"]]
    trained = sorted(pyramid.generators)
    if pyramid.shapes != expected or trained != list(range(pyramid.finest_trained,
                                                           pyramid.num_scales)):
        raise RunDirError(f"{run_dir / WEIGHTS_FILE} does not match {CONFIG_FILE}")
    pyramid.metadata = metadata
    return pyramid


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What ``medsingan info`` prints: geometry, widths, noise amplitudes, progress per scale,
    and each scale's sample scores (``patch_swd``, ``sifid``: medians; ``None`` when not
    scored)."""
    run_dir = Path(run_dir)
    metadata = _read_config(run_dir)
    pyramid = load_run(run_dir) if (run_dir / WEIGHTS_FILE).is_file() else None
    config = TrainConfig.from_dict(metadata["train"])
    shapes = [tuple(s) for s in metadata["geometry"]["shapes"]]
    progress = metadata.get("progress", {})
    scales = []
    for scale, shape in enumerate(shapes):
        done = pyramid is not None and scale in pyramid.generators
        entry = progress.get(str(scale), {})
        scales.append({
            "scale": scale, "height": shape[0], "width": shape[1],
            "channels": config.net_spec(1, len(shapes) - 1 - scale).width,
            "trained": done,
            "noise_amp": pyramid.noise_amps[scale] if done and pyramid else None,
            "iters": entry.get("iters", 0) if done else 0,
            "seconds": entry.get("seconds") if done else None,
            **_summary_scores(entry.get("scores") if done else None),
        })
    return {
        "run_dir": str(run_dir),
        "complete": bool(pyramid and pyramid.is_complete),
        "num_scales": len(shapes),
        "scale_factor": metadata["geometry"]["scale_factor"],
        "scales": scales,
        "total_seconds": sum(s["seconds"] or 0.0 for s in scales),
        "train": metadata["train"],
        "extra": metadata.get("extra"),
        "version": metadata.get("version"),
    }


def _summary_scores(scores: dict[str, Any] | None) -> dict[str, Any]:
    scores = scores or {}
    return {"score_samples": scores.get("samples"),
            "patch_swd": median(scores.get("patch_swd")),
            "sifid": median(scores.get("sifid")), "sifid_variant": scores.get("sifid_variant")}


def _prepare_run_dir(run_dir: Path, config: TrainConfig, reals: list[torch.Tensor],
                     resume: bool, overwrite: bool) -> tuple[dict[str, Any] | None,
                                                             TrainedPyramid | None]:
    """Check what ``run_dir`` holds; return the stored config and pyramid to resume from."""
    for leftover in run_dir.glob(".*.tmp*"):  # half-written files of a killed run
        leftover.unlink()
    existing = [p for p in _run_files(run_dir) if p.exists()]
    if not existing:  # (resuming needs config.json: train() checked it)
        return None, None
    if overwrite and not resume:
        for path in existing:
            path.unlink()
        return None, None
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run; use --resume to continue it or "
                          "--overwrite to replace it")
    stored = _read_config(run_dir)
    # a run written before a setting existed was trained with its default
    old, new = TrainConfig.from_dict(stored["train"]).to_dict(), config.to_dict()
    changed = [k for k in new if k not in _RESUME_MUTABLE and old.get(k) != new[k]]
    if changed:
        diffs = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed)
        preset = (stored.get("extra") or {}).get("speed_preset")
        hint = f"; it was trained with --preset {preset}: resume with the same options" \
            if preset else ""
        raise RunDirError(f"{run_dir} was trained with other settings ({diffs}){hint}")
    if not (run_dir / WEIGHTS_FILE).is_file():
        return stored, None
    pyramid = load_run(run_dir)
    if len(reals) != pyramid.num_scales or not torch.equal(reals[0], pyramid.reals[0]):
        raise RunDirError(f"the image differs from the one {run_dir} was trained on")
    return stored, pyramid


_SOURCE_SELECTION = ("sha256", "frame", "slice_index", "slice_axis", "volume")


def _check_same_source(run_dir: Path, stored: dict[str, Any], new: dict[str, Any]) -> None:
    """RunDirError when a resumed run would train another scan, slice or region than the one
    its ``config.json`` records (its outputs are written into that source and region)."""
    old_source, new_source = stored.get("source") or {}, new.get("source") or {}
    changed = [key for key in _SOURCE_SELECTION
               if old_source and new_source and old_source.get(key) != new_source.get(key)]
    if (stored.get("roi") or None) != (new.get("roi") or None):
        changed.append("roi")
    if changed:
        raise RunDirError(f"{run_dir} was started on another scan or region ("
                          f"{', '.join(changed)} differ): resume it with the same scan, slice "
                          "and --roi, or use --overwrite")


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidImageError(f"expected a (1, C, H, W) image tensor, got {shape}")
    image = image.detach().float().cpu()
    if not torch.isfinite(image).all():
        raise InvalidImageError("the image contains NaN or infinite values")
    if image.min() < -1.0001 or image.max() > 1.0001:
        raise InvalidImageError("the image must be mapped to [-1, 1] before training")
    if image.max() == image.min():
        raise InvalidImageError("the image is constant: there is nothing to learn")
    return image.clamp(-1, 1)


def train(
    image: torch.Tensor,
    config: TrainConfig,
    run_dir: Path,
    *,
    extra_config: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    last_scale: int = 0,
    monitor: MonitorOptions | None = None,
) -> TrainedPyramid:
    """Train a SinGAN pyramid on ``image`` and write it to ``run_dir``.

    Args:
        image: ``(1, C, H, W)`` float tensor in [-1, 1] at its full resolution (the pyramid is
            built from it with :func:`medsingan.pyramid.pyramid_shapes`).
        config: hyper-parameters.
        run_dir: output folder (created if needed).
        extra_config: JSON-serialisable facts from the caller (source path and sha256, preset,
            intensity mapping ...), stored verbatim under ``"extra"`` in ``config.json``.
        resume: continue the run in ``run_dir`` after its last finished scale.
        overwrite: replace a run already in ``run_dir``.
        progress: show progress bars and per-scale summaries on stderr.
        last_scale: stop after this scale (0 = finest = the whole pyramid); the run can be
            continued later with ``resume=True``.
        monitor: per-scale scoring and the TensorBoard log (default: patch SWD, and SIFID
            when the paper variant's weights are found; no log).

    Returns:
        The trained pyramid (complete when ``last_scale == 0``).

    Raises:
        ConfigError, InvalidImageError, RunDirError: bad settings, image or run directory.
        SifidWeightsError: an explicit Inception weights file is missing, or a file found is
            not the SIFID variant's weights.
        TrainingInterrupted: Ctrl-C; every scale finished before it is saved.
    """
    config.validate()
    monitor = (monitor or MonitorOptions()).validate()
    image = _check_image(image)
    device = config.resolved_device()
    shapes = pyramid_shapes(image.shape[-2], image.shape[-1], config.min_size, config.max_size,
                            config.scale_factor)
    if not 0 <= last_scale < len(shapes):
        raise ConfigError(f"last_scale must lie in 0..{len(shapes) - 1}, got {last_scale}")
    _check_patch_grid(config, shapes[-1])
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: choose one")
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir} holds no run to resume; drop --resume to start one")
    scorer = ScaleScorer(training_sifid(monitor, device))  # weights checked before any write
    opened = open_run(image, config, run_dir, extra_config, shapes, resume, overwrite)
    pyramid, critics, history, metadata = (opened.pyramid, opened.critics, opened.history,
                                           opened.metadata)
    channels = image.shape[1]
    coarsest = len(shapes) - 1
    pyramid.to(device)
    live = (TensorBoardLog(monitor.tensorboard, len(shapes), config.iters)
            if monitor.tensorboard is not None else None)
    report = _Reporter(progress, len(shapes), config.iters, live)
    scale = saved = pyramid.finest_trained
    curves_stale = False  # curves.png lags behind the finished scales
    try:
        for scale in range(pyramid.finest_trained - 1, last_scale - 1, -1):
            level = coarsest - scale
            spec = config.net_spec(channels, level)
            generator, critic = _init_networks(spec, pyramid, critics, scale, config, device)
            rec_previous, amp = _reconstruction_start(pyramid, scale, config)
            _trim_heap()
            job = ScaleJob(scale, pyramid, generator, critic, amp, rec_previous, OneModel(
                seeded_generator(config.seed, Stream.TRAIN_NOISE, scale), channels))
            started = time.perf_counter()
            with report.scale(scale):
                (rows,) = _train_scale(job, config, report)
            pyramid.generators[scale] = generator.eval().requires_grad_(False)
            pyramid.noise_amps[scale] = amp
            if critic is not None:
                critics[scale] = critic.eval().requires_grad_(False)
            _trim_heap()
            history += rows
            seconds = time.perf_counter() - started
            metadata["progress"][str(scale)] = {"iters": config.iters, "seconds": seconds}
            scores = _save_scale(run_dir, pyramid, critics, history, metadata, scale,
                                 config.seed, scorer, monitor.score_samples)
            saved, curves_stale = scale, seconds < CURVES_REDRAW_SECONDS
            if not curves_stale:
                _save_curves(run_dir, history, metadata, pyramid.noise_amps)
            report.finished(scale, shapes[scale], spec.width, amp, rows, scores)
        if curves_stale:
            _save_curves(run_dir, history, metadata, pyramid.noise_amps)
    except KeyboardInterrupt:
        if curves_stale:
            _save_curves(run_dir, history, metadata, pyramid.noise_amps)
        done = f"scales {coarsest}..{saved} are saved" if saved <= coarsest else "nothing is saved"
        raise TrainingInterrupted(f"training interrupted at scale {scale}; {done} in {run_dir}:"
                                  " continue with --resume") from None
    finally:
        if live is not None:
            live.close()
    return pyramid


def _check_patch_grid(config: TrainConfig, coarsest: tuple[int, int]) -> None:
    """ConfigError when the Fréchet loss's patch grid on the coarsest scale has fewer than
    two patches (no covariance to estimate)."""
    if config.loss != "frechet":
        return
    count = math.prod((side - config.patch_size) // config.patch_stride + 1 for side in coarsest)
    if count < 2:
        raise ConfigError(f"--loss frechet needs at least 2 patches on the coarsest scale "
                          f"({coarsest[1]} x {coarsest[0]} px); --patch-size "
                          f"{config.patch_size} with --patch-stride {config.patch_stride} gives "
                          f"{count}: use smaller patches or a finer stride")


@dataclass
class OpenedRun:
    """A run directory opened for training: its pyramid (the finished scales, or none), the
    critics to start the next scale from, the history of the finished scales and the
    ``config.json`` content."""

    run_dir: Path
    config: TrainConfig
    pyramid: TrainedPyramid
    critics: dict[int, Discriminator]
    history: list[dict[str, float]]
    metadata: dict[str, Any]


def open_run(image: torch.Tensor, config: TrainConfig, run_dir: Path,
             extra: dict[str, Any] | None, shapes: list[tuple[int, int]], resume: bool,
             overwrite: bool) -> OpenedRun:
    """Create or reopen ``run_dir`` for training ``image`` (checked) on the pyramid
    ``shapes``: a new run's ``config.json`` and z* are written, a run to resume is loaded
    and checked against the settings and source (RunDirError)."""
    reals = build_image_pyramid(image, shapes, mask_channels(extra))  # masks: nearest
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the run directory {run_dir}: "
                          f"{exc.strerror or exc}") from exc
    stored, pyramid = _prepare_run_dir(run_dir, config, reals, resume, overwrite)
    if stored is not None:
        _check_same_source(run_dir, stored.get("extra") or {}, extra or {})
    channels = image.shape[1]
    metadata = stored or {
        "format": RUN_FORMAT,
        "version": medsingan.__version__,
        "train": config.to_dict(),
        "extra": extra,
        "geometry": {"source_shape": list(image.shape[-2:]), "channels": channels,
                     "shapes": [list(s) for s in shapes],
                     "scale_factor": effective_scale_factor(shapes)},
        "progress": {},
    }
    metadata["train"] = config.to_dict()
    critics: dict[int, Discriminator] = {}
    if pyramid is None:
        z_rng = seeded_generator(config.seed, Stream.RECONSTRUCTION)
        z_star = draw_noise((1, channels, *shapes[-1]), z_rng)
        pyramid = TrainedPyramid(reals=reals, z_star=z_star)
        metadata["progress"] = {}
        _write_json(run_dir / CONFIG_FILE, metadata)
    elif config.loss == DEFAULT_LOSS:
        critics = _load_critics(run_dir, pyramid)
    pyramid.metadata = metadata
    history = _read_history(run_dir / HISTORY_FILE, set(pyramid.generators))
    return OpenedRun(run_dir, config, pyramid, critics, history, metadata)


def _trim_heap() -> None:
    """Hand memory freed by the previous scale back to the OS (glibc's ``malloc_trim``).

    Each scale, and the previews after it, allocate tensors of new sizes; glibc would keep the
    old, now free, blocks resident, and the peak RSS of a 250-px run would grow by a third.
    """
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _load_critics(run_dir: Path, pyramid: TrainedPyramid) -> dict[int, Discriminator]:
    critics, _ = load_networks(run_dir / RESUME_FILE, "discriminator", Discriminator)
    if pyramid.finest_trained not in critics:
        raise RunDirError(f"{run_dir / RESUME_FILE} lacks the critic of scale "
                          f"{pyramid.finest_trained}")
    return critics  # type: ignore[return-value]


def _init_networks(spec: NetSpec, pyramid: TrainedPyramid, critics: dict[int, Discriminator],
                   scale: int, config: TrainConfig, device: torch.device
                   ) -> tuple[Generator, Discriminator | None]:
    """Fresh networks for ``scale``: copies of the coarser scale's when the widths match. No
    critic (``None``) for an explicit loss."""
    generator = Generator(spec)
    critic = Discriminator(spec) if config.loss == DEFAULT_LOSS else None
    coarser = pyramid.generators.get(scale + 1)
    if coarser is not None and coarser.spec == spec:
        generator.load_state_dict(coarser.state_dict())
        if critic is not None:
            critic.load_state_dict(critics[scale + 1].state_dict())
    else:
        init_rng = seeded_generator(config.seed, Stream.INIT, scale)
        init_weights(generator, init_rng)
        if critic is not None:
            init_weights(critic, init_rng)
    return generator.to(device), None if critic is None else critic.to(device)


def _reconstruction_start(pyramid: TrainedPyramid, scale: int, config: TrainConfig
                          ) -> tuple[torch.Tensor, float]:
    """The cached up-sampled reconstruction entering ``scale`` and the scale's noise amplitude."""
    real = pyramid.reals[scale]
    if scale == pyramid.coarsest:
        return torch.zeros_like(real), config.coarsest_noise_amp
    previous = resize(pyramid.reconstruct(scale + 1), pyramid.shapes[scale])
    rmse = float(torch.sqrt(F.mse_loss(previous, real)))
    return previous, config.noise_amp_factor * rmse


def _save_scale(run_dir: Path, pyramid: TrainedPyramid, critics: dict[int, Discriminator],
                history: list[dict[str, float]], metadata: dict[str, Any], scale: int,
                seed: int, scorer: ScaleScorer, score_samples: int) -> dict[str, Any]:
    """Persist a finished scale: critics first (none for an explicit loss), then the weights
    (the commit point), then the human-facing files; returns the scale's sample scores (also
    in ``metadata``)."""
    if critics:
        save_networks(run_dir / RESUME_FILE, "discriminator", critics)
    save_pyramid(run_dir / WEIGHTS_FILE, pyramid)
    _write_history(run_dir / HISTORY_FILE, history)
    # the sheet shows the first 3 of the scored samples (sample i depends on (seed, i) only)
    samples = sample(pyramid, max(3, score_samples), seed=seed, end_scale=scale,
                     batch_size=1)  # low peak memory
    scores = scorer(pyramid.reals[scale], samples[:score_samples])
    metadata["progress"][str(scale)]["scores"] = scores
    save_sample_sheet(run_dir / SAMPLES_PATTERN.format(scale),
                      [pyramid.reals[scale], pyramid.reconstruct(scale), *samples[:3].split(1)])
    _write_scales(run_dir / SCALES_FILE, scale_table(metadata, pyramid.noise_amps, history))
    _write_json(run_dir / CONFIG_FILE, metadata)
    return scores


def _save_curves(run_dir: Path, history: list[dict[str, float]], metadata: dict[str, Any],
                 noise_amps: dict[int, float]) -> None:
    table = scale_table(metadata, noise_amps, history)
    # a scale whose weights were saved before a full disk stopped the run has no progress
    # entry: no scores for it, rather than a KeyError on --resume
    progress = metadata.get("progress") or {}
    save_training_curves(run_dir / CURVES_FILE, history,
                         [{**row, "scores": (progress.get(str(row["scale"])) or {}).get("scores")}
                          for row in table])

