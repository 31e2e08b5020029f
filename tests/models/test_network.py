import pytest
import torch

from vfa.models.network import VFANet, build_model, keras_init_

# timm inception_resnet_v2 without classifier (Keras: 54,336,736 incl. BN gammas=1 absent)
IRV2_BACKBONE_PARAMS = 54_306_464


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_seed_architecture_head_and_parameter_count():
    with torch.device("meta"):  # no memory, no compute: structure only
        model = build_model("inception_resnet_v2")
    assert isinstance(model, VFANet)
    assert model.backbone.num_features == 1536
    layers = list(model.head)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (1536, 1024, 1)
    assert _count(model.backbone) == IRV2_BACKBONE_PARAMS
    assert _count(model.head) == 1536 * 1024 + 1024 + 1024 + 1


def test_with_bn_head_variant():
    with torch.device("meta"):
        model = build_model("inception_resnet_v2", head_batchnorm=True)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model.head[1].eps == 1e-3 and model.head[1].momentum == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["resnet18", "inception_v3", "xception41", "mobilenetv3_large_100"])
def test_any_timm_backbone_gives_one_logit(name):
    with torch.device("meta"):
        model = build_model(name, head=(32,))
        out = model(torch.zeros(2, 3, 160, 96))
    assert out.shape == (2,)


def test_forward_small_and_features():
    torch.manual_seed(0)
    model = build_model("resnet18", head=(16,)).eval()
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        logit = model(x)
        feats = model.forward_features(x)
    assert logit.shape == (2,) and feats.shape[:2] == (2, 512)


def test_keras_init_glorot_uniform_zero_bias():
    torch.manual_seed(0)
    model = build_model("resnet18", head=(256,), init="keras")
    lin = model.head[0]
    limit = (6 / (lin.in_features + lin.out_features)) ** 0.5
    assert lin.weight.abs().max() <= limit and lin.weight.abs().max() > 0.9 * limit
    assert torch.all(lin.bias == 0)
    conv = model.backbone.conv1
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
    assert keras_init_(torch.nn.Linear(3, 3)).bias.abs().sum() == 0


def test_unknown_backbone_and_init():
    with pytest.raises(ValueError, match="unknown timm backbone"):
        build_model("not_a_net")
    with pytest.raises(ValueError, match="unknown init"):
        build_model("resnet18", init="bogus")


@pytest.mark.parametrize("output_stride", [16, 8, 4])
def test_small_cnn_at_a_finer_output_stride_computes_the_same_network(output_stride):
    """Same weights, dense pooling + dilation: every (32/os)-th cell is the stride-32 network's output."""
    import timm

    torch.manual_seed(0)
    native = timm.create_model("vfa_cnn_small").eval()
    dense = timm.create_model("vfa_cnn_small", output_stride=output_stride).eval()
    dense.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        a, b = native.forward_features(x), dense.forward_features(x)
    k = 32 // output_stride
    assert b.shape[-2:] == (a.shape[-2] * k, a.shape[-1] * k)
    torch.testing.assert_close(b[..., ::k, ::k], a, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="output_stride"):
        timm.create_model("vfa_cnn_small", output_stride=2)


@pytest.mark.parametrize("kernels, rf", [(None, 159), ((3, 3, 3, 1, 1), 63)])
def test_small_cnn_kernels_bound_the_receptive_field(kernels, rf):
    """An output cell's input support (gradient != 0) spans exactly the computed receptive field."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vfa_cnn_small", kernels=kernels).eval()
    x = torch.randn(1, 3, 512, 512, requires_grad=True)
    y = net.forward_features(x)
    y[0, :, 8, 8].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum((0, 2))).flatten()
    assert int(rows.max() - rows.min()) + 1 == rf
    with pytest.raises(ValueError, match="kernels"):
        timm.create_model("vfa_cnn_small", kernels=(3, 1))
