"""Reproducible randomness: every noise map comes from a generator seeded by integer keys.

Keys such as ``(seed, stream, scale)`` or ``(seed, sample_index)`` give independent streams, so
sample ``i`` is the same whatever the batch size, and scale ``n`` of a resumed run draws exactly
what an uninterrupted run draws.
"""

from __future__ import annotations

from enum import IntEnum, unique

import numpy as np
import torch

from medsingan.errors import ConfigError

MAX_SEED = 2**63 - 1


@unique
class Stream(IntEnum):
    """The independent random streams under one seed: the second key of every generator
    (``seeded_generator(seed, Stream.SAMPLE, index)``), one value each, never reused."""

    TRAIN_NOISE = 1       # training noise of scale n: (seed, TRAIN_NOISE, n)
    RECONSTRUCTION = 2    # the fixed reconstruction noise z*
    SAMPLE = 3            # sample i of a cohort or a manipulation: (seed, SAMPLE, i)
    SUPER_RESOLUTION = 4  # super-resolution step noise of output i
    INIT = 5              # network initialisation of scale n: (seed, INIT, n)
    ANIMATION = 6         # the noise walk of an animation: (seed, ANIMATION)


def check_seed(seed: int) -> int:
    """``seed`` if it is a usable seed (0 .. 2**63 - 1), else ConfigError."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    return seed


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` whose seed is derived from the integer ``keys`` (0 .. 2**64 - 1).

    Distinct key tuples give distinct streams. numpy's ``SeedSequence`` alone would not
    ensure that: it ignores trailing zero words (``[s, 1, n, 0]`` is ``[s, 1, n]``) and splits
    large integers into 32-bit words (``[2**32]`` is ``[0, 1]``); so the entropy is the number
    of keys followed by every key as exactly two 32-bit words.

    >>> draw = lambda *keys: float(torch.randn(1, generator=seeded_generator(*keys)))
    >>> draw(7, 1, 3) == draw(7, 1, 3), draw(7, 1, 3) == draw(7, 1, 3, 0)
    (True, False)
    """
    words = [len(keys)]
    for key in keys:
        if not 0 <= key < 2**64:
            raise ValueError(f"random stream keys are 0 .. 2**64 - 1, got {key}")
        words += [key & 0xFFFFFFFF, key >> 32]
    state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal noise drawn on the CPU (identical on every device), then moved."""
    return torch.randn(shape, generator=generator).to(device)
