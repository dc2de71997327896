"""Tests of APR formation (napari_aprnet.formation and its C pipeline).

References are independent dense numpy implementations of the same formulas
(FFT smoothing spline with mirror boundaries, np.pad 'reflect' box means,
per-cell numpy means) or direct checks of the defining properties
(partition, neighbour constraint, reconstruction condition).
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from napari_aprnet import _native, formation
from napari_aprnet.formation import LUMA_WEIGHTS, auto_thresholds, form_apr, gradient_and_scale
from napari_aprnet.params import APRParameters
from napari_aprnet.samples import fluorescence_blobs

# ----- helpers -------------------------------------------------------------

def blobs(shape, n=12, seed=0, noise=True):
    """Small image of Gaussian blobs on a background, optionally Poisson noisy (float32)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    img = np.full(shape, 100.0)
    for _ in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(1.5, 5.0)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img += rng.uniform(200, 1000) * np.exp(-d2 / (2 * r * r))
    if noise:
        img = rng.poisson(img).astype(np.float64)
    return img.astype(np.float32)


def coverage(s):
    """Number of particle cells covering each pixel (counted, not overwritten)."""
    cov = np.zeros(s.shape, np.int64)
    off = s.level_offsets
    for level in range(s.level_max + 1):
        lo, hi = off[level], off[level + 1]
        if lo == hi:
            continue
        grid = s.level_shape(level)
        c = s.coords[lo:hi]
        assert (c >= 0).all() and (c < np.array(grid)).all(), f"coords outside level {level} grid"
        cnt = np.zeros(grid, np.int64)
        np.add.at(cnt, tuple(c[:, a] for a in range(s.ndim)), 1)
        step = 1 << (s.level_max - level)
        for a in range(s.ndim):
            cnt = np.repeat(cnt, step, axis=a)
        cov += cnt[tuple(slice(0, n) for n in s.shape)]
    return cov


def level_image(s):
    """Level of the particle covering each pixel."""
    return s.levels[s.particle_id_image()].astype(np.int64)


def assert_valid_structure(s):
    assert s.levels.dtype == np.uint8 and s.coords.dtype == np.int32
    # contract order: by level, then row-major at own level
    keys = np.zeros(s.n_particles, np.int64)
    for level in range(s.level_max + 1):
        lo, hi = s.level_offsets[level], s.level_offsets[level + 1]
        grid = s.level_shape(level)
        k = np.ravel_multi_index(tuple(s.coords[lo:hi, a] for a in range(s.ndim)), grid)
        assert (np.diff(k) > 0).all(), "particles not in row-major order within a level"
        keys[lo:hi] = k
    assert (np.diff(s.levels.astype(np.int64)) >= 0).all()
    cov = coverage(s)
    assert (cov == 1).all(), f"pixels covered {cov.min()}..{cov.max()} times (must be exactly once)"
    # neighbour constraint: face-adjacent cells differ by at most one level
    li = level_image(s)
    for a in range(s.ndim):
        d = np.abs(np.diff(li, axis=a))
        assert d.max(initial=0) <= 1, f"face-adjacent cells differ by {d.max()} levels along axis {a}"


def cell_means(img, s):
    """Dense reference: numpy mean of the pixels of each particle cell (img is (*spatial, C))."""
    out = np.empty((s.n_particles, img.shape[-1]), np.float64)
    for i in range(s.n_particles):
        sl = tuple(slice(a, b) for a, b in s.cell_bounds(i))
        out[i] = img[sl].reshape(-1, img.shape[-1]).astype(np.float64).mean(axis=0)
    return out


# ----- dense numpy reference of stage 1 ---------------------------------------

def _spline_1d(f, lam, axis):
    n = f.shape[axis]
    if n == 1:
        return f
    f = np.moveaxis(f, axis, -1)
    ext = np.concatenate([f, f[..., -2:0:-1]], axis=-1)  # whole-sample symmetric extension
    w = 2 * np.pi * np.fft.rfftfreq(ext.shape[-1])
    h = 1.0 / ((4 + 2 * np.cos(w)) / 6 + lam * (2 - 2 * np.cos(w)) ** 2)  # smoothing spline
    out = np.fft.irfft(np.fft.rfft(ext, axis=-1) * h, n=ext.shape[-1], axis=-1)[..., :n]
    return np.moveaxis(out, -1, axis)


def _shift(a, axis, k, pad):
    sl = [slice(None)] * a.ndim
    sl[axis] = slice(pad + k, pad + k + a.shape[axis])
    p = np.pad(a, [(pad, pad) if b == axis else (0, 0) for b in range(a.ndim)], mode="reflect")
    return p[tuple(sl)]


def _pool(a, how):
    for ax in range(a.ndim):
        n = a.shape[ax]
        if n % 2:
            fill = np.take(a, [n - 1], axis=ax) if how == "max" else np.full_like(np.take(a, [n - 1], axis=ax), np.nan)
            a = np.concatenate([a, fill], axis=ax)
        sh = list(a.shape)
        sh[ax:ax + 1] = [sh[ax] // 2, 2]
        a = a.reshape(sh)
        a = a.max(axis=ax + 1) if how == "max" else np.nanmean(a, axis=ax + 1)
    return a


def reference_stage1(img, lam, spacing, psf=2):
    c = img.astype(np.float64)
    if lam > 0:
        for a in range(c.ndim):
            c = _spline_1d(c, lam, a)
    g2 = np.zeros_like(c)
    for a in range(c.ndim):
        if c.shape[a] > 1:
            g2 += ((_shift(c, a, 1, 1) - _shift(c, a, -1, 1)) / (2 * spacing[a])) ** 2
    grad = _pool(np.sqrt(g2), "max")
    smooth = _pool(c, "mean")
    if lam > 0:
        for a in range(smooth.ndim):
            if smooth.shape[a] > 1:
                smooth = (_shift(smooth, a, -1, 1) + 4 * _shift(smooth, a, 0, 1) + _shift(smooth, a, 1, 1)) / 6
    w1, w2 = {2: (1, 3), 1: (1, 2), 3: (1, 4)}[psf]
    active = [a for a in range(smooth.ndim) if smooth.shape[a] > max(w1, w2)]
    if not active:
        sigma = np.full_like(smooth, smooth.mean() - smooth.min())
    else:
        const = {1: 31.2843, 2: 28.7069, 3: 26.1256}[len(active)] if psf == 2 else None

        def box(x, w):
            for a in active:
                x = sum(_shift(x, a, k, w) for k in range(-w, w + 1)) / (2 * w + 1)
            return x
        sigma = const * box(np.abs(smooth - box(smooth, w1)), w2)
    return grad, sigma, smooth


@pytest.mark.parametrize("shape,spacing", [((40, 57), (1.0, 1.0)), ((9, 13, 22), (2.0, 1.0, 0.5)),
                                           ((2, 30), (1.0, 1.0)), ((3, 4, 5), (1.0, 1.0, 1.0)),
                                           ((1, 41), (1.0, 1.0))])
@pytest.mark.parametrize("lam", [3.0, 0.5, 0.0])
def test_stage1_matches_dense_reference(shape, spacing, lam):
    rng = np.random.default_rng(3)
    img = (rng.random(shape) * 100).astype(np.float32)
    grad, sigma, smooth = gradient_and_scale(img, APRParameters(lambda_=lam, dz=spacing[0] if len(shape) == 3 else 1.0,
                                                                dy=spacing[-2], dx=spacing[-1]))
    rg, rs, rm = reference_stage1(img, lam, spacing)
    assert grad.shape == rg.shape == sigma.shape == smooth.shape
    # the recursive filter's boundary start is truncated at tol 1e-4 (LibAPR's)
    atol = 0.02 if lam > 0 else 1e-3
    np.testing.assert_allclose(smooth, rm, atol=atol, rtol=0)
    np.testing.assert_allclose(grad, rg, atol=atol, rtol=0)
    np.testing.assert_allclose(sigma, rs, atol=atol * 30, rtol=1e-3)


def test_smoothing_preserves_constants():
    img = np.full((33, 47), 250.0, np.float32)
    grad, sigma, smooth = gradient_and_scale(img)
    np.testing.assert_allclose(smooth, 250.0, rtol=1e-5)
    assert np.abs(grad).max() < 1e-3
    assert np.abs(sigma).max() < 1e-2


# ----- structure ------------------------------------------------------------------

SHAPES = [(64, 64), (37, 53), (1, 17), (17, 1), (1, 1), (2, 2), (3, 5), (1, 2), (16, 20, 24), (1, 1, 9),
          (9, 1, 1), (5, 7, 6), (33, 17, 9), (2, 2, 2), (1, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["noise", "blobs"])
@pytest.mark.parametrize("nopt", [True, False])
def test_partition_and_neighbour_constraint(shape, kind, nopt):
    if kind == "noise":
        img = np.random.default_rng(1).random(shape).astype(np.float32)
    else:
        img = blobs(shape, n=6, seed=2)
    for E in (0.05, 0.5):
        s, v = form_apr(img, APRParameters(rel_error=E, neighborhood_optimization=nopt), rgb=False)
        assert s.shape == shape
        assert s.level_max == (max(shape) - 1).bit_length()
        assert_valid_structure(s)
        assert v.shape == (s.n_particles,) and v.dtype == np.float32


@pytest.mark.parametrize("shape", [(40, 56), (20, 18, 14)])
def test_structured_images_have_multiple_levels(shape):
    img = blobs(shape, n=4, seed=5, noise=False)
    s, _ = form_apr(img, APRParameters(rel_error=0.2, lambda_=0.0))
    assert_valid_structure(s)
    assert len(np.unique(s.levels)) >= 3
    assert s.n_particles < s.n_pixels / 2


def test_level_min_follows_libapr():
    s, _ = form_apr(blobs((40, 40)), APRParameters())
    assert s.level_min == 1
    s, _ = form_apr(np.ones((1, 1), np.float32), APRParameters())
    assert s.level_min == 0 and s.n_particles == 1


@pytest.mark.parametrize("shape", [(64, 64), (37, 53), (20, 24, 28), (1, 40)])
def test_constant_image_gives_coarsest_apr(shape):
    img = np.full(shape, 7, np.uint16)
    s, v = form_apr(img, APRParameters())
    coarsest = min(2, s.level_max)
    assert (s.levels == coarsest).all()
    assert s.n_particles == int(np.prod(s.level_shape(coarsest)))
    np.testing.assert_array_equal(v, 7.0)


def test_tiny_error_on_noise_gives_pixels_and_exact_reconstruction():
    img = (np.random.default_rng(4).random((24, 30, 20)) * 1000).astype(np.float32)
    s, v = form_apr(img, APRParameters(rel_error=1e-4))
    assert (s.levels == s.level_max).all() and s.n_particles == img.size
    np.testing.assert_array_equal(v[s.particle_id_image()], img)


# ----- values and reconstruction -------------------------------------------------------

@pytest.mark.parametrize("shape,dtype", [((37, 53), np.uint16), ((13, 22, 17), np.float32), ((1, 29), np.uint8),
                                         ((45, 31), np.float64), ((11, 9, 7), np.int32)])
def test_values_are_cell_means(shape, dtype):
    img = blobs(shape, n=5, seed=7)
    if np.dtype(dtype).kind == "u":
        img = np.clip(img / 4, 0, np.iinfo(dtype).max)
    img = img.astype(dtype)
    s, v = form_apr(img, APRParameters(rel_error=0.3))
    ref = cell_means(img[..., None], s)[:, 0]
    np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-4)
    assert len(np.unique(s.levels)) >= 2  # edge and interior cells of several sizes are checked


def test_reconstruction_error_shrinks_with_rel_error():
    img = blobs((96, 80), n=10, seed=11)
    errs, counts = [], []
    for E in (0.8, 0.3, 0.1, 0.03):
        s, v = form_apr(img, APRParameters(rel_error=E))
        errs.append(np.abs(v[s.particle_id_image()] - img).mean())
        counts.append(s.n_particles)
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(a < b for a, b in zip(counts, counts[1:])), counts


@pytest.mark.parametrize("E", [0.4, 0.1, 0.05])
def test_reconstruction_condition_on_smooth_image(E):
    yy, xx = np.mgrid[0:96, 0:80].astype(np.float64)
    img = (100 + 50 * np.exp(-((yy - 40) ** 2 + (xx - 30) ** 2) / (2 * 15 ** 2)) + 20 * np.sin(xx / 9.0))
    img = img.astype(np.float32)
    # without noise sigma is tiny on a smooth image; sigma_th makes the APR adaptive
    p = APRParameters(rel_error=E, lambda_=0.0, sigma_th=50.0)
    s, v = form_apr(img, p)
    rec = v[s.particle_id_image()]
    _, sigma, _ = gradient_and_scale(img, p)
    sigma_full = np.maximum(np.repeat(np.repeat(sigma, 2, 0), 2, 1)[:96, :80], p.sigma_th)
    assert (np.abs(img - rec) / sigma_full).max() <= E  # eq. 2.15
    assert s.n_particles < 0.8 * img.size


# ----- determinism ---------------------------------------------------------------

_DET_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, {testdir!r})
from test_formation import blobs
from napari_aprnet.formation import form_apr
from napari_aprnet.params import APRParameters
out = {{}}
for i, shape in enumerate([(130, 97), (33, 40, 29)]):
    img = blobs(shape, n=8, seed=i)
    for auto in (False, True):
        s, v = form_apr(img, APRParameters(rel_error=0.1, sigma_th=20.0, auto_parameters=auto))
        out[f"l{{i}}{{auto}}"] = s.levels; out[f"c{{i}}{{auto}}"] = s.coords; out[f"v{{i}}{{auto}}"] = v
np.savez(sys.argv[1], **out)
"""


def test_results_do_not_depend_on_thread_count(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_DET_SCRIPT.format(testdir=os.path.dirname(__file__)))
    results = []
    for threads in (1, 2, 3):
        out = tmp_path / f"out{threads}.npz"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=120)
        results.append(np.load(out))
    for other in results[1:]:
        assert set(other.files) == set(results[0].files)
        for k in results[0].files:
            np.testing.assert_array_equal(results[0][k], other[k], err_msg=k)


# ----- parameters ------------------------------------------------------------------

def test_thresholds_reduce_particles_and_auto_mode():
    img = blobs((128, 128), n=15, seed=3)
    base, _ = form_apr(img, APRParameters())
    grad, sigma, _ = gradient_and_scale(img)
    sth, gth = auto_thresholds(grad, sigma)
    assert 0 < sth < sigma.max() and 0 < gth < grad.max()
    auto, _ = form_apr(img, APRParameters(auto_parameters=True))
    explicit, _ = form_apr(img, APRParameters(sigma_th=sth, grad_th=gth))
    np.testing.assert_array_equal(auto.levels, explicit.levels)
    np.testing.assert_array_equal(auto.coords, explicit.coords)
    assert auto.n_particles < base.n_particles
    ip, _ = form_apr(img, APRParameters(Ip_th=float(img.max())))  # no gradient anywhere
    assert (ip.levels == 2).all()


@pytest.mark.parametrize("nbins", [1, 7, 4096])
def test_histogram_counts_like_numpy(nbins):
    """The C histogram of the automatic thresholds counts bin for bin as numpy.histogram."""
    rng = np.random.default_rng(nbins)
    cases = [rng.standard_normal(50_001).astype(np.float32) ** 3,  # heavy tails, many values near bin edges
             rng.integers(0, 40, 30_000).astype(np.float32),     # ties exactly on edges
             np.linspace(-1, 1, 3 * nbins + 1, dtype=np.float32)]
    for v in cases:
        lo, hi = float(v.min()), float(v.max())
        edges = np.linspace(lo, hi, nbins + 1)
        ref, ref_edges = np.histogram(v.astype(np.float64), bins=nbins, range=(lo, hi))
        np.testing.assert_array_equal(ref_edges, edges)
        np.testing.assert_array_equal(_native.formation_histogram(v, edges), ref)
    with pytest.raises(ValueError):
        _native.formation_histogram(cases[0], np.array([1.0, 1.0]))
    with pytest.raises(TypeError):
        _native.formation_histogram(cases[0].astype(np.float64), edges)


def test_spacing_changes_levels():
    img = blobs((20, 24, 28), n=5, seed=9, noise=False)
    a, _ = form_apr(img, APRParameters(rel_error=0.2))
    b, _ = form_apr(img, APRParameters(rel_error=0.2, dz=4.0))  # coarser z: smaller z gradient
    assert b.n_particles < a.n_particles


def test_matches_pyapr_particle_count():
    pyapr = pytest.importorskip("pyapr")
    img = np.clip(blobs((256, 256), n=30, seed=1), 0, 65535).astype(np.uint16)
    for sth, gth in ((0.0, 0.0), (40.0, 10.0)):
        pp = pyapr.APRParameters()
        pp.rel_error, pp.sigma_th, pp.grad_th, pp.auto_parameters = 0.1, sth, gth, False
        apr, _ = pyapr.converter.get_apr(img, params=pp, converter=pyapr.converter.FloatConverter())
        s, _ = form_apr(img, APRParameters(rel_error=0.1, sigma_th=sth, grad_th=gth))
        assert abs(s.n_particles - apr.total_number_particles()) <= 0.01 * apr.total_number_particles()


# ----- RGB and channels ---------------------------------------------------------------

def test_rgb_levels_from_luminance_and_every_channel_sampled():
    rng = np.random.default_rng(2)
    base = blobs((40, 52), n=6, seed=4, noise=False)
    rgb = np.stack([base, base[::-1] * 0.5, base[:, ::-1]], axis=-1)
    rgb = (rgb / rgb.max() * 255).astype(np.uint8) + rng.integers(0, 3, rgb.shape).astype(np.uint8)
    s, v = form_apr(rgb, APRParameters(rel_error=0.2))
    assert v.shape == (s.n_particles, 3)
    luma = sum(w * rgb[..., k].astype(np.float32) for k, w in enumerate(LUMA_WEIGHTS)).astype(np.float32)
    s_l, _ = form_apr(luma, APRParameters(rel_error=0.2))
    np.testing.assert_array_equal(s.levels, s_l.levels)
    np.testing.assert_array_equal(s.coords, s_l.coords)
    np.testing.assert_allclose(v, cell_means(rgb, s), rtol=1e-5, atol=1e-4)
    # explicit channel axis first gives the same
    s2, v2 = form_apr(np.moveaxis(rgb, -1, 0).copy(), APRParameters(rel_error=0.2), channel_axis=0)
    np.testing.assert_array_equal(s2.coords, s.coords)
    np.testing.assert_array_equal(v2, v)


def test_rgba_and_two_channel_stack():
    img = np.random.default_rng(0).random((12, 10, 4)).astype(np.float32)
    s, v = form_apr(img, APRParameters())
    assert s.shape == (12, 10) and v.shape == (s.n_particles, 4)
    s3, v3 = form_apr(img, APRParameters(), rgb=False)  # a (z, y, x) stack with x = 4
    assert s3.shape == (12, 10, 4) and v3.ndim == 1
    two = np.random.default_rng(1).random((6, 8, 10, 2)).astype(np.float32)
    s4, v4 = form_apr(two, APRParameters(), channel_axis=-1)
    assert s4.shape == (6, 8, 10) and v4.shape == (s4.n_particles, 2)
    mean_img = two.mean(axis=-1, dtype=np.float32)
    np.testing.assert_array_equal(form_apr(mean_img)[0].coords, s4.coords)
    np.testing.assert_allclose(v4, cell_means(two, s4), rtol=1e-5, atol=1e-5)


# ----- input handling ------------------------------------------------------------------

@pytest.mark.parametrize("bad,exc,match", [
    (np.zeros((8, 8), bool), TypeError, "boolean"),
    (np.zeros((8, 8), complex), TypeError, "complex"),
    (np.array([[object(), 1], [2, 3]], dtype=object), TypeError, "numeric"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, "numeric"),
    (np.zeros((0, 5), np.float32), ValueError, "empty"),
    (np.zeros((4, 5, 6, 7), np.float32), ValueError, "channel_axis"),
    (np.zeros(10, np.float32), ValueError, r"\(1, N\)"),
    (np.zeros((2, 3, 4, 5, 6), np.float32), ValueError, "2D"),
    (np.array([[1.0, np.nan], [0, 1]], np.float32), ValueError, "NaN"),
    (np.array([[1.0, np.inf], [0, 1]]), ValueError, "NaN or Inf"),
    (np.full((4, 4), 1e300), ValueError, "beyond"),
])
def test_bad_input_refused(bad, exc, match):
    with pytest.raises(exc, match=match):
        form_apr(bad, APRParameters())


def test_bad_channel_axis_and_params():
    with pytest.raises(ValueError, match="out of range"):
        form_apr(np.zeros((5, 6, 3), np.float32), channel_axis=3)
    with pytest.raises(ValueError, match="spatial"):
        form_apr(np.zeros((5, 3), np.float32), channel_axis=1)
    with pytest.raises(TypeError, match="APRParameters"):
        form_apr(np.zeros((5, 6), np.float32), params={"rel_error": 0.1})
    with pytest.raises(ValueError, match="rgb=True"):
        form_apr(np.zeros((5, 6), np.float32), rgb=True)


def test_too_large_for_memory_refused_up_front(monkeypatch):
    calls = []
    monkeypatch.setattr(formation, "_available_memory", lambda: 1000)
    monkeypatch.setattr(_native, "formation_grad_sigma", lambda *a, **k: calls.append(a))
    with pytest.raises(MemoryError, match=r"needs about .* MiB"):
        form_apr(np.zeros((64, 64), np.uint16))
    assert not calls  # refused before any C work
    assert formation.estimate_memory((64, 64)) < formation.estimate_memory((64, 64, 64))


def test_available_memory_reader():
    avail = formation._available_memory()
    assert avail is None or avail > 0


def test_input_never_modified_and_views_work():
    img = blobs((40, 60), n=5, seed=8)
    ref_struct, ref_vals = form_apr(img.copy(), APRParameters())
    big = np.zeros((80, 60), np.float32)
    big[::2] = img
    view = big[::2]  # non-contiguous
    before = big.copy()
    s, v = form_apr(view, APRParameters())
    np.testing.assert_array_equal(big, before)
    np.testing.assert_array_equal(s.coords, ref_struct.coords)
    np.testing.assert_array_equal(v, ref_vals)
    ro = img.copy()
    ro.setflags(write=False)
    s2, v2 = form_apr(ro, APRParameters())
    np.testing.assert_array_equal(v2, ref_vals)
    fortran = np.asfortranarray(img)
    s3, v3 = form_apr(fortran, APRParameters())
    np.testing.assert_array_equal(v3, ref_vals)
    u16 = np.clip(img, 0, 65535).astype(np.uint16)
    u16_before = u16.copy()
    form_apr(u16, APRParameters())
    np.testing.assert_array_equal(u16, u16_before)


def test_integer_dtypes_agree_with_float32():
    img = np.clip(blobs((30, 40), n=5, seed=6), 0, 30000).astype(np.int64)
    s_ref, v_ref = form_apr(img.astype(np.float32), APRParameters())
    for dt in (np.uint16, np.int16, np.int32, np.int64, np.uint32, np.float64, np.float16):
        if dt == np.float16:
            continue  # values above 2048 are not exact in float16
        s, v = form_apr(img.astype(dt), APRParameters())
        np.testing.assert_array_equal(s.coords, s_ref.coords, err_msg=str(dt))
        np.testing.assert_allclose(v, v_ref, rtol=1e-6, err_msg=str(dt))
    s, v = form_apr((img // 200).astype(np.float16), APRParameters())
    assert s.n_particles > 0


def test_cancellation():
    img = blobs((64, 64), n=5)
    with pytest.raises(_native.CancelledError):
        form_apr(img, APRParameters(), cancel=lambda: True)
    ev = threading.Event()
    ev.set()
    with pytest.raises(_native.CancelledError):
        form_apr(img, APRParameters(), cancel=ev)
    s, _ = form_apr(img, APRParameters(), cancel=lambda: False)
    assert s.n_particles > 0
    with pytest.raises(TypeError, match="cancel"):
        form_apr(img, APRParameters(), cancel=3)


def test_c_level_cancel_flag():
    img = blobs((64, 64), n=5)
    flag = np.ones(1, np.int32)
    with pytest.raises(_native.CancelledError):
        _native.formation_grad_sigma(img, (1.0, 1.0), 3.0, 2, flag)


def test_c_levels_poll_the_cancel_flag():
    grad = np.ones((64, 64), np.float32)
    with pytest.raises(_native.CancelledError):
        _native.formation_levels(grad, grad, grad, ip_th=0.0, sigma_th=0.0, sigma_th_max=0.0, grad_th=0.0,
                                 rel_error=0.1, level_max=7, h_min=1.0, cancel_flag=np.ones(1, np.int32))
    out = _native.formation_levels(grad, grad, grad, ip_th=0.0, sigma_th=0.0, sigma_th_max=0.0, grad_th=0.0,
                                   rel_error=0.1, level_max=7, h_min=1.0, cancel_flag=np.zeros(1, np.int32))
    assert out.shape == (64, 64)


@pytest.mark.parametrize("lambda_", [3.0, 0.0])  # 0: no spline, the plain gradient pass
def test_c_grad_sigma_polls_the_cancel_flag(lambda_):
    img = fluorescence_blobs((8, 64, 64), 5, seed=2).astype(np.float32)
    with pytest.raises(_native.CancelledError):
        _native.formation_grad_sigma(img, (1.0, 1.0, 1.0), lambda_, 2, np.ones(1, np.int32))


@pytest.fixture(scope="module")
def timed_volume():
    """A volume and the shortest of three full conversions of it (seconds): a single timing can
    include a stall of a loaded machine, after which a run cancelled at half that time may already
    have finished."""
    img = fluorescence_blobs((48, 192, 192), 30, seed=3).astype(np.float32)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        form_apr(img, APRParameters())
        times.append(time.perf_counter() - t0)
    return img, min(times)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35, 0.5])
def test_cancel_during_a_conversion_stops_it(timed_volume, fraction):
    """A cancel callable that turns true part-way through a conversion (in whichever
    phase is running then) stops it with CancelledError, well before it would end."""
    img, full = timed_volume
    at = fraction * full
    t0 = time.perf_counter()
    with pytest.raises(_native.CancelledError):
        form_apr(img, APRParameters(), cancel=lambda: time.perf_counter() - t0 > at)
    latency = time.perf_counter() - t0 - at
    assert latency < 0.5 * full + 0.2, (full, at, latency)


def test_native_wrappers_check_arguments():
    img = blobs((16, 16), n=2)
    with pytest.raises(TypeError):
        _native.formation_grad_sigma(img.astype(np.float64), (1.0, 1.0), 3.0, 2)
    with pytest.raises(ValueError, match="spacing"):
        _native.formation_grad_sigma(img, (1.0, 0.0), 3.0, 2)
    with pytest.raises(ValueError, match="level_ds"):
        _native.pulling_scheme(np.zeros((3, 3), np.uint8), (16, 16), 4, 1, True)
    lv = np.array([4, 4], np.uint8)
    co = np.array([[0, 0], [16, 0]], np.int32)  # second is outside the image
    with pytest.raises(IndexError):
        _native.formation_sample(img, 4, lv, co)


# ----- invariance to units and offsets ---------------------------------------------

def _same_apr(a, b):
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_array_equal(a.coords, b.coords)


@pytest.mark.parametrize("shape,spacing", [((128, 128), (1.0, 1.0)), ((16, 64, 64), (2.0, 1.0, 1.0))])
def test_levels_do_not_depend_on_the_unit_of_the_spacing(shape, spacing):
    img = fluorescence_blobs(shape, 10, seed=1).astype(np.float32)
    names = ("dz", "dy", "dx")[-len(shape):]
    ref, _ = form_apr(img, APRParameters(**dict(zip(names, spacing))))
    for scale in (1000.0, 1e-3):
        other, _ = form_apr(img, APRParameters(**{k: v * scale for k, v in zip(names, spacing)}))
        _same_apr(ref, other)


@pytest.mark.parametrize("shape", [(96, 80), (12, 40, 36)])
@pytest.mark.parametrize("auto", [False, True])
def test_levels_do_not_depend_on_a_constant_offset(shape, auto):
    img = np.round(fluorescence_blobs(shape, 6, seed=2, noise=False)).astype(np.float32)
    p = APRParameters(auto_parameters=auto)
    ref, _ = form_apr(img, p)
    _same_apr(ref, form_apr(img + np.float32(30000), p)[0])
    _same_apr(ref, form_apr(img.astype(np.uint16) + np.uint16(3000), p)[0])


# ----- huge values and huge views ------------------------------------------------------

@pytest.mark.parametrize("shape,value", [((64, 64), 1e38), ((16, 16, 16), 4.25e37), ((32, 32), -1e20)])
def test_huge_finite_values_are_refused_not_turned_into_inf(shape, value):
    with pytest.raises(ValueError, match=r"beyond \+-1e\+18 .*rescale the image"):
        form_apr(np.full(shape, value, np.float32))


def test_values_up_to_the_limit_give_finite_particles():
    img = blobs((40, 40), n=3, seed=1) * np.float32(1e14)
    img[0, 0] = -formation.MAX_ABS_VALUE
    for image in (img, img.reshape(1, 40, 40).repeat(3, 0)):
        _, v = form_apr(image)
        assert np.isfinite(v).all()


def test_memory_is_refused_before_scanning_a_huge_view(monkeypatch):
    import tracemalloc
    monkeypatch.setattr(formation, "_available_memory", lambda: 1 << 20)
    view = np.broadcast_to(np.float32(1.0), (4000, 4000))  # 64 MB of pixels, no memory of its own
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match="needs about"):
            form_apr(view)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_nan_scan_in_blocks_finds_the_last_pixel():
    img = np.zeros((3000, 2000), np.float32)  # 24 MB: more than one scan block
    img[-1, -1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        form_apr(img)
