"""Lazy reconstructions and pyramids (napari_aprnet.lazy) against dense references."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_aprnet import _native
from napari_aprnet.apr import APR
from napari_aprnet.coarsen import level_apr
from napari_aprnet.lazy import LazyReconstruction, LazyStack, TileCache, apr_pyramid, pyramid_depth
from napari_aprnet.samples import fluorescence_blobs, lattice_blobs_apr
from napari_aprnet.structure import APRStructure, validate_structure

MODES = ("constant", "smooth", "level")


@pytest.fixture(scope="module", params=["2d", "3d"])
def apr(request):
    """Real APRs whose sides are not powers of two (cut cells along the far edges)."""
    if request.param == "2d":
        image = fluorescence_blobs((45, 70), 6, seed=3)
    else:
        image = fluorescence_blobs((19, 33, 40), 6, seed=4)
    return APR.from_image(image, 0.1, sigma_th=20.0, grad_th=5.0)


def _random_key(rng, shape):
    key = []
    for n in shape:
        kind = rng.integers(4)
        if kind == 0:
            key.append(int(rng.integers(-n, n)))
        elif kind == 1:
            key.append(slice(None))
        else:
            a, b = sorted(int(v) for v in rng.integers(-n - 2, n + 2, size=2))
            step = int(rng.choice([1, 2, 3, 5])) * (1 if kind == 2 else -1)
            key.append(slice(a, b, step) if step > 0 else slice(b, a, step))
    return tuple(key)


@pytest.mark.parametrize("mode", MODES)
def test_slices_equal_the_full_reconstruction(apr, mode):
    full = apr.reconstruct(mode=mode)
    view = LazyReconstruction(apr.structure, apr.values, mode)
    assert view.shape == full.shape and view.dtype == full.dtype and view.ndim == full.ndim
    assert view.size == full.size and len(view) == full.shape[0]
    rng = np.random.default_rng(7)
    for _ in range(60):
        key = _random_key(rng, full.shape)
        got = view[key]
        read_now = any(not isinstance(k, slice) for k in key)  # an integer index reads, slices stay lazy
        assert isinstance(got, np.ndarray | np.generic) == read_now, f"key {key}"
        np.testing.assert_array_equal(np.asarray(got), full[key], err_msg=f"key {key}")
    np.testing.assert_array_equal(np.asarray(view), full)
    np.testing.assert_array_equal(view[..., -1], full[..., -1])


def test_chained_selections_stay_lazy_and_equal_numpy(apr):
    full = apr.reconstruct()
    view = LazyReconstruction(apr.structure, apr.values)
    view.eager_values = 10  # any selection bigger than this stays lazy, even with an integer index
    assert isinstance(view[0], LazyReconstruction) and isinstance(view[(0,) * (apr.ndim - 1) + (slice(0, 9),)],
                                                                  np.ndarray)
    tile = view[(slice(None),) * (apr.ndim - 2) + (slice(3, None, 2), slice(None, -4))]
    assert isinstance(tile, LazyReconstruction)
    assert tile.shape == full[(slice(None),) * (apr.ndim - 2) + (slice(3, None, 2), slice(None, -4))].shape
    inner = tile[1:, ::-3]
    ref = full[(slice(None),) * (apr.ndim - 2) + (slice(3, None, 2), slice(None, -4))][1:, ::-3]
    np.testing.assert_array_equal(np.asarray(inner), ref)
    np.testing.assert_array_equal(inner[(0,) * inner.ndim], ref[(0,) * ref.ndim])


def test_channels_are_a_trailing_axis():
    image = np.stack([fluorescence_blobs((40, 52), 5, seed=s) for s in (1, 2, 3)], axis=-1)
    apr = APR.from_image(image, 0.1, channel_axis=-1, sigma_th=20.0)
    full = apr.reconstruct()
    view = LazyReconstruction(apr.structure, apr.values)
    assert view.shape == full.shape == (40, 52, 3)
    for key in [(slice(None), slice(None), 1), (5, slice(None, None, -2)), (slice(2, 30, 3), 7, slice(None, 2))]:
        np.testing.assert_array_equal(view[key], full[key])


def test_bad_indices_get_clear_errors(apr):
    view = LazyReconstruction(apr.structure, apr.values)
    with pytest.raises(IndexError, match="out of bounds"):
        view[apr.shape[0]]
    with pytest.raises(IndexError, match="too many indices"):
        view[(0,) * (apr.ndim + 1)]
    for bad in (1.5, [0, 1], None, np.array([True])):
        with pytest.raises(TypeError, match="integers and slices"):
            view[bad]
    with pytest.raises(ValueError, match="unknown reconstruction mode"):
        LazyReconstruction(apr.structure, apr.values, "cubic")
    with pytest.raises(ValueError, match="values must have shape"):
        LazyReconstruction(apr.structure, apr.values[:-1])


def test_huge_views_refuse_to_materialise(apr):
    view = LazyReconstruction(apr.structure, apr.values)
    view.max_values = view.size - 1
    with pytest.raises(MemoryError, match="index a region"):
        np.asarray(view)
    assert np.asarray(view[0]).shape == view.shape[1:]  # a part still reads


def _mean_pyramid(image: np.ndarray, k: int) -> np.ndarray:
    """k times: the mean of each 2x block's elements that exist (a cut block averages what it has)."""
    out = image.astype(np.float64)
    for _ in range(k):
        for axis in range(out.ndim):
            n = out.shape[axis]
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, n % 2)
            padded = np.pad(out, pad)
            counts = np.pad(np.ones(n), (0, n % 2)).reshape(-1, 2).sum(axis=1)
            pairs = padded.reshape(padded.shape[:axis] + (-1, 2) + padded.shape[axis + 1:]).sum(axis=axis + 1)
            out = pairs / counts.reshape((-1,) + (1,) * (out.ndim - axis - 1))
    return out


def _max_pyramid(image: np.ndarray, k: int) -> np.ndarray:
    out = image
    for _ in range(k):
        for axis in range(out.ndim):
            n = out.shape[axis]
            idx = np.arange(0, n, 2)
            out = np.maximum(np.take(out, idx, axis=axis), np.take(out, np.minimum(idx + 1, n - 1), axis=axis))
    return out


def test_pyramid_levels_equal_the_tree_mean_and_finest_level(apr):
    constant = apr_pyramid(apr, "constant", n_levels=apr.level_max + 1)
    levels = apr_pyramid(apr, "level", n_levels=apr.level_max + 1)
    full, level_map = apr.reconstruct(), apr.reconstruct(mode="level")
    for k in range(apr.level_max + 1):
        ref = _mean_pyramid(full, k)
        assert constant[k].shape == ref.shape
        np.testing.assert_allclose(np.asarray(constant[k]), ref, rtol=1e-6, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(levels[k]), _max_pyramid(level_map, k))
    k = 2
    key = (slice(None, None, -2),) + (slice(1, None, 3),) * (apr.ndim - 1)
    np.testing.assert_allclose(constant[k][key], _mean_pyramid(full, k)[key], rtol=1e-6, atol=1e-3)


def test_smooth_pyramid_levels_are_the_smooth_image_of_the_level_apr(apr):
    full, level_map = apr.reconstruct(), apr.reconstruct(mode="level")
    s = apr.structure
    smooth = apr_pyramid(apr, "smooth", n_levels=3)
    for k in (1, 2):
        lv = s.level_max - k
        means, finest = _mean_pyramid(full, k), _max_pyramid(level_map, k)
        nodes = np.argwhere(finest > lv)  # the level's tree nodes
        coarse = s.levels <= lv
        levels = np.concatenate([s.levels[coarse], np.full(len(nodes), lv, np.uint8)])
        coords = np.concatenate([s.coords[coarse], nodes])
        values = np.concatenate([apr.values[coarse], means[tuple(nodes.T)]])
        order = np.lexsort(tuple(coords.T[::-1]) + (levels,))  # by level, then row-major
        ref_structure = APRStructure(means.shape, lv, levels[order], coords[order])
        derived, derived_values = level_apr(s, apr.values, lv)
        validate_structure(derived)
        np.testing.assert_array_equal(derived.levels, ref_structure.levels)
        np.testing.assert_array_equal(derived.coords, ref_structure.coords)
        np.testing.assert_allclose(derived_values, values[order], rtol=1e-6, atol=1e-3)
        ref = APR(ref_structure, values[order]).reconstruct(mode="smooth")
        np.testing.assert_allclose(np.asarray(smooth[k]), ref, rtol=1e-5, atol=1e-3)


def test_pyramid_depth_stops_at_a_small_coarsest_level():
    assert pyramid_depth((64, 64), 6) == 1
    assert pyramid_depth((512, 2048, 2048), 11) == 4  # 64 x 256 x 256 = 4 Mi cells
    assert pyramid_depth((4096, 4096), 12) == 2  # 2048 x 2048
    assert pyramid_depth((5000, 8192), 13) == 3


def test_a_stack_of_lazy_images_indexes_like_numpy(apr):
    recons = [apr.reconstruct(), apr.reconstruct(apr.values * 2)]
    views = [LazyReconstruction(apr.structure, apr.values), LazyReconstruction(apr.structure, apr.values * 2)]
    stack, full = LazyStack(views), np.stack(recons)
    assert stack.shape == full.shape and stack.dtype == full.dtype
    for key in [1, (0, 2), (slice(None), 3), (slice(None, None, -1), slice(1, 9, 2)), (-1, Ellipsis, 4)]:
        np.testing.assert_array_equal(stack[key], full[key])
    grid = LazyStack(views * 3, (3, 2))
    np.testing.assert_array_equal(grid[2, 1], recons[1])
    np.testing.assert_array_equal(grid[1:, 0, 4], np.stack([recons[0][4]] * 2))
    with pytest.raises(ValueError, match="same shape"):
        LazyStack([views[0], LazyReconstruction(apr.structure, apr.values, "level")])


def test_the_tile_cache_is_bounded_and_reused(apr):
    cache = TileCache(max_bytes=3 * 4 * apr.structure.n_pixels // apr.structure.shape[-2])  # 3 slices
    view = LazyReconstruction(apr.structure, apr.values, cache=cache)
    a = view[..., 0, :]
    assert cache.nbytes == a.nbytes and not a.flags.writeable
    assert view[..., 0, :] is a or np.shares_memory(view[..., 0, :], a)
    for i in range(1, 6):
        view[..., i, :]
    assert cache.nbytes <= cache.max_bytes


def test_reading_a_slice_of_a_big_apr_allocates_one_slice():
    apr = lattice_blobs_apr((256, 1024, 1024), period=256, radius=4.0, coarse_cell=32)
    full_bytes = 256 * 1024 * 1024 * 4
    pyramid = apr_pyramid(apr)
    tracemalloc.start()
    try:
        plane = pyramid[0][128]
        coarse = np.asarray(pyramid[-1][16])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plane.shape == (1024, 1024) and coarse.shape == pyramid[-1].shape[1:]
    assert peak < 12 * plane.nbytes < full_bytes / 20, f"peak {peak / 2**20:.1f} MiB"
    ref = APR(apr.structure, apr.values).reconstruct(region=(slice(128, 129),))[0]
    np.testing.assert_array_equal(plane, ref)


def test_level_reconstruction_is_thread_independent_and_cancellable(apr):
    s = apr.structure
    level = s.level_max - 1
    before = _native.max_threads()
    try:
        _native.set_num_threads(1)
        one = _native.reconstruct(s, apr.values, "constant", level=level)
        _native.set_num_threads(2)
        two = _native.reconstruct(s, apr.values, "constant", level=level)
    finally:
        _native.set_num_threads(before)
    assert one.tobytes() == two.tobytes()
    flag = np.ones(1, dtype=np.int32)
    with pytest.raises(_native.CancelledError):
        _native.reconstruct(s, apr.values, "constant", level=level, cancel_flag=flag)
    with pytest.raises(ValueError, match="pixel level only"):
        _native.reconstruct(s, apr.values, "smooth", level=level)
    with pytest.raises(ValueError, match="outside 0"):
        _native.reconstruct(s, apr.values, "constant", level=s.level_max + 1)
    with pytest.raises(ValueError, match="positive integers"):
        _native.reconstruct(s, apr.values, "constant", step=(0,) * s.ndim)
