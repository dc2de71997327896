"""Precise BatchNorm: running statistics re-estimated as plain averages over batches."""
from types import SimpleNamespace

import torch

from napari_aprnet.train import recalibrate_batchnorm


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU())


def test_running_stats_become_the_average_of_batch_stats():
    model = _model()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    gen = torch.Generator().manual_seed(1)
    batches = [SimpleNamespace(inputs=torch.randn(4, 1, 9, 9, generator=gen) * (i + 1) + i) for i in range(3)]
    n = recalibrate_batchnorm(model, batches)
    assert n == 3
    conv, bn = model[0], model[1]
    with torch.no_grad():
        feats = [conv(b.inputs) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, variances, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training  # settings restored
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)


def test_model_without_batchnorm_is_left_alone():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    assert recalibrate_batchnorm(model, [SimpleNamespace(inputs=torch.zeros(1, 1, 5, 5))]) == 0
