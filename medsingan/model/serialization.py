"""Save and load pyramids as safetensors + JSON: loading a model can never execute code.

``weights.safetensors`` tensor names (scale ``n``: 0 = finest):

* ``generator.<n>.<parameter>``: state dict of each trained generator (incl. norm statistics);
* ``noise_amp.<n>``: 0-d float64 noise amplitude of each trained scale;
* ``z_star``: ``(1, C, h, w)`` reconstruction noise of the coarsest scale;
* ``real.<n>``: ``(1, C, h, w)`` training image at every scale, in [-1, 1].

Its metadata holds ``format``, ``version`` and ``specs``: the JSON :class:`NetSpec` of each
stored network, so the file alone rebuilds the pyramid. Discriminators (for resuming) use the
same layout under ``discriminator.<n>.<parameter>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from medsingan.errors import RunDirError
from medsingan.io.atomic import atomic_path
from medsingan.model.container import TrainedPyramid
from medsingan.model.networks import Discriminator, Generator, NetSpec

FORMAT = "medsingan-pyramid"
VERSION = "1"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it over.

    A crash leaves either the old file or the new one, never half of one.
    """
    with atomic_path(path) as tmp:
        write(tmp)


def _network_tensors(prefix: str, networks: Mapping[int, nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{scale}.{name}": tensor.detach().cpu().contiguous()
        for scale, net in networks.items()
        for name, tensor in net.state_dict().items()
    }


def _specs_json(networks: Mapping[int, Generator | Discriminator]) -> str:
    return json.dumps({str(scale): net.spec.to_dict() for scale, net in networks.items()})


def save_networks(path: Path, prefix: str, networks: Mapping[int, Generator | Discriminator],
                  extra: Mapping[str, torch.Tensor] | None = None) -> None:
    """Atomically write ``networks`` (and ``extra`` tensors) to a safetensors file."""
    tensors = _network_tensors(prefix, networks) | dict(extra or {})
    metadata = {"format": FORMAT, "version": VERSION, "specs": _specs_json(networks)}
    atomic_write(path, lambda tmp: _save_file(tensors, tmp, metadata))


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``; its I/O failures (a full disk) raised as the OSError they
    are, which callers report in one line, instead of a SafetensorError."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from exc


def save_pyramid(path: Path, pyramid: TrainedPyramid) -> None:
    """Atomically write generators, noise amplitudes, z* and the real pyramid to ``path``."""
    extra = {f"noise_amp.{s}": torch.tensor(a, dtype=torch.float64)
             for s, a in pyramid.noise_amps.items()}
    extra["z_star"] = pyramid.z_star.detach().cpu().contiguous()
    extra |= {f"real.{s}": r.detach().cpu().contiguous() for s, r in enumerate(pyramid.reals)}
    save_networks(path, "generator", pyramid.generators, extra)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, NetSpec]]:
    if not path.is_file():
        raise RunDirError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        if metadata.get("format") != FORMAT:
            raise ValueError("not a medsingan pyramid file")
        specs = {key: NetSpec(**value) for key, value in json.loads(metadata["specs"]).items()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} is corrupt or not a medsingan file ({exc})") from None
    return tensors, specs


def load_networks(path: Path, prefix: str, factory: type[Generator] | type[Discriminator]
                  ) -> tuple[dict[int, nn.Module], dict[str, torch.Tensor]]:
    """Rebuild the networks stored under ``prefix``; also return the remaining tensors."""
    tensors, specs = _read(path)
    networks: dict[int, nn.Module] = {}
    for key, spec in specs.items():
        head = f"{prefix}.{key}."
        state = {name[len(head):]: t for name, t in tensors.items() if name.startswith(head)}
        net = factory(spec)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise RunDirError(f"{path}: network {prefix} {key} does not match ({first_line})"
                              ) from None
        networks[int(key)] = net.eval().requires_grad_(False)
    rest = {k: t for k, t in tensors.items() if not k.startswith(f"{prefix}.")}
    return networks, rest


def load_pyramid(path: Path) -> TrainedPyramid:
    """Load a pyramid written by :func:`save_pyramid`; :class:`RunDirError` if unusable."""
    generators, rest = load_networks(path, "generator", Generator)
    try:
        reals = [rest[f"real.{s}"] for s in range(sum(k.startswith("real.") for k in rest))]
        amps = {s: float(rest[f"noise_amp.{s}"]) for s in generators}
        z_star = rest["z_star"]
    except KeyError as exc:
        raise RunDirError(f"{path} lacks tensor {exc.args[0]}") from None
    if not reals or any(s >= len(reals) for s in generators):
        raise RunDirError(f"{path} holds generators for scales it has no image for")
    return TrainedPyramid(reals=reals, z_star=z_star, generators=generators,  # type: ignore[arg-type]
                          noise_amps=amps)
