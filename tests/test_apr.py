"""APR object and C reconstruction (constant, level, smooth; regions), checked against numpy."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_structure, random_values

from napari_aprnet import APR, APRStructure, _native
from napari_aprnet.apr import normalize_region, validate_structure

SHAPES = [(37, 53), (64, 64), (1, 1), (5, 3), (11, 19, 23), (8, 8, 8)]


def _pixel_distances(structure: APRStructure):
    """Distance from every pixel centre to every particle-cell centre, and each pixel's reach (its cell side)."""
    step = 1 << (structure.level_max - structure.levels.astype(np.int64))
    lo = structure.coords.astype(np.int64) * step[:, None]
    hi = np.minimum(lo + step[:, None], np.asarray(structure.shape))
    centres = (lo + hi) / 2.0
    ids = structure.particle_id_image().ravel()
    pix = np.stack(np.meshgrid(*[np.arange(n) + 0.5 for n in structure.shape], indexing="ij"), -1)
    pix = pix.reshape(-1, structure.ndim)
    d = np.sqrt(((pix[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
    return d, step[ids].astype(np.float64)[:, None]


def smooth_reference(structure: APRStructure, values: np.ndarray) -> np.ndarray:
    """Dense numpy evaluation of the smooth reconstruction formula (see apr.py)."""
    d, reach = _pixel_distances(structure)
    w = np.where(d < reach, 1.0 - d / reach, 0.0)
    vals = values.astype(np.float64).reshape(structure.n_particles, -1)
    out = (w @ vals) / w.sum(1, keepdims=True)
    return out.reshape(structure.shape + vals.shape[1:]).squeeze(-1) if values.ndim == 1 \
        else out.reshape(structure.shape + (vals.shape[1],))


def neighbour_range(structure: APRStructure, values: np.ndarray):
    """Min and max of the values of particles within reach of each pixel (1-channel)."""
    d, reach = _pixel_distances(structure)
    near = d < reach
    v = values.astype(np.float64)[None, :]
    return (np.where(near, v, np.inf).min(1).reshape(structure.shape),
            np.where(near, v, -np.inf).max(1).reshape(structure.shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [None, 3])
def test_constant_matches_particle_id_image(shape, channels):
    s = random_structure(shape, seed=sum(shape))
    v = random_values(s, channels, seed=1)
    apr = APR(s, v)
    out = apr.reconstruct()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, v[s.particle_id_image()])


def test_feature_map_reconstruction(structure_2d):
    apr = APR(structure_2d, random_values(structure_2d))
    feats = np.arange(structure_2d.n_particles * 7, dtype=np.float64).reshape(-1, 7)
    out = apr.reconstruct(feats)
    assert out.shape == structure_2d.shape + (7,)
    np.testing.assert_array_equal(out, feats.astype(np.float32)[structure_2d.particle_id_image()])


@pytest.mark.parametrize("shape", SHAPES)
def test_level_map(shape):
    s = random_structure(shape, seed=3)
    out = APR(s, random_values(s)).reconstruct(mode="level")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, s.levels[s.particle_id_image()])


REGIONS_2D = [np.s_[3:20, 7:41], np.s_[0:1, 0:1], np.s_[-5:, :], np.s_[10:11], np.s_[:, 52:53],
              ((4, 9), (0, 53))]
REGIONS_3D = [np.s_[2:9, 3:17, 1:20], np.s_[10:11, 18:19, 22:23], np.s_[5:6]]


@pytest.mark.parametrize("mode", ["constant", "smooth", "level"])
def test_region_equals_slice_of_full(structure_2d, structure_3d, mode):
    for s, regions in ((structure_2d, REGIONS_2D), (structure_3d, REGIONS_3D)):
        apr = APR(s, random_values(s, 2, seed=5))
        full = apr.reconstruct(mode=mode)
        for region in regions:
            part = apr.reconstruct(mode=mode, region=region)
            sl = tuple(slice(a, b) for a, b in normalize_region(region, s.shape))
            np.testing.assert_array_equal(part, full[sl])


@pytest.mark.parametrize("shape", [(37, 53), (5, 3), (16, 16), (11, 19, 23), (6, 9, 4)])
def test_smooth_matches_numpy_reference(shape):
    s = random_structure(shape, seed=7, p_split=0.5)
    v = random_values(s, seed=2)
    out = APR(s, v).reconstruct(mode="smooth")
    np.testing.assert_allclose(out, smooth_reference(s, v), rtol=1e-5, atol=1e-5)
    lo, hi = neighbour_range(s, v)
    assert np.all(out >= lo - 1e-5) and np.all(out <= hi + 1e-5)


def test_smooth_multichannel_matches_reference(structure_3d):
    v = random_values(structure_3d, 4, seed=9)
    out = APR(structure_3d, v).reconstruct(mode="smooth")
    assert out.shape == structure_3d.shape + (4,)
    np.testing.assert_allclose(out, smooth_reference(structure_3d, v), rtol=1e-5, atol=1e-5)


def test_smooth_is_exact_for_constant_values(structure_2d, structure_3d):
    for s in (structure_2d, structure_3d):
        v = np.full(s.n_particles, 0.3712, dtype=np.float32)
        out = APR(s, v).reconstruct(mode="smooth")
        np.testing.assert_array_equal(out, np.full(s.shape, np.float32(0.3712)))


def test_smooth_equals_constant_at_pixel_level(structure_2d):
    # all particles at pixel level: smooth == constant everywhere
    s = random_structure((9, 14), seed=0, p_split=1.0)
    assert np.all(s.levels == s.level_max)
    apr = APR(s, random_values(s))
    np.testing.assert_array_equal(apr.reconstruct(mode="smooth"), apr.reconstruct())
    # mixed: pixels inside pixel-level cells keep their particle's value
    apr = APR(structure_2d, random_values(structure_2d))
    pixel_level = apr.reconstruct(mode="level") == structure_2d.level_max
    assert pixel_level.any() and not pixel_level.all()
    np.testing.assert_array_equal(apr.reconstruct(mode="smooth")[pixel_level], apr.reconstruct()[pixel_level])


def test_smooth_differs_from_constant_at_coarse_cells(structure_2d):
    apr = APR(structure_2d, random_values(structure_2d))
    coarse = apr.reconstruct(mode="level") < structure_2d.level_max
    assert not np.allclose(apr.reconstruct(mode="smooth")[coarse], apr.reconstruct()[coarse])


@pytest.mark.parametrize("mode", ["constant", "smooth"])
def test_result_does_not_depend_on_thread_count(mode):
    s = random_structure((40, 33, 29), seed=4)
    apr = APR(s, random_values(s, 3))
    before = _native.max_threads()
    try:
        _native.set_num_threads(1)
        one = apr.reconstruct(mode=mode)
        _native.set_num_threads(3)
        three = apr.reconstruct(mode=mode)
    finally:
        _native.set_num_threads(before)
    assert one.tobytes() == three.tobytes()


def test_bad_arguments_raise_clear_errors(structure_2d):
    apr = APR(structure_2d, random_values(structure_2d))
    with pytest.raises(ValueError, match="shape"):
        apr.reconstruct(np.zeros(structure_2d.n_particles + 1))
    with pytest.raises(ValueError, match="mode"):
        apr.reconstruct(mode="cubic")
    with pytest.raises(ValueError, match="step"):
        apr.reconstruct(region=np.s_[::2])
    with pytest.raises(ValueError, match="no pixels"):
        apr.reconstruct(region=np.s_[40:50])
    with pytest.raises(ValueError, match="axes"):
        apr.reconstruct(region=np.s_[1:2, 1:2, 1:2])
    with pytest.raises(ValueError, match="shape"):
        APR(structure_2d, np.zeros((3, 3)))
    with pytest.raises(TypeError):
        APR("not a structure", np.zeros(3))


def _structure(shape, level_max, levels, coords):
    return APRStructure(shape, level_max, np.asarray(levels), np.asarray(coords))


VALIDATORS = pytest.mark.parametrize("validate_structure", [validate_structure, _native.validate_partition],
                                     ids=["numpy", "C"])


@VALIDATORS
def test_validate_structure_catches_bad_structures(validate_structure):
    good = random_structure((8, 8), seed=1)
    validate_structure(good)
    # gap: drop one particle
    gap = _structure((8, 8), 3, good.levels[1:], good.coords[1:])
    with pytest.raises(ValueError, match="partition"):
        validate_structure(gap)
    # overlap: root cell plus everything else (volume too large)
    over = APRStructure.from_unsorted((8, 8), 3, np.r_[0, good.levels], np.r_[[[0, 0]], good.coords])
    with pytest.raises(ValueError, match="partition|overlap"):
        validate_structure(over)
    # out of the level grid
    bad = good.coords.copy()
    bad[-1, 1] = 8
    with pytest.raises(ValueError, match="outside"):
        validate_structure(_structure((8, 8), 3, good.levels, bad))
    # level above level_max
    lv = good.levels.copy()
    lv[-1] = 4
    with pytest.raises(ValueError, match="level"):
        validate_structure(_structure((8, 8), 3, lv, good.coords))
    # unsorted
    order = np.arange(good.n_particles)[::-1]
    with pytest.raises(ValueError, match="sorted|order"):
        validate_structure(_structure((8, 8), 3, good.levels[order], good.coords[order]))


@VALIDATORS
def test_validate_structure_overlap_with_right_volume(validate_structure):
    # level-1 cell (0,0) covers pixels of the 4 level-2 cells below; drop another level-1 cell's
    # worth of pixels elsewhere so the volume still matches.
    s = _structure((4, 4), 2, [1, 1, 1, 2, 2, 2, 2],
                   [[0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [1, 0], [1, 1]])
    assert s.n_pixels == 16
    with pytest.raises(ValueError, match="overlap"):
        validate_structure(s)
    # 3D: the 8 level-1 cells, the last split into its 8 children, minus its last child plus a level-2
    # cell inside the first level-1 cell: the volume matches, one cell lies inside another
    cells = [(1, c) for c in np.ndindex(2, 2, 2)][:-1] + [(2, tuple(2 + np.array(c))) for c in np.ndindex(2, 2, 2)]
    validate_structure(APRStructure.from_unsorted((4, 4, 4), 2, [lv for lv, _ in cells], [c for _, c in cells]))
    nested = cells[:-1] + [(2, (0, 0, 1))]
    with pytest.raises(ValueError, match="overlap"):
        validate_structure(APRStructure.from_unsorted((4, 4, 4), 2, [lv for lv, _ in nested],
                                                      [c for _, c in nested]))


@pytest.mark.parametrize("shape", [(37, 50), (9, 21, 14)])
def test_the_c_partition_check_passes_real_and_random_apr(shape):
    validate_structure(random_structure(shape, seed=2))
    _native.validate_partition(random_structure(shape, seed=2))
    image = np.random.default_rng(0).poisson(100, shape).astype(np.uint16)
    _native.validate_partition(APR.from_image(image, 0.2).structure)


def test_native_rejects_invalid_cells_before_c():
    s = random_structure((8, 8), seed=1)
    bad = s.coords.copy()
    bad[0, 0] = 100
    broken = _structure((8, 8), 3, s.levels, bad)
    with pytest.raises(ValueError, match="outside"):
        APR(broken, np.zeros(s.n_particles)).reconstruct()


def test_properties_copy_and_repr(structure_3d):
    v = random_values(structure_3d, 2)
    apr = APR(structure_3d, v)
    assert apr.n_particles == structure_3d.n_particles
    assert apr.shape == (11, 19, 23) and apr.ndim == 3 and apr.n_channels == 2
    assert apr.level_max == 5 and apr.level_min == int(structure_3d.levels.min())
    assert apr.computational_ratio == pytest.approx(11 * 19 * 23 / structure_3d.n_particles)
    assert sum(apr.level_counts().values()) == apr.n_particles
    assert apr.tree[0].dtype == np.uint8
    text = repr(apr)
    assert f"particles={apr.n_particles}" in text and "CR=" in text and "levels=" in text
    c = apr.copy()
    assert c.equals(apr) and c.values is not apr.values
    c.values[0, 0] += 1
    assert not c.equals(apr)
    w = apr.with_values(np.zeros(apr.n_particles))
    assert w.structure is apr.structure and w.n_channels == 1
    assert not w.equals(apr)


def test_reconstruction_error(structure_2d):
    v = random_values(structure_2d)
    apr = APR(structure_2d, v)
    image = apr.reconstruct() + np.float32(0.25)
    mean, mx = apr.reconstruction_error(image)
    assert mean == pytest.approx(0.25, abs=1e-6) and mx == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        apr.reconstruction_error(image[1:])


# ----- formation through APR.from_image ------------------------------------------

def _blob(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (100.0 * (sum(g ** 2 for g in grids) < 0.35) + 10 + rng.random(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(45, 38), (10, 17, 21)])
def test_from_image_values_are_cell_means(shape):
    from conftest import cell_means

    from napari_aprnet import APRParameters

    image = _blob(shape)
    apr = APR.from_image(image, 0.2)
    validate_structure(apr.structure)
    assert isinstance(apr.parameters, APRParameters) and apr.parameters.rel_error == 0.2
    assert 1 < apr.n_particles < image.size
    np.testing.assert_allclose(apr.values, cell_means(apr.structure, image), rtol=1e-5, atol=1e-4)
    mean, mx = apr.reconstruction_error(image)
    diff = np.abs(image.astype(np.float64) - cell_means(apr.structure, image)[apr.structure.particle_id_image()])
    assert mean == pytest.approx(diff.mean(), rel=1e-4, abs=1e-6)
    assert mx == pytest.approx(diff.max(), rel=1e-4, abs=1e-5)
    assert "E=0.2" in repr(apr)


def test_from_image_parameters_and_channels(tmp_path):
    from napari_aprnet import APRParameters

    image = _blob((30, 26))
    a = APR.from_image(image, lambda_=1.5)
    assert a.parameters == APRParameters(lambda_=1.5)
    b = APR.from_image(image, 0.3, params=APRParameters(rel_error=0.05, Ip_th=2.0))
    assert b.parameters == APRParameters(rel_error=0.3, Ip_th=2.0)
    with pytest.raises(TypeError):
        APR.from_image(image, params={"rel_error": 0.1})
    two = np.stack([image, image[::-1]], axis=0)
    c = APR.from_image(two, channel_axis=0)
    assert c.n_channels == 2 and c.values.shape == (c.n_particles, 2)
    assert c.reconstruct().shape == image.shape + (2,)
    c.save(tmp_path / "c.apr")
    assert APR.load(tmp_path / "c.apr").equals(c)
