"""Building blocks of the SinGAN networks: Conv3x3 -> Norm -> Activation, and their init."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "none")
ACTIVATIONS = ("lrelu", "relu", "elu")
PADDINGS = ("zero", "reflect", "circular")

# torch.nn.functional.pad mode for each padding option.
PAD_MODES = {"zero": "constant", "reflect": "reflect", "circular": "circular"}


class InstanceNorm(nn.InstanceNorm2d):
    """Affine instance norm: every image normalised by its own per-channel statistics.

    For a batch of one (all of training) this is exactly what the paper's batch norm computes
    while training; unlike batch norm it stays so when frozen. The single-image case runs as a
    batch norm, which keeps fewer intermediate tensors for the double backward of the penalty.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer: ``batch`` (as the paper), ``instance`` (affine) or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return InstanceNorm(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def make_activation(kind: str) -> nn.Module:
    """An activation: ``lrelu`` (LeakyReLU 0.2, as the paper), ``relu`` or ``elu``.

    In place: it overwrites the normalised tensor, which no backward pass needs, so every
    layer keeps one activation-sized tensor less alive (peak memory).
    """
    if kind == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


class ConvBlock(nn.Sequential):
    """``Conv(k x k, stride 1, no padding) -> Norm -> Activation`` on ``(B, C, H, W)``.

    The output is ``k - 1`` pixels smaller than the input on each axis: the networks are
    unpadded and their input is padded once, as in the official code.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str,
                 activation: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)
        self.norm = make_norm(norm, out_channels)
        self.act = make_activation(activation)


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """SinGAN's initialisation: conv weights ~ N(0, 0.02), norm scale ~ N(1, 0.02); biases 0
    (the official code leaves conv biases at PyTorch's default uniform draw).

    ``generator`` makes the initialisation reproducible without touching the global RNG.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, 0.0, 0.02, generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)) and layer.affine:
            nn.init.normal_(layer.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(layer.bias)
