"""The Convert widget's job converts block by block when the image would not fit (napari_aprnet.blockwise)."""
from __future__ import annotations

import threading

import numpy as np

from napari_aprnet.apr import APR
from napari_aprnet.params import APRParameters


class _NoWholeRead:
    """A (z, y, x) array-like that serves slices of planes and refuses to be read whole."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.planes_read = []

    def __getitem__(self, key):
        assert isinstance(key, slice), key
        self.planes_read.append(len(range(*key.indices(self.shape[0]))))
        return self.data[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was read")


def test_convert_job_goes_blockwise_when_the_image_would_not_fit(monkeypatch):
    from napari_aprnet import blockwise
    from napari_aprnet._widgets.convert import convert_job

    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[0:64, 0:24, 0:20]
    volume = (100 + rng.normal(0, 3, z.shape) + 800 * np.exp(-((z - 30) ** 2 + (y - 12) ** 2 + (x - 9) ** 2) / 20))
    volume = volume.astype(np.uint16)
    params = APRParameters(sigma_th=20.0, grad_th=2.0)
    budget = (10 + 2 * blockwise.halo_planes(params)) * 8 * 24 * 20 + 2 * 12 * 10 * 32  # blocks of < 64 planes
    assert blockwise.needs_blocks(volume.shape, budget)
    monkeypatch.setattr(blockwise, "default_budget", lambda: budget)  # "half the free memory" of a tiny machine
    image = _NoWholeRead(volume)
    job = convert_job(image, params, None, "constant", 3, cancel=threading.Event())
    messages = []
    try:
        while True:
            messages.append(next(job)["text"])
    except StopIteration as stop:
        result = stop.value
    assert "block by block" in messages[0]
    assert sum(n < volume.shape[0] for n in image.planes_read) >= 6  # the level map's blocks (and others)
    whole = APR.from_image(volume, params=params)
    np.testing.assert_array_equal(result.apr.coords, whole.coords)
    np.testing.assert_allclose(result.apr.values, whole.values, rtol=1e-6)
    assert np.isfinite(result.mean_error) and result.mean_error > 0  # measured block by block too
