"""Per-scale SinGAN networks: a residual generator and a Markovian (patch) discriminator.

Both share one fully convolutional body of ``num_layers`` unpadded ``k x k`` layers, so each
output pixel sees a ``num_layers * (k - 1) + 1`` window of the input (11 x 11 for 5 3x3 layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsingan.model.blocks import ACTIVATIONS, NORMS, PAD_MODES, PADDINGS, ConvBlock


@dataclass(frozen=True)
class NetSpec:
    """Shape of one scale's networks.

    Attributes:
        channels: image channels (1 for grayscale scans).
        width: feature channels of every hidden layer.
        num_layers: convolutions per network (head + body + tail).
        kernel_size: odd convolution size.
        norm: ``batch`` | ``instance`` | ``none``.
        activation: ``lrelu`` | ``relu`` | ``elu``.
        padding: how the generator's input is padded: ``zero`` | ``reflect`` | ``circular``.
    """

    channels: int = 1
    width: int = 32
    num_layers: int = 5
    kernel_size: int = 3
    norm: str = "batch"
    activation: str = "lrelu"
    padding: str = "zero"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown padding {self.padding!r}")

    @property
    def receptive_field(self) -> int:
        """Side of the input window that one output pixel depends on."""
        return self.num_layers * (self.kernel_size - 1) + 1

    @property
    def pad(self) -> int:
        """Pixels added on each side of the generator's input to keep its size."""
        return (self.kernel_size - 1) // 2 * self.num_layers

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _features(spec: NetSpec) -> nn.Sequential:
    """Head and body: ``num_layers - 1`` ConvBlocks from the image channels to ``width``."""
    layers = [ConvBlock(spec.channels, spec.width, spec.kernel_size, spec.norm, spec.activation)]
    layers += [
        ConvBlock(spec.width, spec.width, spec.kernel_size, spec.norm, spec.activation)
        for _ in range(spec.num_layers - 2)
    ]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """``G_n(x, up) = up + tanh(tail(body(pad(x))))`` with ``x = noise_amp * z + up``.

    ``up`` is the coarser scale's output up-sampled to this scale (zeros at the coarsest scale);
    the network only learns the residual detail. Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features = _features(spec)
        self.tail = nn.Conv2d(spec.width, spec.channels, spec.kernel_size)

    def forward(self, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.residual(self.pad_input(x), up)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the ``spec.pad`` px margin the unpadded convolutions consume."""
        return F.pad(x, [self.spec.pad] * 4, mode=PAD_MODES[self.spec.padding])

    def residual(self, padded: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``up`` plus the detail computed from an input already padded by ``spec.pad`` px
        (a window of :meth:`pad_input`'s output gives that window of :meth:`forward`'s)."""
        return up + torch.tanh(self.tail(self.features(padded)))


class Discriminator(nn.Module):
    """Markovian critic: ``(B, C, H, W) -> (B, 1, H - 2p, W - 2p)``, one score per patch.

    Unpadded, as in the official code: every score comes from a patch that lies wholly in the
    image. The WGAN critic has no output activation.
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.features = _features(spec)
        self.tail = nn.Conv2d(spec.width, 1, spec.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.features(x))


def scale_width(level: int, nfc: int = 32, max_nfc: int = 128) -> int:
    """Width at ``level`` steps above the coarsest scale: ``nfc`` doubled every 4, capped."""
    return min(nfc * 2 ** (level // 4), max_nfc)
