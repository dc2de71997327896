"""Thesis networks: weight counts (Tables 4.1, 4.3), shapes, configs, APR/pixel agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_aprnet.models import MODEL_NAMES, build_model, conv_weight_count, model_from_config

# Table 4.1 and 4.3 '#parameters' are convolution weights (biases and BN excluded).
THESIS_COUNTS = {
    "APR_A": 85088, "Pix_A": 23520, "APR_B": 226592, "Pix_B": 109728,
    "Pix_C": 257120, "APR_C": 371456, "Pix_C-expanded": 462464,
}


def _independent_count(layers):
    """sum over layers of level_kernels * in * out * k * k, from the thesis tables written out."""
    return sum(n * cin * cout * k * k for cin, cout, k, n in layers)


def test_thesis_tables_written_out():
    # Table 4.1 / 4.3 layer by layer: (in, out, k, level kernels)
    assert _independent_count([(1, 32, 11, 5), (32, 32, 3, 4), (32, 32, 3, 3), (32, 32, 1, 1),
                               (32, 6, 1, 1)]) == THESIS_COUNTS["APR_A"]
    assert _independent_count([(3, 32, 3, 1), (32, 64, 3, 1), (64, 128, 3, 1), (128, 128, 3, 1),
                               (128, 128, 1, 1), (128, 2, 1, 1)]) == THESIS_COUNTS["Pix_C"]


@pytest.mark.parametrize("name", sorted(THESIS_COUNTS))
def test_conv_weight_counts_match_thesis(name):
    assert conv_weight_count(build_model(name)) == THESIS_COUNTS[name]


def test_variants():
    # "same": one kernel for all levels = the pixel twin; "close": +3872 (a second 11x11 first-layer kernel)
    assert conv_weight_count(build_model("APR_A-same")) == 23520
    assert conv_weight_count(build_model("APR_B", variant="same")) == 109728
    assert conv_weight_count(build_model("APR_A-close")) == 23520 + 3872
    assert conv_weight_count(build_model("APR_B-close")) == 109728 + 3872
    # expanded pixel nets come within 2 % of their APR twins
    for pix, apr in (("Pix_A-expanded", "APR_A"), ("Pix_B-expanded", "APR_B")):
        ratio = conv_weight_count(build_model(pix)) / conv_weight_count(build_model(apr))
        assert 0.98 < ratio <= 1.0


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("ResNet50")
    with pytest.raises(ValueError, match="variant"):
        build_model("Pix_A-same")
    with pytest.raises(ValueError, match="variant"):
        build_model("APR_B", variant="expanded")


@pytest.mark.parametrize("name", ["Pix_A", "Pix_B", "Pix_C-expanded"])
def test_pixel_forward_and_config_round_trip(name):
    torch.manual_seed(0)
    m = build_model(name, width=0.25, dropout=0.5, spatial_dropout=0.3).eval()
    c = m.config["in_channels"]
    x = torch.randn(2, c, 64, 64)
    out = m(x)
    assert out.shape == (2, m.config["n_classes"])
    m2 = model_from_config(m.config).eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), out)
    feats = m.features(x, "conv2")
    assert feats.shape[:2] == (2, m.blocks["conv2"][0].out_channels) and feats.shape[2] == 16
    with pytest.raises(KeyError):
        m.features(x, "conv99")


def _apr_batch(images, add_level=False):
    from napari_aprnet import APR
    from napari_aprnet.nn import APRBatch
    aprs = [APR.from_image(im, rel_error=0.1) for im in images]
    return APRBatch.from_aprs(aprs, add_level_channel=add_level), aprs


@pytest.mark.parametrize("name", ["APR_A", "APR_B-close", "APR_C"])
def test_apr_forward_backward_and_round_trip(name):
    from napari_aprnet.data import make_shapes_dataset
    torch.manual_seed(0)
    m = build_model(name, width=0.25, dropout=0.5, spatial_dropout=0.3)
    ds = make_shapes_dataset(1, seed=0, size=32)
    images = [ds[i][0] for i in range(2)]
    if m.config["in_channels"] == 4:
        images = [np.repeat(im[..., None], 3, -1) for im in images]
    x, _ = _apr_batch(images, add_level=m.config["in_channels"] == 4)
    out = m(x)
    assert out.shape == (2, m.config["n_classes"])
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    m2 = model_from_config(m.config).eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))


def test_apr_same_equals_pixel_net_on_full_resolution_apr():
    """An APR net with shared kernels on an APR whose particles are all pixels is its pixel twin.

    Needs a pixel-level APR: a structure whose particles are all at level_max.
    """
    from napari_aprnet import APR
    from napari_aprnet.nn import APRBatch
    from napari_aprnet.structure import APRStructure
    torch.manual_seed(0)
    apr_net = build_model("APR_A-same", width=0.25).eval()
    pix_net = build_model("Pix_A", width=0.25).eval()
    # copy weights: APRConv weight (1, out, in, k, k) <- Conv2d weight (out, in, k, k)
    pix_state = pix_net.state_dict()
    new_state = {}
    for k, v in apr_net.state_dict().items():
        new_state[k] = pix_state[k].reshape(v.shape)
    apr_net.load_state_dict(new_state)
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    yy, xx = np.mgrid[:16, :16]
    structure = APRStructure.from_unsorted((16, 16), 4, np.full(256, 4), np.stack([yy.ravel(), xx.ravel()], 1))
    apr = APR(structure, image[structure.coords[:, 0], structure.coords[:, 1]])
    out_apr = apr_net(APRBatch.from_aprs([apr]))
    out_pix = pix_net(torch.from_numpy(image)[None, None])
    torch.testing.assert_close(out_apr, out_pix, atol=1e-5, rtol=1e-4)


def test_model_names_listed():
    assert set(MODEL_NAMES) == {"APR_A", "Pix_A", "APR_B", "Pix_B", "APR_C", "Pix_C"}
