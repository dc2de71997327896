"""labels.py: majority labels per particle and painting, against dense numpy references."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_structure
from test_nn_conv import full_structure

from napari_aprnet import _native
from napari_aprnet.labels import paint_labels, particle_labels
from napari_aprnet.structure import APRStructure


def reference_majority(s: APRStructure, image: np.ndarray) -> np.ndarray:
    """Per particle, the most frequent label of its pixels; ties to the larger label (dense numpy)."""
    pid = s.particle_id_image().ravel()
    values, lab = np.unique(np.asarray(image).ravel(), return_inverse=True)
    n_lab = len(values)
    counts = np.bincount(pid * n_lab + lab.ravel(), minlength=s.n_particles * n_lab).reshape(-1, n_lab)
    return values[n_lab - 1 - np.argmax(counts[:, ::-1], axis=1)].astype(np.int64)


def blob_labels(shape, n_labels: int, seed: int) -> np.ndarray:
    """Piecewise constant labels: the label of the nearest of a few random seeds (Voronoi cells)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (n_labels, len(shape))) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in shape], indexing="ij"), -1)
    d = ((grid[..., None, :] - centres) ** 2).sum(-1)
    return np.argmin(d, axis=-1)


@pytest.mark.parametrize("shape, seed", [((37, 53), 1), ((16, 16), 3), ((11, 19, 23), 2), ((8, 5, 9), 5)])
@pytest.mark.parametrize("kind", ["noise", "blobs"])
def test_majority_matches_reference(shape, seed, kind):
    s = random_structure(shape, seed=seed)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4, shape) if kind == "noise" else blob_labels(shape, 6, seed)
    got = particle_labels(s, image)
    assert got.dtype == np.int64 and got.shape == (s.n_particles,)
    np.testing.assert_array_equal(got, reference_majority(s, image))


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.uint64])
def test_every_integer_dtype(dtype):
    s = random_structure((21, 18), seed=7)
    image = np.random.default_rng(0).integers(0, 2 if dtype == np.bool_ else 5, s.shape).astype(dtype)
    np.testing.assert_array_equal(particle_labels(s, image), reference_majority(s, image))


def test_large_labels_and_non_contiguous_input():
    s = random_structure((3, 20, 17), seed=4)
    rng = np.random.default_rng(1)
    image = (rng.integers(0, 3, s.shape) * (2 ** 40) + 7).astype(np.int64)
    np.testing.assert_array_equal(particle_labels(s, image), reference_majority(s, image))
    big = np.full(s.shape, 2 ** 63 - 1, dtype=np.uint64)
    assert (particle_labels(s, big) == 2 ** 63 - 1).all()
    wide = rng.integers(0, 3, (s.shape[0], s.shape[1], 2 * s.shape[2]))
    np.testing.assert_array_equal(particle_labels(s, wide[..., ::2]), reference_majority(s, wide[..., ::2]))


def test_ties_go_to_the_larger_label():
    # one 4x4 image, one level-1 particle covering the top-left 2x2 block, the rest pixels
    shape = (4, 4)
    fine = [(y, x) for y in range(4) for x in range(4) if not (y < 2 and x < 2)]
    s = APRStructure.from_unsorted(shape, 2, [1] + [2] * len(fine), [(0, 0)] + fine)
    assert s.levels[0] == 1
    for block, want in [([[1, 1], [2, 2]], 2), ([[5, 0], [0, 5]], 5), ([[3, 9], [4, 1]], 9),
                        ([[0, 0], [0, 7]], 0), ([[6, 6], [6, 6]], 6)]:
        image = np.zeros(shape, dtype=np.int32)
        image[:2, :2] = block
        assert particle_labels(s, image)[0] == want, block


def test_clipped_border_cells_count_only_pixels_inside():
    # a 3x3 image as one level-0 particle: its 4x4 cell is clipped to 9 pixels
    s = APRStructure((3, 3), 2, np.array([0], np.uint8), np.zeros((1, 2), np.int32))
    image = np.array([[1, 1, 2], [1, 2, 2], [2, 0, 0]])  # 1: 3, 2: 4, 0: 2
    assert particle_labels(s, image).tolist() == [2]


def test_thread_count_does_not_change_the_result():
    s = random_structure((24, 40, 36), seed=9, p_split=0.5, min_level=4)
    assert s.n_particles > 4096  # enough particles for the parallel path
    image = np.random.default_rng(2).integers(0, 3, s.shape).astype(np.uint16)
    threads = _native.max_threads()
    try:
        _native.set_num_threads(1)
        one = particle_labels(s, image)
        _native.set_num_threads(3)
        three = particle_labels(s, image)
    finally:
        _native.set_num_threads(threads)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(one, reference_majority(s, image))


def test_bad_label_images_are_refused():
    s = random_structure((12, 10), seed=1)
    with pytest.raises(ValueError, match="shape"):
        particle_labels(s, np.zeros((10, 12), np.int32))
    with pytest.raises(ValueError, match="shape"):
        particle_labels(s, np.zeros((1, 12, 10), np.int32))
    neg = np.zeros(s.shape, np.int16)
    neg[3, 4] = -1
    with pytest.raises(ValueError, match="negative"):
        particle_labels(s, neg)
    with pytest.raises(TypeError, match="integers"):
        particle_labels(s, np.zeros(s.shape, np.float32))
    with pytest.raises(ValueError, match="2\\*\\*63"):
        particle_labels(s, np.full(s.shape, 2 ** 63, np.uint64))


# ----- painting ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 53), (11, 19, 23)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.uint16, np.bool_])
def test_paint_matches_reference(shape, dtype):
    s = random_structure(shape, seed=3)
    rng = np.random.default_rng(0)
    if dtype == np.int32:  # the extremes of int32 must survive (no float32 round trip)
        labels = rng.integers(-2 ** 31, 2 ** 31, s.n_particles, dtype=np.int64).astype(np.int32)
        labels[:2] = [2 ** 31 - 1, -2 ** 31]
    elif dtype == np.int64:
        labels = rng.integers(-2 ** 62, 2 ** 62, s.n_particles, dtype=np.int64)
    else:
        labels = rng.integers(0, 2, s.n_particles).astype(dtype)
    out = paint_labels(s, labels)
    assert out.dtype == np.dtype(dtype) and out.shape == s.shape
    np.testing.assert_array_equal(out, labels[s.particle_id_image()])


@pytest.mark.parametrize("shape, region", [((37, 53), ((5, 30), (0, 53))), ((37, 53), ((36, 37), (7, 8))),
                                           ((37, 53), ((3, 3), (0, 10))),
                                           ((11, 19, 23), ((2, 9), (4, 17), (1, 22)))])
def test_paint_regions(shape, region):
    s = random_structure(shape, seed=6)
    labels = np.arange(s.n_particles, dtype=np.int64) * 3 + 1
    out = paint_labels(s, labels, region=region)
    want = labels[s.particle_id_image()][tuple(slice(a, b) for a, b in region)]
    assert out.shape == want.shape
    np.testing.assert_array_equal(out, want)


def test_paint_refuses_bad_input():
    s = random_structure((12, 10), seed=1)
    with pytest.raises(ValueError, match="shape"):
        paint_labels(s, np.zeros(s.n_particles + 1, np.int32))
    with pytest.raises(TypeError, match="integers"):
        paint_labels(s, np.zeros(s.n_particles, np.float32))
    with pytest.raises(IndexError, match="outside"):
        paint_labels(s, np.zeros(s.n_particles, np.int32), region=((0, 13), (0, 10)))
    with pytest.raises(ValueError, match="axes"):
        paint_labels(s, np.zeros(s.n_particles, np.int32), region=((0, 12),))


def test_cancel_flag():
    s = random_structure((20, 20), seed=1)
    flag = np.ones(1, np.int32)
    with pytest.raises(_native.CancelledError):
        particle_labels(s, np.zeros(s.shape, np.uint8), cancel_flag=flag)
    with pytest.raises(_native.CancelledError):
        paint_labels(s, np.zeros(s.n_particles, np.uint8), cancel_flag=flag)


# ----- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(13, 22), (7, 6, 9)])
def test_round_trip_all_pixel_apr(shape):
    s = full_structure(shape)
    image = np.random.default_rng(1).integers(0, 50, shape).astype(np.int32)
    np.testing.assert_array_equal(paint_labels(s, particle_labels(s, image)), image)


@pytest.mark.parametrize("shape", [(37, 53), (11, 19, 23)])
def test_round_trip_labels_constant_per_cell(shape):
    s = random_structure(shape, seed=8)
    per_particle = np.random.default_rng(2).integers(0, 2 ** 31 - 1, s.n_particles).astype(np.int32)
    image = paint_labels(s, per_particle)
    np.testing.assert_array_equal(particle_labels(s, image), per_particle)
    np.testing.assert_array_equal(paint_labels(s, particle_labels(s, image).astype(np.int32)), image)
