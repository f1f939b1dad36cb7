"""Generator and critic: SinGAN's shape, 11 x 11 receptive field, residual form, widths."""

import pytest
import torch

from medsingan.model.blocks import ACTIVATIONS, PADDINGS, InstanceNorm, init_weights
from medsingan.model.networks import Discriminator, Generator, NetSpec, scale_width


def _input_window(net_output, x: torch.Tensor, row: int, col: int) -> torch.Tensor:
    (grad,) = torch.autograd.grad(net_output[0, 0, row, col], x)
    return grad[0, 0]


# Instance norm mixes every pixel through its statistics, so only these two have a local window.
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_generator_output_pixel_sees_exactly_an_11x11_window(norm):
    torch.manual_seed(0)
    net = Generator(NetSpec(channels=1, width=16, norm=norm)).eval()
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    window = _input_window(net(x, torch.zeros(1, 1, 40, 40)), x, 20, 17)
    nonzero = window.nonzero()
    assert nonzero.shape[0] == 11 * 11
    assert nonzero[:, 0].min() == 15 and nonzero[:, 0].max() == 25  # centred: row 20 +- 5
    assert nonzero[:, 1].min() == 12 and nonzero[:, 1].max() == 22


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_critic_output_pixel_sees_exactly_an_11x11_patch(norm):
    torch.manual_seed(0)
    net = Discriminator(NetSpec(channels=1, width=16, norm=norm)).eval()
    x = torch.randn(1, 1, 40, 40, requires_grad=True)
    scores = net(x)
    assert scores.shape == (1, 1, 30, 30)  # unpadded: 5 px lost per side
    window = _input_window(scores, x, 7, 3)
    nonzero = window.nonzero()
    assert nonzero.shape[0] == 11 * 11
    assert (nonzero[:, 0].min(), nonzero[:, 0].max()) == (7, 17)
    assert (nonzero[:, 1].min(), nonzero[:, 1].max()) == (3, 13)


def test_receptive_field_and_padding_follow_layers_and_kernel():
    assert NetSpec().receptive_field == 11 and NetSpec().pad == 5
    assert NetSpec(num_layers=4, kernel_size=5).receptive_field == 17


def test_generator_is_residual_on_the_upsampled_coarser_image():
    net = Generator(NetSpec(width=8)).eval()
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    up = torch.rand(2, 1, 30, 30)
    assert torch.equal(net(torch.randn(2, 1, 30, 30), up), up)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_option_keeps_generator_size_and_one_channel(padding, activation):
    spec = NetSpec(channels=1, width=8, activation=activation, padding=padding)
    out = Generator(spec)(torch.randn(2, 1, 27, 31), torch.zeros(2, 1, 27, 31))
    assert out.shape == (2, 1, 27, 31)
    assert Discriminator(spec)(torch.randn(2, 1, 27, 31)).shape == (2, 1, 17, 21)


def test_grayscale_networks_have_one_input_channel():
    net = Generator(NetSpec(channels=1, width=32))
    assert net.features[0].conv.in_channels == 1 and net.tail.out_channels == 1


@pytest.mark.parametrize("field", ["norm", "activation", "padding"])
def test_unknown_option_is_rejected(field):
    with pytest.raises(ValueError, match=field):
        NetSpec(**{field: "bogus"})


def test_widths_double_every_four_scales_from_the_coarsest_and_are_capped():
    assert [scale_width(level) for level in range(11)] == [32] * 4 + [64] * 4 + [128] * 3
    assert scale_width(12, nfc=16, max_nfc=48) == 48


def test_init_is_reproducible_from_a_generator():
    first, second = Generator(NetSpec(width=8)), Generator(NetSpec(width=8))
    init_weights(first, torch.Generator().manual_seed(3))
    init_weights(second, torch.Generator().manual_seed(3))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert float(first.features[1].conv.weight.detach().std()) == pytest.approx(0.02, rel=0.2)


def test_instance_norm_is_per_image_whatever_the_batch():
    norm = InstanceNorm(4, affine=True)
    torch.nn.init.normal_(norm.weight, generator=torch.Generator().manual_seed(1))
    reference = torch.nn.InstanceNorm2d(4, affine=True)
    reference.load_state_dict(norm.state_dict())
    images = torch.randn(3, 4, 20, 20)
    one_by_one = torch.cat([norm(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(one_by_one, reference(images), atol=1e-5)
    assert torch.allclose(norm(images), reference(images), atol=1e-6)
