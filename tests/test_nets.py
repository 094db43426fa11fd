import pytest
import torch
import torch.nn.functional as F

from deploy_unet.errors import ConfigError, ShapeContractError
from deploy_unet.nets import create_net, list_nets, net_options
from deploy_unet.nets.fcn import _upsampler
from tests.conftest import thin_net


def test_registry_lists_all_reference_nets():
    assert set(list_nets()) == {"unet", "unetpp", "fcn8s", "fcn16s", "fcn32s", "unet3d"}


def test_unknown_net_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown net 'resunet'.*fcn16s, fcn32s, fcn8s, unet"):
        create_net("resunet")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) depth for net 'fcn8s'.*width_mult"):
        create_net("fcn8s", depth=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 0}, "depth=0 is out of range"),
    ({"depth": 7}, "depth=7 is out of range"),
    ({"up_mode": "deconv"}, "up_mode='deconv' is not valid"),
    ({"norm": "group"}, "norm='group' is not valid"),
])
def test_invalid_unet_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_net("unet", **kwargs)


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear", "nearest"])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_unet_output_matches_input_size(up_mode, depth):
    net = create_net("unet", depth=depth, base_channels=2, up_mode=up_mode, num_classes=5).eval()
    assert net.divisor == 2**depth
    h, w = net.divisor * 3, net.divisor * 2  # non-square, so swapped axes would show
    with torch.no_grad():
        out = net(torch.randn(2, 3, h, w))
    assert out.shape == (2, 5, h, w)


@pytest.mark.parametrize("arch", ["fcn8s", "fcn16s", "fcn32s"])
def test_fcn_output_matches_input_size(arch):
    net = thin_net(arch, num_classes=4)
    assert net.divisor == 32
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96)


def test_fcn_variants_differ_in_skip_layers():
    assert not hasattr(thin_net("fcn32s"), "score_pool4")
    assert hasattr(thin_net("fcn16s"), "score_pool4") and not hasattr(thin_net("fcn16s"), "score_pool3")
    assert hasattr(thin_net("fcn8s"), "score_pool3")


def test_non_divisible_unet_input_breaks_concat():
    """The reason for the contract: without it the skip concat fails (7x7 pools to 3x3, upsamples to 6x6)."""
    net = create_net("unet", depth=1, base_channels=2).eval()
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 7, 8))
    with pytest.raises(ShapeContractError, match="height 7 is not divisible by 2"):
        net.check_input_shape(torch.randn(1, 3, 7, 8))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_fcn_upsampler_is_bilinear_interpolation_at_init(factor):
    """FCN initialises its transposed convs to bilinear upsampling: away from the border they must
    agree with torch's own bilinear interpolation (align_corners=False)."""
    up = _upsampler(3, factor)
    x = torch.randn(1, 3, 6, 5)
    with torch.no_grad():
        got = up(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert got.shape == ref.shape
    m = factor  # the outermost input pixel's footprint sees zero padding in the transposed conv
    torch.testing.assert_close(got[..., m:-m, m:-m], ref[..., m:-m, m:-m], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["unet", "fcn8s"])
def test_config_recreates_an_identical_structure(arch):
    net = thin_net(arch)
    again = create_net(arch, **net.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert set(net.config) <= set(net_options(arch))
