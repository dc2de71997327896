"""Blockwise conversion of volumes larger than memory (napari_aprnet.blockwise)."""
from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from napari_aprnet import APR, blockwise
from napari_aprnet._blockwise_chain import chain_bytes
from napari_aprnet.blockwise import (
    TiffPages,
    _block_planes,
    _geometry,
    _Runner,
    _sample,
    form_apr_blockwise,
    needs_blocks,
    parse_memory,
)
from napari_aprnet.cli import main
from napari_aprnet.formation import _CancelWatch, form_apr
from napari_aprnet.params import APRParameters

PARAMS = APRParameters(sigma_th=20.0, grad_th=2.0)


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(5)
    z, y, x = np.mgrid[0:64, 0:24, 0:20]
    img = 100 + rng.normal(0, 3, z.shape)
    for _ in range(12):
        c = rng.uniform(0, 1, 3) * [64, 24, 20]
        img += rng.uniform(200, 900) * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
                                              / rng.uniform(4, 30))
    return img.clip(0, 65535).astype(np.uint16)


def _budget(volume, core, params=PARAMS, workers=1, sends=None):
    """A budget giving level-map blocks of ``core`` planes (checked) to each of ``workers`` processes
    (``sends``: the chains' level maps are sent back, default for ``workers > 1``; true for executors)."""
    sends = workers > 1 if sends is None else sends
    plane = volume.shape[1] * volume.shape[2]
    per_plane, fixed = chain_bytes(*_geometry(params), volume.dtype.itemsize, volume.shape[0] if sends else 0)
    budget = 2 * -(-plane // 4) * -(-volume.shape[0] // 2) + workers * (fixed + core * per_plane) * plane
    assert _block_planes(volume.shape, volume.dtype, params, budget, workers, sends)[0] == core
    return budget


def test_blocks_equal_the_whole_volume(tmp_path, volume):
    whole_s, whole_v = form_apr(volume, PARAMS)
    mm = np.lib.format.open_memmap(tmp_path / "v.npy", "w+", np.uint16, volume.shape)
    mm[:] = volume
    mm.flush()
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    s, v = form_apr_blockwise(mm, PARAMS, max_memory=_budget(volume, 10))
    assert s.n_particles == whole_s.n_particles
    np.testing.assert_array_equal(s.levels, whole_s.levels)
    np.testing.assert_array_equal(s.coords, whole_s.coords)
    np.testing.assert_allclose(v, whole_v, rtol=1e-6)


def test_tiff_pages_and_api(tmp_path, volume):
    tifffile.imwrite(tmp_path / "v.tif", volume)
    pages = TiffPages(tmp_path / "v.tif")
    assert pages.shape == volume.shape and pages.dtype == np.uint16
    np.testing.assert_array_equal(pages[3:5], volume[3:5])
    with pytest.raises(TypeError, match="slices of pages"):
        pages[3]
    apr = APR.from_image(pages, params=PARAMS, max_memory=_budget(volume, 12))
    copy = pickle.loads(pickle.dumps(pages))  # by path: what a worker process gets
    np.testing.assert_array_equal(copy[60:64], volume[60:64])
    pages.close()
    copy.close()
    whole = APR.from_image(volume, params=PARAMS)
    np.testing.assert_array_equal(apr.coords, whole.coords)
    assert APR.from_image(volume, params=PARAMS, max_memory="1GiB").equals(whole)  # fits: whole-volume path


def test_parse_memory_and_refusals(volume):
    assert parse_memory("600MiB") == 600 << 20 and parse_memory("1.5GB") == 1_500_000_000
    assert parse_memory(4096) == 4096 and parse_memory("2g") == 2 << 30
    for bad in ("lots", "-1MiB", 0):
        with pytest.raises(ValueError):
            parse_memory(bad)
    assert needs_blocks((256, 1024, 1024), 600 << 20) and not needs_blocks((8, 8, 8), 600 << 20)
    with pytest.raises(ValueError, match=r"10,240 bytes is too small .* need about [1-9][0-9,]* (MiB|bytes)$"):
        form_apr_blockwise(volume, PARAMS, max_memory="10KiB")
    with pytest.raises(ValueError, match="auto_parameters"):
        form_apr_blockwise(volume, APRParameters(auto_parameters=True))
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        form_apr_blockwise(volume[0], PARAMS)
    bad = volume.astype(np.float32)
    bad[40, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        form_apr_blockwise(bad, PARAMS, max_memory=_budget(bad, 10))


def test_cli_convert_max_memory(tmp_path, volume, capsys):
    np.save(tmp_path / "v.npy", volume)
    rc = main(["convert", str(tmp_path / "v.npy"), "-o", str(tmp_path / "v.apr"), "--sigma-th", "20",
               "--grad-th", "2", "--max-memory", str(_budget(volume, 10))])
    assert rc == 0 and "particles:" in capsys.readouterr().out
    np.testing.assert_array_equal(APR.load(tmp_path / "v.apr").coords, APR.from_image(volume, params=PARAMS).coords)


def _memmap(tmp_path, volume):
    np.save(tmp_path / "v.npy", volume)
    return np.load(tmp_path / "v.npy", mmap_mode="r")


def test_workers_and_executors_give_the_same_result(tmp_path, volume):
    """Blocks in 2 spawned processes (memmap reopened by path), on a thread pool, from a dask array: same APR."""
    import dask.array as da

    mm = _memmap(tmp_path, volume)
    budget = _budget(volume, 10, workers=2)
    one_s, one_v = form_apr_blockwise(mm, PARAMS, max_memory=_budget(volume, 10))
    two_s, two_v = form_apr_blockwise(mm, PARAMS, max_memory=budget, workers=2)
    np.testing.assert_array_equal(two_s.coords, one_s.coords)
    np.testing.assert_array_equal(two_s.levels, one_s.levels)
    np.testing.assert_array_equal(two_v, one_v)
    with ThreadPoolExecutor(2) as pool:  # any Executor, e.g. distributed.Client(...).get_executor()
        for image in (volume, da.from_array(volume, chunks=(16, 24, 20))):  # in memory: sent block by block
            s, v = form_apr_blockwise(image, PARAMS, max_memory=_budget(volume, 10, sends=True), workers=pool)
            np.testing.assert_array_equal(s.coords, one_s.coords)
            np.testing.assert_array_equal(v, one_v)
    with pytest.raises(ValueError, match="workers"):
        form_apr_blockwise(mm, PARAMS, max_memory=budget, workers=0)
    with pytest.raises(TypeError, match="Executor"):
        form_apr_blockwise(mm, PARAMS, max_memory=budget, workers="2")


def test_cells_taller_than_a_sampling_block(volume):
    """A budget for fewer planes than the tallest cell: those cells are summed across blocks (float64)."""
    whole_s, whole_v = form_apr(volume, PARAMS)
    tallest = 1 << (whole_s.level_max - int(whole_s.levels.min()))
    assert tallest >= 8
    runner = _Runner(volume, 1)
    with _CancelWatch(None) as watch:
        v = _sample(runner, whole_s, tallest // 2 - 1, watch)  # blocks of tallest / 4 planes
    np.testing.assert_allclose(v, whole_v, rtol=1e-6)


@pytest.mark.parametrize("params", [PARAMS, APRParameters(sigma_th=20.0, grad_th=2.0, lambda_=0.0, psf=1.0),
                                    APRParameters(sigma_th=20.0, grad_th=2.0, lambda_=0.5, psf=5.0)])
def test_level_map_of_many_blocks_and_chains_equals_the_whole_volume(volume, params, monkeypatch):
    """Blocks of 8 planes (the spline's causal z-state and half-resolution planes carried from block to block),
    and chains of one warm-up (independent tasks): the level map of the whole-volume conversion, cell for cell."""
    from napari_aprnet.formation import _level_image

    vol = np.concatenate([volume, volume[::-1]])  # 128 planes
    with _CancelWatch(None) as watch:
        whole = _level_image(vol, params, 7, watch)
    for halos in (16, 1):
        monkeypatch.setattr(blockwise, "_CHAIN_HALOS", halos)
        runner = _Runner(vol, 1)
        with _CancelWatch(None) as watch:
            lo, hi = float(vol.min()), float(vol.max())
            levels = blockwise._level_map(runner, params, 7, lo, hi - lo, 8, watch)
        assert (levels != whole).mean() < 1e-4, (halos, (levels != whole).sum())
        if params.lambda_ == 0:  # no recursive filter: nothing approximated
            np.testing.assert_array_equal(levels, whole)
    assert len(blockwise.plan_blocks(0, 128, blockwise.ChainJob(None, vol.shape, 8, *_geometry(params)))) >= 12


def test_chains_in_two_workers_equal_one(tmp_path, volume, monkeypatch):
    """Several chains (monkeypatched short) in 2 spawned processes or on a thread pool: the result of 1 process."""
    monkeypatch.setattr(blockwise, "_CHAIN_HALOS", 1)
    mm = _memmap(tmp_path, volume)
    one_s, one_v = form_apr_blockwise(mm, PARAMS, max_memory=_budget(volume, 8))
    whole_s, _ = form_apr(volume, PARAMS)
    assert abs(one_s.n_particles - whole_s.n_particles) <= 0.005 * whole_s.n_particles
    with ThreadPoolExecutor(2) as pool:
        s, v = form_apr_blockwise(mm, PARAMS, max_memory=_budget(volume, 8, sends=True), workers=pool)
    np.testing.assert_array_equal(s.coords, one_s.coords)
    np.testing.assert_array_equal(v, one_v)
