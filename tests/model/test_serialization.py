"""Pyramids round-trip through safetensors + JSON; damaged files give one-line RunDirErrors."""

import json

import pytest
import torch

from medsingan.errors import RunDirError
from medsingan.generate import sample
from medsingan.model.container import TrainedPyramid
from medsingan.model.networks import Generator, NetSpec
from medsingan.model.serialization import load_pyramid, save_pyramid


@pytest.fixture
def pyramid() -> TrainedPyramid:
    torch.manual_seed(0)
    reals = [torch.rand(1, 1, s, s) * 2 - 1 for s in (40, 32, 25)]
    generators = {s: Generator(NetSpec(width=8 * (s + 1))).eval() for s in (1, 2)}
    return TrainedPyramid(reals=reals, z_star=torch.randn(1, 1, 25, 25), generators=generators,
                          noise_amps={2: 1.0, 1: 0.1 * 0.123456789012345})


def test_round_trip_keeps_every_tensor_and_amplitude_exactly(pyramid, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_pyramid(path, pyramid)
    loaded = load_pyramid(path)
    assert loaded.noise_amps == pyramid.noise_amps  # float64: bit-exact
    assert sorted(loaded.generators) == [1, 2] and loaded.finest_trained == 1
    assert loaded.generators[1].spec == pyramid.generators[1].spec
    assert torch.equal(sample(loaded, 2, seed=4), sample(pyramid, 2, seed=4))
    assert not loaded.generators[1].training
    assert not any(p.requires_grad for p in loaded.generators[1].parameters())


def test_file_is_plain_safetensors_with_a_json_header(pyramid, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_pyramid(path, pyramid)
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"]["format"] == "medsingan-pyramid"
    assert {"z_star", "real.0", "real.2", "noise_amp.1", "generator.2.tail.weight"} <= set(header)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    "damage",
    [lambda raw: raw[: len(raw) // 2], lambda raw: b"\x80\x04pickle" + raw[10:], lambda raw: b""],
)
def test_damaged_files_raise_run_dir_error(pyramid, tmp_path, damage):
    path = tmp_path / "weights.safetensors"
    save_pyramid(path, pyramid)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunDirError) as info:
        load_pyramid(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_mismatched_network_raise_run_dir_error(pyramid, tmp_path):
    with pytest.raises(RunDirError, match="missing"):
        load_pyramid(tmp_path / "nothing.safetensors")
    pyramid.generators[1].spec = NetSpec(width=24)  # header now disagrees with the tensors
    path = tmp_path / "weights.safetensors"
    save_pyramid(path, pyramid)
    with pytest.raises(RunDirError, match="does not match"):
        load_pyramid(path)
