"""``--device`` values: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from medsingan.errors import ConfigError


def parse_device(name: str) -> torch.device | None:
    """The device ``name`` names (``None`` for ``auto``), without checking it is here."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not '{name}'")
    return device


def resolve_device(name: str) -> torch.device:
    """A device this machine has: ``auto`` is CUDA when available, else the CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here; "
                              "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return device
