"""Random streams: distinct keys give independent draws, equal keys the same draws."""

from __future__ import annotations

import pytest
import torch

from medsingan.model.noise import Stream, seeded_generator


def draws(*keys: int) -> torch.Tensor:
    return torch.randn(64, generator=seeded_generator(*keys))


@pytest.mark.parametrize(("first", "second"), [
    ((5, 1, 3, 0), (5, 1, 3)),      # the trainer's init stream vs its training-noise stream
    ((5, 1, 3), (5, 1, 3, 0, 0)),   # trailing zeros
    ((2**32,), (0, 1)),             # a 64-bit key vs two 32-bit ones
    ((0,), ()),
])
def test_distinct_keys_give_uncorrelated_streams(first, second):
    a, b = draws(*first), draws(*second)
    assert not torch.equal(a, b)
    # independent standard normals: |correlation| of 64 pairs is ~0.125 (1 sigma)
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.5


def test_equal_keys_give_the_same_stream():
    assert torch.equal(draws(9, 2, 4), draws(9, 2, 4))


def test_keys_outside_64_bits_are_refused():
    with pytest.raises(ValueError, match="2\\*\\*64"):
        seeded_generator(-1)


def test_every_stream_has_a_key_of_its_own():
    # the trainer's initialisation once shared the sampler's key: scale k's weights were
    # sample k's noise
    keys = [stream.value for stream in Stream]
    assert len(keys) == len(set(keys)) == len(Stream.__members__)
    draws_by_stream = [draws(0, key, 4) for key in keys]
    for k, a in enumerate(draws_by_stream):
        for b in draws_by_stream[k + 1:]:
            assert not torch.equal(a, b)
