"""E sweep helpers: parsing, error statistics, and a sweep against direct conversion."""
from __future__ import annotations

import numpy as np
import pytest

from napari_aprnet.metrics import error_stats
from napari_aprnet.samples import fluorescence_blobs
from napari_aprnet.sweep import parse_rel_errors, stack_points, sweep_rel_error


def test_parse_list_and_range():
    assert parse_rel_errors("0.05, 0.1 0.2") == [0.05, 0.1, 0.2]
    values = parse_rel_errors("0.01:1:3")
    np.testing.assert_allclose(values, [0.01, 0.1, 1.0])
    assert parse_rel_errors("0.3:0.3:1") == [0.3]


@pytest.mark.parametrize("text, match", [("", "no E values"), ("a, b", "cannot read"), ("0.1, -1", "positive"),
                                         ("0.1:0.2", "cannot read"), ("0:1:3", "start > 0"),
                                         ("0.1, nan", "positive")])
def test_parse_bad(text, match):
    with pytest.raises(ValueError, match=match):
        parse_rel_errors(text)


def test_error_stats_against_numpy():
    rng = np.random.default_rng(1)
    image = rng.random((20, 30)) * 10
    recon = image + rng.normal(0, 0.5, image.shape)
    mean, mx, psnr = error_stats(image, recon)
    d = np.abs(image - recon)
    assert mean == pytest.approx(d.mean()) and mx == pytest.approx(d.max())
    assert psnr == pytest.approx(10 * np.log10((image.max() - image.min()) ** 2 / np.mean(d**2)))
    assert error_stats(image, image)[2] == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        error_stats(image, image[:5])


def test_sweep_matches_direct_conversion():
    from napari_aprnet.apr import APR

    image = fluorescence_blobs((48, 40), 6, seed=3)
    es = [0.05, 0.2, 0.8]
    points = list(sweep_rel_error(image, es))
    assert [p.rel_error for p in points] == es
    for p in points:
        direct = APR.from_image(image, p.rel_error)
        assert p.n_particles == direct.n_particles
        assert p.computational_ratio == pytest.approx(image.size / direct.n_particles)
        np.testing.assert_array_equal(p.reconstruction, direct.reconstruct())
        np.testing.assert_array_equal(p.level_map, direct.reconstruct(mode="level"))
        assert (p.mean_error, p.max_error) == pytest.approx(direct.reconstruction_error(image))
    # larger E never needs more particles on this image
    assert points[0].n_particles >= points[1].n_particles >= points[2].n_particles
    recon, levels = stack_points(points)
    assert recon.shape == (3, 48, 40) and levels.shape == (3, 48, 40)


def test_sweep_cancel_stops_early():
    image = fluorescence_blobs((32, 32), 3, seed=0)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    assert len(list(sweep_rel_error(image, [0.1, 0.2, 0.3], cancel=cancel))) <= 1


def test_sweep_without_images_measures_the_same_errors_block_by_block(monkeypatch):
    from napari_aprnet import metrics

    image = fluorescence_blobs((40, 44), 6, seed=5)
    monkeypatch.setattr(metrics, "BLOCK_VALUES", 44 * 3)  # 3 rows per block: 14 blocks
    kept = list(sweep_rel_error(image, [0.1, 0.4], mode="smooth"))
    lean = list(sweep_rel_error(image, [0.1, 0.4], mode="smooth", keep_images=False))
    for a, b in zip(kept, lean):
        assert b.reconstruction is None and b.level_map is None
        assert (b.mean_error, b.max_error, b.psnr) == pytest.approx((a.mean_error, a.max_error, a.psnr), rel=1e-9)
        assert b.apr.equals(a.apr)
    with pytest.raises(ValueError, match="hold no images"):
        stack_points(lean)
