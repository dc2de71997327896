"""U-Nets: registry names, APR_UNet == Pix_UNet on all-pixel APRs, finite outputs and gradients on real structures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_structure
from test_nn_conv import full_structure

from napari_aprnet.models import UNET_NAMES, UNet, build_model, model_from_config, parse_model_name
from napari_aprnet.nn import APRBatch


def test_names_defaults_and_config_round_trip():
    assert UNET_NAMES == ("APR_UNet", "Pix_UNet")
    net = build_model("APR_UNet")
    assert isinstance(net, UNet) and net.mode == "apr" and net.depth == 3
    assert net.config == {"name": "APR_UNet", "variant": None, "n_classes": 2, "in_channels": 1, "ndim": 2,
                          "depth": 3, "width": 16}
    assert net.encoders[0][0].n_level_kernels == 2 and net.head.n_level_kernels == 1
    assert build_model("APR_UNet-same", ndim=3).encoders[0][0].n_level_kernels == 1
    pix = build_model("Pix_UNet", n_classes=3, ndim=3, depth=2, width=4)
    assert pix.mode == "pixels" and isinstance(pix.encoders[0][0], torch.nn.Conv3d)
    assert pix.encoders[2][0].out_channels == 16 and pix.head.out_channels == 3
    for model in (net, pix):
        again = model_from_config(model.config)
        assert again.config == model.config
        assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    spec = parse_model_name("APR_UNet")
    assert spec.family == "unet" and spec.mode == "apr" and spec.default_in_channels == 1
    assert parse_model_name("APR_B").family == "classifier"
    assert build_model("APR_A", n_classes=6).config["width"] == 1.0  # classifiers keep their defaults


@pytest.mark.parametrize("name, kwargs, match", [
    ("Pix_UNet-same", {}, "variant"), ("APR_UNet-close", {}, "variant"), ("APR_UNet", {"ndim": 4}, "ndim"),
    ("APR_UNet", {"depth": 0}, "depth"), ("APR_UNet", {"width": 2.5}, "width"),
    ("APR_UNet", {"dropout": 0.5}, "dropout"), ("APR_B", {"depth": 2}, "U-Nets only"),
    ("APR_B", {"ndim": 3}, "U-Nets only"), ("APR_Unet", {}, "unknown model")])
def test_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **kwargs)


def twin_nets(ndim: int, depth: int, width: int, in_channels: int = 1, n_classes: int = 3):
    """APR_UNet and Pix_UNet with the same weights (every APR level kernel = the pixel kernel), float64."""
    torch.manual_seed(0)
    apr = build_model("APR_UNet", n_classes, ndim=ndim, depth=depth, width=width, in_channels=in_channels).double()
    pix = build_model("Pix_UNet", n_classes, ndim=ndim, depth=depth, width=width, in_channels=in_channels).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial batch norm affine parameters and running statistics
        for m in pix.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
    target = apr.state_dict()
    apr.load_state_dict({k: v.expand_as(target[k]) if v.dim() else v
                         for k, v in ((k, pix.state_dict()[k]) for k in target)})
    return apr, pix


@pytest.mark.parametrize("shapes, depth", [([(13, 11), (13, 11)], 2), ([(16, 16)], 3), ([(6, 7, 5)], 2),
                                           ([(4, 8, 8), (4, 8, 8)], 1)])
@pytest.mark.parametrize("train", [True, False])
def test_apr_unet_equals_pix_unet_on_all_pixel_aprs(shapes, depth, train):
    ndim = len(shapes[0])
    apr, pix = twin_nets(ndim, depth, width=3)
    apr.train(train), pix.train(train)
    img = torch.randn(len(shapes), 1, *shapes[0], dtype=torch.float64, requires_grad=True)
    structures = [full_structure(s) for s in shapes]
    feats = img.reshape(len(shapes), -1).reshape(-1, 1)  # row-major pixels are the particle order
    out_apr = apr(APRBatch(feats, structures))
    out_pix = pix(img)
    n_classes = out_pix.shape[1]
    flat_pix = out_pix.movedim(1, -1).reshape(-1, n_classes)
    assert out_apr.shape == (sum(s.n_particles for s in structures), n_classes)
    torch.testing.assert_close(out_apr, flat_pix, rtol=0, atol=1e-10)
    # the same gradients for the input and for the weights (kernel 0 of the APR convolutions)
    w = torch.randn(flat_pix.shape, dtype=torch.float64)
    g_apr = torch.autograd.grad((out_apr * w).sum(), [img, apr.encoders[0][0].weight, apr.head.weight])
    g_pix = torch.autograd.grad((flat_pix * w).sum(), [img, pix.encoders[0][0].weight, pix.head.weight])
    torch.testing.assert_close(g_apr[0], g_pix[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(g_apr[1][0], g_pix[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(g_apr[2][0], g_pix[2], rtol=0, atol=1e-9)


@pytest.mark.parametrize("shapes", [[(37, 29), (20, 33)], [(11, 19, 13), (9, 9, 9)]])
def test_finite_outputs_and_gradients_on_varied_levels(shapes):
    structures = [random_structure(s, seed=i + 1) for i, s in enumerate(shapes)]
    assert all(len(np.unique(s.levels)) >= 3 for s in structures)
    torch.manual_seed(0)
    net = build_model("APR_UNet", n_classes=2, ndim=len(shapes[0]), depth=2, width=2, in_channels=2)
    values = [np.random.default_rng(i).random(s.n_particles).astype(np.float32) for i, s in enumerate(structures)]
    batch = APRBatch.from_aprs(structures, values=values, add_level_channel=True)
    out = net(batch)
    assert out.shape == (batch.features.shape[0], 2) and torch.isfinite(out).all()
    target = torch.from_numpy(np.concatenate([s.levels % 2 for s in structures]).astype(np.int64))
    torch.nn.functional.cross_entropy(out, target).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads[:2])
    # both level kernels of the first convolution see particles (pixel-level and coarser ones)
    assert (net.encoders[0][0].weight.grad.flatten(1).abs().sum(1) > 0).all()


def test_apr_unet_input_errors():
    net = build_model("APR_UNet", depth=3, width=2)
    small = full_structure((4, 4))  # level_max 2 < depth 3
    with pytest.raises(ValueError, match="depth 3"):
        net(APRBatch(torch.zeros(16, 1), [small]))
    with pytest.raises(TypeError, match="APRBatch"):
        net(torch.zeros(1, 1, 16, 16))
